"""Killed processes: executors and drivers SIGKILLed mid-job, the tables compared with an undisturbed run.

    python -m benchmarks.kills [--out DIR] [--images 96] [--json FILE]

A synthetic corpus is ingested, tiled and scored (``oncolake ingest``, ``oncolake tile``, and ``oncolake
score`` with a model ``oncolake train`` registered once, each its own process, on
``local-cluster[2,1,1536]``: two executor JVMs as on any real cluster) four ways:

- **undisturbed**, the reference;
- **an executor killed**: while the job's tasks run (its executors' Python workers are decoding,
  tiling or scoring; for ``oncolake stream --once``, while a batch of a drop folder's images is landed and
  scored), one executor JVM gets SIGKILL; Spark re-runs its tasks (the master starts a new executor);
  the job must finish with exit 0;
- **the driver killed at a commit**, for every table the job writes and every point
  (``pipelines.io.COMMIT_FAULT_ENV``): ``before`` the write starts, ``during`` it (0.2 s in: data files
  or the log entry being written), ``after`` its commit returned. Right after the kill every table must
  be readable at a committed version — the one before the job or the one it committed, never a partial
  one (its rows are checked against the reference: no row that the reference lacks, no key twice) — and
  a re-run (no fault) must complete;
- **two at once**: two ingests, then two score runs, started together on one lakehouse: each ends with
  exit 0 or 75 (it lost a commit race and says so in one line), and once both are done (a re-run of a
  loser included) the tables equal the reference: no row twice, none lost.

Then every table's content (each row's key and a digest of every column but timestamps) must equal the
reference's. Printed: one line per case (fault, injected, exit codes, tables equal, rows) and the totals
that docs/reliability.md records.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
MASTER = "local-cluster[2,1,1536]"
KEYS = {
    "images": "image_id",
    "annotations": "annotation_id",
    "quarantine": "quarantine_id",
    "tiles": "tile_id",
    "predictions": "prediction_id",
    "landing_images": "image_id",
    "landing_tiles": "tile_id",
}
INGEST_TABLES = ("quarantine", "annotations", "images")
TILE_TABLES = ("tiles",)
SCORE_TABLES = ("predictions",)
STREAM_TABLES = ("quarantine", "landing_images", "landing_tiles", "predictions")
TASK = "histo_benign_vs_malignant"
SECRET = "kills-benchmark-secret"


@dataclass
class Case:
    job: str
    fault: str
    injected: bool = False
    exit_code: int | None = None
    rerun_exit: int | None = None
    consistent_after_kill: bool = True
    equal: bool = False
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0


TRACKING: list[str] = []  # --set mlflow.tracking_uri=... shared by every lake (the model is trained once)


def job_command(argv: list[str], lake: Path) -> list[str]:
    args = [sys.executable, "-m", "jobs.cli", *argv, "--config", "tiny", *TRACKING]
    return [*args, "--set", f"lakehouse.root={lake}", "--set", f"spark.master={MASTER}"]


def job_env(env_extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "ONCOLAKE_PSEUDONYM_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **(env_extra or {})}


def run_job(argv: list[str], lake: Path, log: Path, env_extra: dict[str, str] | None = None) -> int:
    with log.open("ab") as out:
        out.write(f"\n=== {' '.join(argv)} {env_extra or ''}\n".encode())
        out.flush()
        return subprocess.run(
            job_command(argv, lake),
            cwd=REPO,
            env=job_env(env_extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        ).returncode


def run_together(argv: list[str], lake: Path, log: Path) -> list[int]:
    """Two runs of one job started at once on one lakehouse; their exit codes."""
    with log.open("ab") as out:
        out.write(f"\n=== twice at once: {' '.join(argv)}\n".encode())
        out.flush()
        runs = [
            subprocess.Popen(
                job_command(argv, lake), cwd=REPO, env=job_env(), stdout=out, stderr=subprocess.STDOUT
            )
            for _ in range(2)
        ]
        return [run.wait(timeout=1800) for run in runs]


class ExecutorKiller(threading.Thread):
    """SIGKILL one executor JVM of this process's descendants once its Python workers are busy."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: int | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            for process in psutil.Process().children(recursive=True):
                try:
                    if "CoarseGrainedExecutorBackend" not in " ".join(process.cmdline()):
                        continue
                    workers = [
                        c for c in process.children(recursive=True) if "pyspark" in " ".join(c.cmdline())
                    ]
                except psutil.Error:
                    continue
                if len(workers) >= 2:  # the daemon and at least one forked worker: tasks are running
                    process.send_signal(signal.SIGKILL)
                    self.killed = process.pid
                    return


def with_executor_killed(name: str, argv: list[str], lake: Path, log: Path) -> Case:
    """Run a job while an :class:`ExecutorKiller` watches: the case with its exit code and whether a kill
    was injected (its tables are compared by the caller)."""
    case = Case(name, "executor SIGKILL")
    killer = ExecutorKiller()
    killer.start()
    started = time.monotonic()
    case.exit_code = run_job(argv, lake, log)
    killer.stop()
    case.seconds = round(time.monotonic() - started, 1)
    case.injected = killer.killed is not None
    return case


