"""What a cluster needs to run oncolake's jobs: the code for ``--py-files``, the env for ``--archives``.

:func:`build_code_zip` zips exactly the packages (and package data) that ``pyproject.toml`` lists;
:func:`build_env_archive` packs a fresh, non-editable virtual environment with the pinned stack, the
cached Horovod build and oncolake (venv-pack refuses editable installs). ``oncolake package``
(:mod:`jobs.package`) calls both.

They live beside :mod:`jobs.session` and :mod:`jobs.options`, the other pieces of how jobs are launched
with spark-submit: no library layer below ``jobs`` needs them, and ``model``/``core`` code is shipped
inside logged models, where build tooling has no place. (Not ``jobs/packaging.py``: ``spark-submit
jobs/<job>.py`` puts ``jobs/`` first on ``sys.path``, where that name would shadow the ``packaging``
distribution that Horovod and MLflow import.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def build_code_zip(out: Path) -> Path:
    """Zip exactly the packages (and package data) that pyproject lists: nothing else is swept in."""
    tool = _pyproject()["tool"]["setuptools"]
    data_patterns: dict[str, list[str]] = tool.get("package-data", {})
    version = _pyproject()["project"]["version"]
    target = out / f"oncolake-{version}.zip"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for package in tool["packages"]:
            folder = REPO / package.replace(".", "/")
            # Explicit folder entries: importlib.resources cannot list a folder inside a zip without one.
            archive.mkdir(folder.relative_to(REPO).as_posix())
            patterns = ["*.py", *data_patterns.get(package, [])]
            for pattern in patterns:
                for path in sorted(folder.glob(pattern)):
                    archive.write(path, path.relative_to(REPO).as_posix())
    return target


def build_env_archive(out: Path) -> Path:
    """A packed virtual environment with the pinned stack, Horovod and oncolake installed (not editable)."""
    import venv_pack

    staging = out / "env-staging"
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True)
    horovod = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-horovod.sh"), sys.executable],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    pip = [
        str(staging / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "-c",
        str(REPO / "constraints.txt"),
    ]
    subprocess.run([*pip, horovod, str(REPO)], check=True)
    target = out / "oncolake-env.tar.gz"
    target.unlink(missing_ok=True)
    venv_pack.pack(prefix=str(staging), output=str(target))
    shutil.rmtree(staging)
    return target
