"""Build what a cluster needs to run oncolake's jobs: the code for --py-files, the environment for --archives.

    oncolake package [--out dist] [--no-env]

Writes ``dist/oncolake-<version>.zip`` (the project's packages with the packaged configuration, for
``spark-submit --py-files``) and ``dist/oncolake-env.tar.gz`` (a relocatable virtual environment with
the pinned stack and the Horovod build, for ``spark-submit --archives dist/oncolake-env.tar.gz#env``).
The environment is packed from a fresh, non-editable install next to the zip (venv-pack refuses
editable installs), using pip's cache and the cached Horovod wheel, so nothing is downloaded twice.
docs/cluster.md shows the spark-submit lines that use them.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from jobs.options import job_parser

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


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake package", __doc__)
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    parser.add_argument("--no-env", action="store_true", help="only the code zip, not the packed environment")
    args = parser.parse_args(argv)
    code = build_code_zip(args.out)
    print(f"code for --py-files:   {code} ({code.stat().st_size / 1e3:.0f} kB)")
    if not args.no_env:
        print(
            f"packing the environment (oncolake {importlib.metadata.version('oncolake')}); this takes minutes"
        )
        env = build_env_archive(args.out)
        print(f"environment for --archives: {env} ({env.stat().st_size / 1e9:.1f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
