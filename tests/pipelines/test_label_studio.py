"""A real Label Studio round trip: tasks out of the lakehouse, two readers' annotations back in.

``scripts/bootstrap.sh --test`` installs Label Studio into ``.venv-labelstudio`` (its own virtual
environment: numpy 2, pandas 3) with a migrated empty database beside it. The test starts the server on
loopback with a fresh data dir (a copy of that database: a new one spends ~45 s migrating), imports the
tasks ``export_tasks`` writes, posts one annotation per reader per task through the API, exports the
project as JSON and ingests the export with ``ingest_reports``.

Users: the first (an administrator) is created by the server at start from environment variables, its
legacy API token chosen here (``LABEL_STUDIO_USER_TOKEN``). New organisations get JWT personal access
tokens only; ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN`` turns the legacy ``Token`` scheme on for the one the
server creates. The second reader signs up with the organisation's invite link, as a person would, and
reads their own token with the session the sign-up opened.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings, load_settings
from pipelines.io import current_version, read_table
from pipelines.pseudonym import DEMO_SECRET
from pipelines.reports import LABEL_CONFIG, export_tasks, ingest_reports

REPO = Path(__file__).resolve().parents[2]
LS_VENV = REPO / ".venv-labelstudio"
LABEL_STUDIO = LS_VENV / "bin" / "label-studio"
MIGRATED = LS_VENV / "migrated.sqlite3"
"""The empty database ``scripts/bootstrap.sh`` migrated once (without it the server migrates at start)."""
START_TIMEOUT = 180.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LABEL_STUDIO.exists(),
        reason=f"Label Studio is not installed in {LS_VENV.name} (scripts/bootstrap.sh --test installs it)",
    ),
]

ADMIN = "admin@oncolake.test"
READER = "reader@oncolake.test"
TASKS = 3
BOX = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0}
"""Every rectangle drawn, in percent of the image (top-left corner, size)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    admin_token: str
    log: Path

    def client(self, token: str | None = None) -> requests.Session:
        """A session to the server that ignores proxy settings (it is on loopback)."""
        session = requests.Session()
        session.trust_env = False
        if token:
            session.headers["Authorization"] = f"Token {token}"
        return session


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


@contextmanager
def label_studio(root: Path) -> Iterator[Server]:
    """A Label Studio server on a free loopback port with a fresh data dir under ``root``; stopped (terminate,
    then kill) whatever happens. Secrets travel in the environment, never in the arguments."""
    data, home = root / "data", root / "home"
    data.mkdir(parents=True)
    home.mkdir()
    if MIGRATED.exists():
        shutil.copyfile(MIGRATED, data / "label_studio.sqlite3")
    port, token = free_port(), secrets.token_hex(20)  # a legacy token is 40 characters
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": ADMIN,
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Nothing leaves the machine: no version check on PyPI, no usage analytics, no Sentry.
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    }
    args = ["start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    log = root / "label-studio.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(LABEL_STUDIO), *args], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", token, log)
    try:
        started, client = time.monotonic(), server.client()
        while True:
            if process.poll() is not None:
                raise AssertionError(f"Label Studio exited ({process.returncode}):\n{_log_tail(log)}")
            if time.monotonic() - started > START_TIMEOUT:
                raise AssertionError(f"Label Studio not up after {START_TIMEOUT:g} s:\n{_log_tail(log)}")
            try:
                if client.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        print(f"Label Studio up in {time.monotonic() - started:.1f} s", flush=True)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _checked(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.method, response.url, response.text[:500])
    return response.json() if response.content else None


def sign_up(server: Server, email: str) -> str:
    """A reader signs up with the organisation's invite link; returns the reader's legacy API token."""
    invite = _checked(server.client(server.admin_token).get(f"{server.url}/api/invite"))
    browser = server.client()
    signup = f"{server.url}/user/signup/"
    browser.get(signup, params={"token": invite["token"]}).raise_for_status()  # sets the CSRF cookie
    form = {
        "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        "email": email,
        "password": secrets.token_urlsafe(16),
    }
    done = browser.post(signup, params={"token": invite["token"]}, data=form, allow_redirects=False)
    assert done.status_code == 302, done.text[:500]  # a form error re-renders the page with 200
    return _checked(browser.get(f"{server.url}/api/current-user/token"))["token"]


