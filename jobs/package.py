"""Build what a cluster needs to run oncolake's jobs: the code for --py-files, the environment for --archives.

    oncolake package [--out dist] [--no-env]

Writes ``dist/oncolake-<version>.zip`` (the project's packages with the packaged configuration, for
``spark-submit --py-files``) and ``dist/oncolake-env.tar.gz`` (a relocatable virtual environment with
the pinned stack and the Horovod build, for ``spark-submit --archives dist/oncolake-env.tar.gz#env``).
The environment is packed from a fresh, non-editable install next to the zip (venv-pack refuses
editable installs), using pip's cache and the cached Horovod wheel, so nothing is downloaded twice.
docs/cluster.md shows the spark-submit lines that use them. The builders are :mod:`jobs.archives`'s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

from jobs.archives import build_code_zip, build_env_archive
from jobs.options import job_parser


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake package", __doc__)
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    parser.add_argument("--no-env", action="store_true", help="only the code zip, not the packed environment")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
