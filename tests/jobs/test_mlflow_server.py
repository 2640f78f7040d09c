"""``oncolake mlflow-server`` as a user starts it: refused without credentials, serving until Ctrl-C.

What the server allows whom is tested on the library (tests/model/test_server.py); here the job itself
runs, in-process when it must refuse and as its own process when it serves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from jobs.mlflow_server import main
from model.server import CREDENTIAL_KEYS, ENV_PREFIX, wait_until_ready

REPO = Path(__file__).resolve().parents[2]
EXPERT_PASSWORD = "expert-pw-0123456789"
CREDENTIALS = dict(
    zip(
        (ENV_PREFIX + key for key in CREDENTIAL_KEYS),
        ("boss", "admin-pw-0123456789", "reader", EXPERT_PASSWORD),
        strict=True,
    )
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refuses_to_start_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(f"{ENV_PREFIX}ADMIN_USER", "boss")
    assert main(["--set", f"lakehouse.root={tmp_path}", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "no credentials" in err
    for key in ("ADMIN_PASSWORD", "EXPERT_USER", "EXPERT_PASSWORD"):
        assert f"{ENV_PREFIX}{key}" in err
    assert not (tmp_path / "mlflow-server").exists()  # refused before writing anything


@pytest.mark.slow
def test_job_provisions_the_expert_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **CREDENTIALS, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "job.log"
    args = ["--set", f"lakehouse.root={tmp_path / 'lakehouse'}", "--port", str(port), "--workers", "1"]
    with out.open("wb") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.mlflow_server", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, job, timeout=90)
        deadline = time.monotonic() + 60
        while "serving" not in out.read_text() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        text = out.read_text()
        assert "created expert 'reader'" in text and f"serving {url}" in text, text
        search = requests.get(
            f"{url}/api/2.0/mlflow/registered-models/search", auth=("reader", EXPERT_PASSWORD)
        )
        assert search.status_code == 200, search.text
        assert (tmp_path / "lakehouse" / "mlflow-server" / "auth.db").is_file()
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=30) == 0, out.read_text()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/health", timeout=2)
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=30)
