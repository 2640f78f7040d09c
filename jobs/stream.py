"""Stream the landing zone: devices' images and experts' reports from drop folders, exactly once.

    oncolake stream [--once] [--images DIR] [--reports DIR] [--summary-json FILE] [--config NAME|FILE]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/stream.py --config cluster \\
        --set landing.images=/mnt/landing/images --set landing.reports=/mnt/landing/reports

Runs :class:`model.streaming.LandingStream`: one Structured Streaming query per drop folder
(``landing.images``, ``landing.reports``, or ``--images`` / ``--reports``); each new image is landed,
tiled and scored by every task's champion, each new reports file read into ``annotations``. Without
``--once`` it runs until SIGTERM or Ctrl-C, which let the batch in flight commit before the queries
stop; ``--once`` drains what the folders hold and exits (``trigger(availableNow=True)``: for cron and
Airflow). Killed at any point, a restart on the same checkpoints (``landing.checkpoints``) finishes the
interrupted batch without writing anything twice. docs/landing.md is the contract for devices.
"""

from __future__ import annotations

import argparse
import json
import signal
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.streaming import LandingStream, StreamFailed
from pipelines.pseudonym import SecretMissing, resolve_secret


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake stream", __doc__)
    parser.add_argument("--once", action="store_true", help="drain the folders, then exit")
    parser.add_argument("--images", type=Path, metavar="DIR", help="the images drop folder")
    parser.add_argument("--reports", type=Path, metavar="DIR", help="the reports drop folder")
    parser.add_argument("--summary-json", type=Path, help="write what each query did as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    extra = [f"landing.{name}={getattr(args, name)}" for name in ("images", "reports") if getattr(args, name)]
    settings = settings_from(args, extra)
    if not (settings.landing.images or settings.landing.reports):
        parser.exit(2, "oncolake stream: no drop folder: set landing.images / landing.reports or pass one\n")
    try:
        secret, _ = resolve_secret(settings.privacy)
    except SecretMissing as exc:
        parser.exit(2, f"oncolake stream: {exc}\n")
    stream = LandingStream(build_spark(settings, "stream"), settings, secret, settings.train.tasks)

    def stop(signum: int, _frame: FrameType | None) -> None:
        print(f"stream: {signal.Signals(signum).name}: stopping after the batch in flight", flush=True)
        stream.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        totals = stream.run(once=args.once)
    except StreamFailed as exc:
        print(f"oncolake stream: {exc}", flush=True)
        return 1
    if args.summary_json:
        summary = {name: asdict(t) for name, t in totals.items()}
        args.summary_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