def png_size(data_url: str) -> tuple[int, int]:
    """``(width, height)`` of a PNG data URL, from its IHDR chunk."""
    png = base64.b64decode(data_url.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def result(label: str, outline: str, size: tuple[int, int]) -> list[dict[str, Any]]:
    """An annotation's ``result`` as Label Studio's image editor writes it: the label, a BI-RADS choice,
    the rectangle :data:`BOX` and an ellipse or a polygon, regions in percent of the image."""

    def item(control: str, kind: str, value: dict[str, Any]) -> dict[str, Any]:
        out = {"id": control, "from_name": control, "to_name": "image", "type": kind, "value": value}
        if kind != "choices":  # regions also carry the size of the image they were drawn on
            out.update(original_width=size[0], original_height=size[1], image_rotation=0)
            out["value"] = {**value, kind: ["lesion"]}
        return out

    items = [
        item("label", "choices", {"choices": [label]}),
        item("birads", "choices", {"choices": ["4"]}),
        item("lesion_box", "rectanglelabels", {**BOX, "rotation": 0.0}),
    ]
    if outline == "ellipse":
        ellipse = {"x": 50.0, "y": 50.0, "radiusX": 10.0, "radiusY": 5.0, "rotation": 30.0}
        items.append(item("lesion_ellipse", "ellipselabels", ellipse))
    else:
        points = [[60.0, 60.0], [80.0, 62.0], [70.0, 85.0]]
        items.append(item("lesion_outline", "polygonlabels", {"points": points, "closed": True}))
    return items


@pytest.fixture(scope="module")
def ls_lakehouse(tmp_path_factory: pytest.TempPathFactory, tiles: Settings) -> Settings:
    """A lakehouse holding copies of the session's images and annotations tables (readable, writable)."""
    root = tmp_path_factory.mktemp("ls-lakehouse")
    for table in ("images", "annotations"):
        shutil.copytree(Path(tiles.lakehouse.table(table)), root / table)
    return load_settings("tiny", [f"lakehouse.root={root}", "spark.master=local[2]"])


@pytest.fixture(scope="module")
def round_trip(
    spark: SparkSession, ls_lakehouse: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Tasks exported, imported into Label Studio, annotated by two readers, exported back as JSON."""
    root = tmp_path_factory.mktemp("label-studio")
    tasks_file = root / "tasks" / "tasks.json"
    assert export_tasks(spark, ls_lakehouse, tasks_file, limit=TASKS) == TASKS
    config = (tasks_file.parent / "label_config.xml").read_text()
    assert config == LABEL_CONFIG
    exports = root / "exports"
    exports.mkdir()
    with label_studio(root / "server") as server:
        admin = server.client(server.admin_token)
        reader = server.client(sign_up(server, READER))
        me = _checked(reader.get(f"{server.url}/api/current-user/whoami"))
        assert me["email"] == READER
        project = _checked(
            admin.post(f"{server.url}/api/projects/", json={"title": "oncolake", "label_config": config}), 201
        )
        url = f"{server.url}/api/projects/{project['id']}"
        imported = _checked(admin.post(f"{url}/import", json=json.loads(tasks_file.read_text())), 201)
        assert imported["task_count"] == TASKS
        listed = _checked(admin.get(f"{server.url}/api/tasks/", params={"project": project["id"]}))["tasks"]
        sizes = {t["data"]["image_id"]: png_size(t["data"]["image"]) for t in listed}
        posted = 0
        for who, label, outline in ((admin, "malignant", "ellipse"), (reader, "benign", "polygon")):
            for task in listed:
                body = {"result": result(label, outline, sizes[task["data"]["image_id"]])}
                _checked(who.post(f"{server.url}/api/tasks/{task['id']}/annotations/", json=body), 201)
                posted += 1
        export = admin.get(f"{url}/export", params={"exportType": "JSON"})
        assert export.status_code == 200, export.text[:500]
        (exports / "project.json").write_bytes(export.content)
    return {"sizes": sizes, "posted": posted, "exports": exports, "export": json.loads(export.content)}


def test_the_export_holds_both_readers_annotations(round_trip: dict[str, Any]) -> None:
    export = round_trip["export"]
    assert len(export) == TASKS
    annotations = [a for task in export for a in task["annotations"]]
    assert len(annotations) == round_trip["posted"] == 2 * TASKS
    assert len({a["completed_by"] for a in annotations}) == 2
    assert {task["data"]["image_id"] for task in export} == set(round_trip["sizes"])


def test_ingest_places_the_readers_marks_and_a_rerun_adds_nothing(
    spark: SparkSession, ls_lakehouse: Settings, round_trip: dict[str, Any]
) -> None:
    exports, sizes = round_trip["exports"], round_trip["sizes"]
    summary = ingest_reports(spark, ls_lakehouse, exports, DEMO_SECRET)
    assert summary.balanced(), summary
    posted = round_trip["posted"]
    assert (summary.seen, summary.ingested, summary.quarantined) == (posted, posted, 0), summary
    assert summary.labels == {"normal": 0, "benign": TASKS, "malignant": TASKS}

    path = ls_lakehouse.lakehouse.table("annotations")
    expert = read_table(spark, path).where("source = 'expert'").collect()
    assert len(expert) == 2 * posted  # one row per region: a rectangle and an outline each
    assert {r["image_id"] for r in expert} == set(sizes)
    reporters = {r["reporter"] for r in expert}
    assert len(reporters) == 2 and not any("label-studio" in r for r in reporters)
    assert {r["report_id"].split(":")[0] for r in expert} == {"label-studio"}
    assert {r["descriptors"]["mark"] for r in expert} == {"box", "ellipse", "polygon"}
    assert {r["descriptors"]["assessment"] for r in expert} == {"4"}

    # The rectangle lands at its percentages of the shown image, in normalised pixels (pixel centres).
    images = read_table(spark, ls_lakehouse.lakehouse.table("images")).where(
        F.col("image_id").isin(list(sizes))
    )
    stored = {r["image_id"]: (r["width"], r["height"]) for r in images.collect()}
    assert stored == sizes  # the task showed the normalised image itself
    boxes = [r for r in expert if r["descriptors"]["mark"] == "box"]
    assert len(boxes) == posted
    for row in boxes:
        width, height = sizes[row["image_id"]]
        assert row["geometry_kind"] == "outline"
        points = json.loads(row["geometry"])["points"]
        x0, y0 = BOX["x"] / 100 * width - 0.5, BOX["y"] / 100 * height - 0.5
        x1 = (BOX["x"] + BOX["width"]) / 100 * width - 0.5
        y1 = (BOX["y"] + BOX["height"]) / 100 * height - 0.5
        expected = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        for (x, y), (ex, ey) in zip(points, expected, strict=True):
            assert math.isclose(x, ex, abs_tol=1e-6) and math.isclose(y, ey, abs_tol=1e-6), (points, expected)

    version = current_version(spark, path)
    again = ingest_reports(spark, ls_lakehouse, exports, DEMO_SECRET)
    assert (again.ingested, again.already_present, again.quarantined) == (0, posted, 0)
    assert current_version(spark, path) == version
