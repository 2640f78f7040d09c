"""``oncolake demo --full`` as a user runs it, with its figures: wall time, peak memory and disk per stage.

    .venv/bin/python benchmarks/demo_full.py [--config full] [--every 2] [--out FILE] [-- DEMO ARGS...]

Starts the demo in its own process (``python -m jobs.cli demo --full``, the ``full`` profile: two executor
JVMs on ``local-cluster``) and samples, every ``--every`` seconds, the resident memory of each kind of
process it starts: the driver JVM (``SparkSubmit``), the executor JVMs (``CoarseGrainedExecutorBackend``,
summed, and the largest one), Spark's Python workers (summed), the training processes (``torchrun`` and
its workers) and the demo's own Python driver. The demo's ``demo: == stage ==`` lines say which stage
each sample belongs to. At the end it prints, per stage, wall seconds and the peak of each kind, then
the size on disk of every lakehouse table and the corpus, and one JSON line with all of it. The demo's
own output goes to ``--log`` (default: ``<lakehouse>/_summaries/demo-full.log``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

KINDS = {
    "driver_jvm": lambda c: "java" in c.split(" ", 1)[0] and "SparkSubmit" in c,
    "executor_jvm": lambda c: "java" in c.split(" ", 1)[0] and "CoarseGrainedExecutorBackend" in c,
    "python_workers": lambda c: "pyspark.daemon" in c or "pyspark.worker" in c,
    "training": lambda c: "torchrun" in c or "torch.distributed" in c or "horovod" in c,
}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Sampler:
    """Peak RSS per process kind and per stage, from a background thread."""

    def __init__(self, root: psutil.Process, every: float) -> None:
        self.root, self.every = root, every
        self.stage = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        totals = dict.fromkeys([*KINDS, "largest_executor_jvm", "demo_python"], 0.0)
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                command, rss = " ".join(process.cmdline()), process.memory_info().rss / 2**20
            except psutil.Error:
                continue
            if process.pid == self.root.pid:
                totals["demo_python"] = rss
                continue
            for kind, test in KINDS.items():
                if test(command):
                    totals[kind] += rss
                    if kind == "executor_jvm":
                        totals["largest_executor_jvm"] = max(totals["largest_executor_jvm"], rss)
                    break
        peaks = self.peaks.setdefault(self.stage, {})
        for kind, value in totals.items():
            peaks[kind] = max(peaks.get(kind, 0.0), value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.every)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="full")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument("--log", type=Path, help="where the demo's own output goes")
    parser.add_argument("demo_args", nargs="*", help="more arguments for oncolake demo (after --)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conf import load_settings

    settings = load_settings(args.config, [])
    lake, corpus = Path(settings.lakehouse.root), Path(settings.synth.out)
    log = args.log or lake / "_summaries" / "demo-full.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "jobs.cli", "demo", "--full", "--config", args.config, *args.demo_args]
    started = time.monotonic()
    stage_started, walls = started, {}
    with log.open("w") as out:
        demo = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        sampler = Sampler(psutil.Process(demo.pid), args.every)
        sampler.start()
        assert demo.stdout is not None
        for line in demo.stdout:
            out.write(line)
            out.flush()
            if match := re.match(r"demo: == (\S+) ==", line):
                now = time.monotonic()
                walls[sampler.stage] = now - stage_started
                peaks = sampler.peaks.get(sampler.stage, {})
                if sampler.stage != "start":  # each stage's figures as soon as it ends
                    listed = ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items() if v)
                    print(f"[{now - started:7.0f} s] {sampler.stage} ended: peak {listed}", flush=True)
                sampler.stage, stage_started = match.group(1), now
                print(f"[{now - started:7.0f} s] {sampler.stage}", flush=True)
            elif line.startswith("demo: ") or "failed" in line:
                print(f"[{time.monotonic() - started:7.0f} s] {line.rstrip()}", flush=True)
        status = demo.wait()
        walls[sampler.stage] = time.monotonic() - stage_started
        sampler.stop()
    total = time.monotonic() - started
    walls.pop("start", None)
    print(f"\n{'stage':12}{'wall s':>9}" + "".join(f"{k:>22}" for k in [*KINDS, "largest_executor_jvm"]))
    for stage, wall in walls.items():
        peaks = sampler.peaks.get(stage, {})
        cells = "".join(f"{peaks.get(k, 0):>19.0f} MB" for k in [*KINDS, "largest_executor_jvm"])
        print(f"{stage:12}{wall:>9.0f}{cells}")
    tables = (
        {p.name: _size(p) for p in sorted(lake.iterdir()) if (p / "_delta_log").is_dir()}
        if lake.exists()
        else {}
    )
    print("\ntables on disk: " + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in tables.items()))
    print(f"corpus on disk: {_size(corpus) / 2**30:.2f} GB; demo exit status {status}; total {total:.0f} s")
    result = {
        "benchmark": "demo_full",
        "status": status,
        "total_s": total,
        "stages": {s: {"wall_s": w, "peak_mb": sampler.peaks.get(s, {})} for s, w in walls.items()},
        "tables_mb": {k: v / 2**20 for k, v in tables.items()},
        "corpus_gb": _size(corpus) / 2**30,
    }
    print(json.dumps(result))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
