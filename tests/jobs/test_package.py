"""Shipping to a cluster: the --py-files zip holds exactly the project's packages and works on its own."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def test_code_zip_holds_only_the_listed_packages_and_loads_config_from_inside(
    oncolake, tmp_path: Path
) -> None:
    result = oncolake("package", "--no-env", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("oncolake-*.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert {"conf/base.yaml", "conf/tiny.yaml", "conf/schema.py", "jobs/cli.py", "pipelines/io.py"} <= set(
        names
    )
    assert {name.split("/")[0] for name in names} == {"conf", "core", "jobs", "model", "pipelines", "synth"}

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import conf; assert conf.__file__.startswith(sys.argv[1]), conf.__file__;"
        "print(conf.load_settings('tiny').synth.images)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe, str(archive)], capture_output=True, text=True, cwd=tmp_path
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "60"
