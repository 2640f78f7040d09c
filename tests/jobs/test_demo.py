"""The end-to-end demo on the ``tiny`` profile, as a user runs it, and the notebooks run against its output.

One demo run (its own process and JVMs: synth -> ingest -> reports -> consensus -> tile -> train with 2
workers -> evaluate -> score -> stream --once) in a temporary folder, then checks of what a user is
promised at its end: a registered model per task with its report and the promotion gate's decision,
champions only where the gate let them through (else the score job says why it scored nothing for that
task), their predictions for the test split and, through the stream, the landing folder, and that what
it printed is readable: no Python warning from a third-party package and under 300 lines in all (the
log is kept beside the lakehouse as ``demo.log``).
The demo runs as a privacy-minded site would run it: its own pseudonym secret (a sentinel value),
``privacy.hash_source_paths`` on, and Spark's event logs written, while every process's arguments are
sampled; afterwards nothing anywhere (logs, event logs, tables and their metadata, MLflow's store and
artifacts, process arguments) holds the secret, and no table, quarantine row, commit or MLflow record holds
a source path or a file name that identifies a case.
The notebooks under ``notebooks/`` are then executed top to bottom with nbclient against that lakehouse,
so they cannot rot; the executed copies are kept in tests/artifacts/notebooks/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conf import load_settings

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "notebooks"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Python's warning lines (``file:line: FutureWarning: message``); the JVM launcher's ``WARNING:`` may stay.
PYTHON_WARNING = re.compile(r"Warning:|FutureWarning|UserWarning|DeprecationWarning")
MAX_LINES = 300
SENTINEL_SECRET = f"sentinel-pseudonym-secret-{secrets.token_hex(8)}"
PROCESS_ARGS: set[str] = set()  # every command line seen while the demo ran


def _sample_process_args(stop: threading.Event) -> None:
    while not stop.wait(0.3):
        listed = subprocess.run(["ps", "-ww", "-eo", "args", "--no-headers"], capture_output=True)
        PROCESS_ARGS.update(listed.stdout.decode(errors="replace").splitlines())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny demo; returns its configuration file (what ``ONCOLAKE_CONFIG`` names).

    Run as ``oncolake demo > demo.log 2>&1`` would: both streams into one file, as bytes, so that the
    log holds what a user sees, in order, with progress bars' carriage returns kept.
    """
    root = tmp_path_factory.mktemp("demo")
    config = root / "demo.yaml"
    events = root / "eventlogs"
    events.mkdir()
    config.write_text(
        f"extends: tiny\nlakehouse:\n  root: {root / 'lakehouse'}\nsynth:\n  out: {root / 'synthetic'}\n"
        "privacy:\n  hash_source_paths: true\n"
        f"spark:\n  conf:\n    spark.eventLog.enabled: 'true'\n    spark.eventLog.dir: file://{events}\n"
        # A site's object-store key (unused on local disk): a secret of the configuration, never shown.
        f"    spark.hadoop.fs.s3a.secret.key: {SENTINEL_SECRET}\n"
    )
    log = root / "demo.log"
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_process_args, args=(stop,), daemon=True)
    sampler.start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ONCOLAKE_PSEUDONYM_SECRET": SENTINEL_SECRET}
    try:
        with log.open("wb") as out:
            result = subprocess.run(
                [sys.executable, "-m", "jobs.cli", "demo", "--config", str(config)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
    finally:
        stop.set()
        sampler.join()
    printed = log.read_bytes().decode(errors="replace")  # read_text would turn "\r" into "\n"
    assert result.returncode == 0, f"demo failed; see {log}\n{printed[-6000:]}"
    assert "demo: done" in printed
    return config


def test_demo_prints_no_python_warning_and_under_300_lines(demo: Path) -> None:
    log = demo.parent / "demo.log"
    printed = log.read_bytes().decode(errors="replace")
    warnings = [line for line in re.split(r"[\r\n]", printed) if PYTHON_WARNING.search(line)]
    assert not warnings, f"{len(warnings)} warning lines, the first ones:\n" + "\n".join(warnings[:20])
    # Lines as ``oncolake demo | wc -l`` counts them: a progress bar redrawn in place (carriage returns)
    # is one line.
    lines = printed.count("\n")
    assert lines < MAX_LINES, f"the demo printed {lines} lines (see {log})"


def test_demo_ends_with_champions_reports_and_predictions(demo: Path, spark) -> None:
    import mlflow
    from mlflow import MlflowClient

    from pipelines.io import read_table

    settings = load_settings(str(demo))
    lake = settings.lakehouse
    summaries = Path(lake.root) / "_summaries"
    score = json.loads((summaries / "score.json").read_text())
    stream = json.loads((summaries / "stream.json").read_text())
    landing = json.loads((Path(settings.synth.out) / "landing.json").read_text())
    assert stream["landing_images"]["quarantined"] == len(landing["planted"])
    assert stream["landing_images"]["new"] == landing["images"]
    assert stream["landing_reports"]["new"] == 0  # the reports stage read them all before
    printed = (demo.parent / "demo.log").read_bytes().decode(errors="replace")

    mlflow.set_tracking_uri(settings.tracking_uri())
    client = MlflowClient(registry_uri=settings.tracking_uri())
    champions = {}
    for task in settings.train.tasks:
        name = f"{settings.train.model_prefix}{task}"
        versions = client.search_model_versions(f"name = '{name}'")
        assert versions, f"{name} was not registered"
        version = max(versions, key=lambda v: int(v.version))
        folder = Path(lake.root) / settings.evaluate.reports / name / f"v{version.version}"
        assert (folder / "report.html").exists() and (folder / "figures.csv").exists()
        assert version.tags.get("promotion.decision"), f"{name} v{version.version} has no promotion decision"
        model = client.get_registered_model(name)
        if "champion" in model.aliases:
            champions[name] = model.aliases["champion"]
            assert client.get_model_version(name, champions[name]).tags["promotion.decision"] == "promoted"
        else:
            # The gate refused it (the tiny corpus's test splits hold a few patients): said, never silent.
            assert version.tags["promotion.failed"], f"{name} has no champion and no failed condition"
            said = f"task {task} has no champion: the promotion gate refused {name} v{version.version}"
            assert said in printed and any(said in line for line in score["skipped"])
    if not champions:
        assert score["scored"] == 0 and not score["labels"]
        return
    assert score["scored"] > 0
    predictions = read_table(spark, lake.table("predictions"))
    images = read_table(spark, lake.table("images")).select("image_id", "split")
    scored_splits = {
        r["split"] for r in predictions.join(images, "image_id").select("split").distinct().collect()
    }
    assert scored_splits == {"test"}
    assert {r["model"] for r in predictions.select("model").distinct().collect()} <= set(champions)
    landed = read_table(spark, lake.table("landing_images")).select("image_id")
    scored_landed = predictions.join(landed, "image_id", "left_semi").select("image_id").distinct().count()
    routed = sum(landing["modalities"][t] for t in ("mammography", "histology"))
    assert 0 < scored_landed <= routed


def test_demo_leaks_no_secret_and_hides_source_paths(demo: Path, spark) -> None:
    from pipelines.io import read_table

    settings = load_settings(str(demo))
    root, lake, synthetic = demo.parent, Path(settings.lakehouse.root), Path(settings.synth.out)
    printed = (root / "demo.log").read_bytes().decode(errors="replace")
    assert "public demo pseudonym secret" not in printed  # the sentinel was the secret in use
    event_logs = [p for p in (root / "eventlogs").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in event_logs) > 100_000, event_logs  # the stages' Spark application
    assert any("org.apache.spark.deploy.SparkSubmit" in a for a in PROCESS_ARGS), sorted(PROCESS_ARGS)[:20]

    # The secret: nowhere at all, neither in a file the demo wrote (logs, event logs, tables and their
    # logs, MLflow's database and artifacts, summaries, checkpoints) nor in any process's arguments.
    sentinel = SENTINEL_SECRET.encode()
    # (demo.yaml, the site's own configuration, holds the object-store key: like a secrets file, not output)
    written = [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(synthetic) and p != demo]
    assert len(written) > 100
    assert [str(p) for p in written if sentinel in p.read_bytes()] == []
    assert [a for a in PROCESS_ARGS if SENTINEL_SECRET in a] == []

    # Source paths: the corpus's folder and every file name carrying a case or patient number stay out of
    # every table (quarantine included), every commit's metadata, and MLflow's store and artifacts. Spark's
    # own files (event logs, streaming checkpoints' source logs) name the files they read, as any Spark
    # job's do: docs/tables.md says so.
    names = {p.name for p in synthetic.rglob("*") if p.is_file() and re.search(r"\d{2,}", p.name)}
    assert len(names) > 50
    pattern = re.compile(
        "|".join(re.escape(n) for n in sorted({str(synthetic), *names}, key=len, reverse=True))
    )
    leaks: dict[str, list[str]] = {}
    tables = sorted(p.name for p in lake.iterdir() if (p / "_delta_log").is_dir())
    assert {"images", "quarantine", "tiles", "landing_images", "annotations"} <= set(tables)
    for table in tables:
        frame = read_table(spark, settings.lakehouse.table(table))
        strings = [
            f.name
            for f in frame.schema.fields
            if f.dataType.simpleString().startswith(("string", "map", "array"))
        ]
        text = "\n".join(
            json.dumps(r.asDict(recursive=True), default=str) for r in frame.select(*strings).collect()
        )
        if found := pattern.findall(text):
            leaks[f"table {table}"] = sorted(set(found))[:5]
    for path in lake.rglob("*"):
        if not path.is_file() or path.suffix == ".parquet" or path.is_relative_to(lake / "_checkpoints"):
            continue
        if found := pattern.findall(path.read_bytes().decode("latin-1")):
            leaks[str(path.relative_to(lake))] = sorted(set(found))[:5]
    assert leaks == {}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(demo: Path, notebook: Path) -> None:
    book = nbformat.read(notebook, as_version=4)
    previous = os.environ.get("ONCOLAKE_CONFIG")
    os.environ["ONCOLAKE_CONFIG"] = str(demo)  # the kernel inherits it: the notebooks read no other input
    try:
        NotebookClient(
            book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        ).execute()
    finally:
        if previous is None:
            os.environ.pop("ONCOLAKE_CONFIG")
        else:
            os.environ["ONCOLAKE_CONFIG"] = previous
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, ARTIFACTS / notebook.name)
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs) or notebook.stem.startswith("03")
    shutil.rmtree(ARTIFACTS / ".ipynb_checkpoints", ignore_errors=True)
