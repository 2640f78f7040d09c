"""How ingest, tile, training and scoring time grow with executors: the jobs at 1 and 2 executor JVMs.

    .venv/bin/python benchmarks/scaling.py [--images 500] [--executors 1 2] [--memory-mb 5120]
        [--task mammo_normal_vs_abnormal] [--epochs 1]

One synthetic corpus (``--images``, downscale 16) is written once; then, for each executor count N, a
fresh lakehouse is filled by the real jobs run as a user runs them (``python -m jobs.cli ...``, each its
own driver, on ``local-cluster[N,1,MB]``: N executor JVMs of one core each, sized as the ``full`` profile's:
4 GB heap, a 2 GB driver): ingest, tile, train (one task,
``--epochs`` epochs, one process per executor core) and score (that task's new challenger over the test
split). It prints the wall seconds of every job per N, the speed-up from 1 to N executors, and one JSON
line. docs/cluster.md projects these to a 10-node cluster and to 1,000,000 images; on a machine with
fewer free cores than N executors the speed-up is understated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_job(args: list[str], log: Path) -> float:
    """Run ``oncolake <args>`` in its own process; returns wall seconds (raises on a non-zero exit)."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ oncolake {' '.join(args)}\n")
        out.flush()
        status = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        ).returncode
    if status:
        raise SystemExit(f"oncolake {args[0]} failed with status {status}: see {log}")
    return time.perf_counter() - started


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--executors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-mb", type=int, default=5120, help="worker capacity, >= 4 GB heap")
    parser.add_argument("--task", default="mammo_normal_vs_abnormal")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import synth
    from synth.corpus import collection_roots

    work = Path(tempfile.mkdtemp(prefix="oncolake-scaling-"))
    log = work / "jobs.log"
    corpus = work / "corpus"
    synth.generate(corpus, images=args.images, downscale=16, seed=args.images)
    sources = [f"--source={name}={root}" for name, root in collection_roots(corpus).items()]
    figures: dict[str, dict[str, float]] = {}
    try:
        for executors in args.executors:
            lake = work / f"lake-{executors}"
            sets = [
                "--config",
                "full",
                "--set",
                f"lakehouse.root={lake}",
                "--set",
                f"spark.master=local-cluster[{executors},1,{args.memory_mb}]",
                "--set",
                f"train.epochs={args.epochs}",
                "--set",
                "train.warmup_epochs=0",
            ]
            times = {
                "ingest": run_job(["ingest", *sets, *sources], log),
                "tile": run_job(["tile", *sets], log),
                "train": run_job(["train", *sets, "--task", args.task], log),
                "score": run_job(
                    ["score", *sets, "--task", args.task, "--alias", "challenger", "--split", "test"], log
                ),
            }
            figures[str(executors)] = times
            cells = ", ".join(f"{job} {seconds:.0f} s" for job, seconds in times.items())
            print(f"{executors} executor(s) x 1 core, {args.images} images: {cells}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    first, *rest = args.executors
    speedups = {
        str(n): {job: figures[str(first)][job] / figures[str(n)][job] for job in figures[str(first)]}
        for n in rest
    }
    for n, jobs in speedups.items():
        print(f"speed-up {first} -> {n} executors: " + ", ".join(f"{j} {s:.2f}x" for j, s in jobs.items()))
    print(
        json.dumps({"benchmark": "scaling", "images": args.images, "seconds": figures, "speedup": speedups})
    )


if __name__ == "__main__":
    main()
