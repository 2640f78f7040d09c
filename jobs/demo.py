"""The end-to-end demo on the embedded default: synthetic corpus, lakehouse, models, scores.

    oncolake demo [--full] [--config NAME|FILE] [--set key=value ...]

Runs every stage that exists, in order, each as its own job would run it (same options, same session):
synth -> ingest -> tile -> train -> evaluate -> score. The default size finishes in about 15 minutes on
two cores; ``--full`` uses the 12,000-image corpus. Re-running skips work that is already done.
"""

from __future__ import annotations

import importlib
import importlib.util
import time

from jobs.options import job_parser, settings_from

# (job module, arguments beyond the shared --config/--set). Later stages join as they are built.
STAGES: list[tuple[str, list[str]]] = [
    ("jobs.synth", []),
]


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake demo", __doc__)
    parser.add_argument("--full", action="store_true", help="use the full 12,000-image synthetic corpus")
    args = parser.parse_args(argv)
    settings_from(args)  # fail on a bad configuration before the first stage starts
    shared = [*(["--config", args.config] if args.config else []), *[f"--set={o}" for o in args.overrides]]
    if args.full:
        shared.append("--set=synth.out=./data/synthetic-full")
    started = time.monotonic()
    for module_name, extra in STAGES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        stage_args = [*shared, *extra, *(["--full"] if args.full and module_name == "jobs.synth" else [])]
        print(f"demo: == {module_name.removeprefix('jobs.')} ==", flush=True)
        status = module.main(stage_args)
        if status:
            print(f"demo: {module_name} failed with status {status}")
            return int(status)
    print(f"demo: done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