def table_digest(spark: Any, path: Path, key: str) -> dict[str, str]:
    """``key -> digest`` of each row: every column but timestamps, binary columns by their SHA-256."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    frame = spark.read.format("delta").load(str(path))
    columns = []
    for f in frame.schema.fields:
        if isinstance(f.dataType, T.TimestampType):
            continue
        column = F.sha2(F.col(f.name), 256) if isinstance(f.dataType, T.BinaryType) else F.col(f.name)
        columns.append(column.alias(f.name))
    rows = frame.select(F.col(key).alias("_k"), F.sha2(F.to_json(F.struct(*columns)), 256).alias("_d"))
    out: dict[str, str] = {}
    for row in rows.collect():
        if row["_k"] in out:
            out[row["_k"]] = "DUPLICATE"
        else:
            out[row["_k"]] = row["_d"]
    return out


def lake_digest(spark: Any, lake: Path, tables: tuple[str, ...]) -> dict[str, dict[str, str]]:
    # A driver killed inside a table's first commit leaves a log folder without a commit: no table yet.
    return {
        t: table_digest(spark, lake / t, KEYS[t]) for t in tables if any((lake / t).glob("_delta_log/*.json"))
    }


def compare(reference: dict[str, dict[str, str]], got: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for table, rows in reference.items():
        other = got.get(table, {})
        if rows != other:
            missing, extra = len(set(rows) - set(other)), len(set(other) - set(rows))
            changed = sum(1 for k in set(rows) & set(other) if rows[k] != other[k])
            problems.append(f"{table}: {missing} missing, {extra} extra, {changed} differ")
    return problems


def partial(reference: dict[str, dict[str, str]], got: dict[str, dict[str, str]]) -> list[str]:
    """Right after a kill: every table holds only rows the reference holds, each once, as the reference."""
    problems = []
    for table, rows in got.items():
        if any(d == "DUPLICATE" for d in rows.values()):
            problems.append(f"{table}: a key twice")
        wrong = [k for k, d in rows.items() if reference.get(table, {}).get(k) != d]
        if wrong:
            problems.append(f"{table}: {len(wrong)} rows the reference does not hold")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/oncolake-kills"))
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--points", default="before,during,after", help="driver kill points to try")
    parser.add_argument("--jobs", default="ingest,tile,score,stream", help="the jobs whose cases run")
    args = parser.parse_args(argv)

    import synth
    from conf import load_settings
    from jobs.session import build_spark

    shutil.rmtree(args.out, ignore_errors=True)
    corpus, logs = args.out / "corpus", args.out / "logs"
    logs.mkdir(parents=True)
    manifest = synth.generate(corpus, images=args.images, seed=11)
    sources = [
        f"--source={name}={corpus / entry['root']}"
        for name, entry in manifest.items()
        if isinstance(entry, dict)
    ]
    ingest, tile = ["ingest", *sources], ["tile"]
    score = ["score", "--task", TASK, "--alias", "challenger", "--split", "test", "--split", "val"]
    TRACKING[:] = ["--set", f"mlflow.tracking_uri=sqlite:///{args.out / 'mlflow.db'}"]
    TRACKING.extend(["--set", "train.model_prefix=kills-"])

    reference = args.out / "lake-reference"
    started = time.monotonic()
    assert run_job(ingest, reference, logs / "reference.log") == 0
    assert run_job(tile, reference, logs / "reference.log") == 0
    train = ["train", "--task", TASK, "--set", "train.epochs=2", "--set", "train.num_proc=2"]
    assert run_job(train, reference, logs / "reference.log") == 0  # the model every score run applies
    assert run_job(score, reference, logs / "reference.log") == 0
    reference_seconds = time.monotonic() - started
    # The stream scores with champions: the trained version is made one (the benchmark's set-up, not a
    # promotion), and a drop folder of new images is streamed once into a copy of the reference.
    from mlflow import MlflowClient

    uri = TRACKING[1].split("=", 1)[1]
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        f"kills-{TASK}", "champion", "1"
    )
    import synth.landing

    drop = args.out / "drop"
    synth.landing.generate(drop, 24, seed=5)
    stream = ["stream", "--once", "--images", str(drop), "--set", f"train.tasks=[{TASK}]"]

    def copy_of(name: str, without: tuple[str, ...]) -> Path:
        """The reference lakehouse without the tables a job is about to write (and no locks)."""
        lake = args.out / name
        shutil.copytree(reference, lake, ignore=shutil.ignore_patterns(*without, "_locks"))
        return lake

    stream_reference = copy_of("lake-stream-reference", ())
    assert run_job(stream, stream_reference, logs / "reference.log") == 0
    all_tables = (*INGEST_TABLES, *TILE_TABLES, *SCORE_TABLES)

    settings = load_settings("tiny", [f"lakehouse.root={reference}", "spark.master=local[2]"])
    spark = build_spark(settings, "kills")
    expected = lake_digest(spark, reference, all_tables)
    expected_stream = lake_digest(spark, stream_reference, STREAM_TABLES)
    cases: list[Case] = []

    chosen = set(args.jobs.split(","))
    tables_of = {"ingest": INGEST_TABLES, "tile": TILE_TABLES, "score": SCORE_TABLES}
    # An executor JVM killed while the tasks run: ingest, tile, then score (each on what the one before
    # wrote, or on the reference's tables when the one before is not chosen).
    batch = [(n, j) for n, j in (("ingest", ingest), ("tile", tile), ("score", score)) if n in chosen]
    lake = args.out / "lake-executor"
    if batch and batch[0][0] != "ingest":
        copy_of(lake.name, tuple(t for n, _ in batch for t in tables_of[n]))
    for name, job in batch:
        cases.append(with_executor_killed(name, job, lake, logs / "executor.log"))
    got = lake_digest(spark, lake, all_tables)
    for case in cases:
        tables = tables_of[case.job]
        case.differences = compare({t: expected[t] for t in tables}, got)
        case.equal = not case.differences and case.exit_code == 0

    # An executor JVM killed while the stream lands and scores a batch.
    if "stream" in chosen:
        lake = copy_of("lake-stream-executor", ())
        case = with_executor_killed("stream", stream, lake, logs / "executor.log")
        case.differences = compare(expected_stream, lake_digest(spark, lake, STREAM_TABLES))
        case.equal = not case.differences and case.exit_code == 0
        cases.append(case)

    def judged(case: Case, problems: list[str], lake: Path, tables: tuple[str, ...]) -> Case:
        """The case with its end state compared to the reference: the job's tables and those before."""
        check = all_tables[: all_tables.index(tables[-1]) + 1]
        case.differences = problems + compare(
            {t: expected[t] for t in check}, lake_digest(spark, lake, check)
        )
        case.equal = not case.differences and case.rerun_exit == 0
        return case

    # The driver killed at every write of every table, before, during and after its commit.
    points = [p for p in args.points.split(",") if p]
    jobs = (("ingest", ingest, INGEST_TABLES), ("tile", tile, TILE_TABLES), ("score", score, SCORE_TABLES))
    for name, job, tables in jobs:
        if name not in chosen:
            continue
        for table in tables:
            for when in points:
                lake = args.out / f"lake-{name}-{table}-{when}"
                if name != "ingest":  # what it reads, undisturbed
                    copy_of(lake.name, tables)
                case = Case(name, f"driver SIGKILL {when} the {table} commit")
                log = logs / f"{name}-{table}-{when}.log"
                started = time.monotonic()
                case.exit_code = run_job(job, lake, log, {"ONCOLAKE_COMMIT_FAULT": f"{when}:{table}"})
                case.injected = "fault injected" in log.read_text(errors="replace")
                after_kill = lake_digest(spark, lake, all_tables)
                problems = partial(expected, after_kill)
                case.consistent_after_kill = not problems
                case.rerun_exit = run_job(job, lake, log)
                case.seconds = round(time.monotonic() - started, 1)
                cases.append(judged(case, problems, lake, tables))
                print(
                    f"kills: {name}: {case.fault}: injected {case.injected}, exit {case.exit_code}, "
                    f"re-run {case.rerun_exit}, consistent {case.consistent_after_kill}, equal {case.equal}",
                    flush=True,
                )

    # Two runs at once on one lakehouse: ingests on a fresh one, then score runs on a scored-nothing one.
    for name, job, tables in (("ingest", ingest, INGEST_TABLES), ("score", score, SCORE_TABLES)):
        if name not in chosen:
            continue
        lake = args.out / f"lake-{name}-twice"
        if name != "ingest":
            copy_of(lake.name, tables)
        case = Case(name, "two runs at once", injected=True)
        log = logs / f"{name}-twice.log"
        started = time.monotonic()
        codes = run_together(job, lake, log)
        case.exit_code = max(codes)
        problems = partial(expected, lake_digest(spark, lake, all_tables))
        case.consistent_after_kill = not problems and all(code in (0, 75) for code in codes) and 0 in codes
        case.rerun_exit = run_job(job, lake, log) if 75 in codes else 0  # the loser, run again
        case.seconds = round(time.monotonic() - started, 1)
        cases.append(judged(case, problems, lake, tables))
        print(f"kills: {name}: two at once: exits {codes}, equal {case.equal}", flush=True)

    rows = {t: len(v) for t, v in expected.items()}
    rows.update({f"{t} (stream)": len(v) for t, v in expected_stream.items()})
    print(f"kills: reference ({reference_seconds:.0f} s): {rows}")
    print(f"{'job':7} {'fault':45} {'injected':>8} {'exit':>5} {'re-run':>6} {'consistent':>10} {'equal':>6}")
    for c in cases:
        print(
            f"{c.job:7} {c.fault:45} {c.injected!s:>8} {c.exit_code!s:>5} {c.rerun_exit!s:>6} "
            f"{c.consistent_after_kill!s:>10} {c.equal!s:>6}"
        )
        for line in c.differences:
            print(f"    {line}")
    if args.json:
        args.json.write_text(
            json.dumps({"reference_rows": rows, "cases": [asdict(c) for c in cases]}, indent=2)
        )
    return 0 if all(c.injected and c.equal and c.consistent_after_kill for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
