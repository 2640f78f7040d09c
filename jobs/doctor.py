"""Check that the installed stack is the one oncolake is pinned to, and that each part really starts.

    oncolake doctor [--spark] [--horovod N] [--config NAME|FILE] [--set key=value ...]
    spark-submit jobs/doctor.py --spark --horovod 2 --config cluster

Prints one line per check and exits non-zero if any fails. ``--spark`` also starts a Delta session
(resolving and caching Delta's jars the first time), which the set-up script uses to warm the cache.
``--horovod N`` runs N Horovod workers on the session's executors: one allreduce and one synchronised
optimizer step, the quickest proof that a cluster can train. The checks are :mod:`model.stack`'s.
"""

from __future__ import annotations

import argparse

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.stack import diagnose


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake doctor", __doc__)
    parser.add_argument("--spark", action="store_true", help="also start a Delta Spark session")
    parser.add_argument(
        "--horovod", type=int, metavar="N", help="also run N Horovod workers on the executors"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.spark or args.horovod):
        return 1 if diagnose() else 0
    settings = settings_from(args)
    return 1 if diagnose(settings, lambda: build_spark(settings, "doctor"), args.horovod) else 0


if __name__ == "__main__":
    raise SystemExit(main())
