"""The end-to-end demo on the ``tiny`` profile, as a user runs it, and the notebooks run against its output.

One demo run (its own process and JVMs: synth -> ingest -> reports -> consensus -> tile -> train with 2
workers -> evaluate -> score -> stream --once) in a temporary folder, then checks of what a user is
promised at its end: a registered model per task with its report and the promotion gate's decision,
champions only where the gate let them through (else the score job says why it scored nothing for that
task), their predictions for the test split and, through the stream, the landing folder, and that what
it printed is readable: no Python warning from a third-party package and under 300 lines in all (the
log is kept beside the lakehouse as ``demo.log``).
The notebooks under ``notebooks/`` are then executed top to bottom with nbclient against that lakehouse,
so they cannot rot; the executed copies are kept in tests/artifacts/notebooks/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny demo; returns its configuration file (what ``ONCOLAKE_CONFIG`` names).

    Run as ``oncolake demo > demo.log 2>&1`` would: both streams into one file, as bytes, so that the
    log holds what a user sees, in order, with progress bars' carriage returns kept.
    """
    root = tmp_path_factory.mktemp("demo")
    config = root / "demo.yaml"
    config.write_text(
        f"extends: tiny\nlakehouse:\n  root: {root / 'lakehouse'}\nsynth:\n  out: {root / 'synthetic'}\n"
    )
    log = root / "demo.log"
    with log.open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "demo", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
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
