"""Distributed training from the tiles table: two workers (TorchDistributor, the default backend, in the
session; each backend on local-cluster in the killed-run test), Petastorm, MLflow lineage, checkpoints,
registration of the best epoch, evaluation and the promotion gate, resuming a run.

One histology model is trained once for the module (``trained``) on the session's tiled corpus, in an
MLflow store of the module's own; the tests below each check one thing about it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import mlflow
import psutil
import pytest
import torch
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from conf import ConfigError, Settings, load_settings
from core.aggregation import RULES
from core.tasks import TASKS
from model import registry
from model.data import IGNORE
from model.registry_evaluation import evaluate_tasks, evaluate_version, external_table
from model.tracking import use_tracking
from model.training.common import COSINE_FLOOR, TaskData, TrainPlan, latest_checkpoint, task_data
from model.training.runner import Refused, fit_task, task_slots, train_tasks
from model.training.worker import task_batches
from pipelines.io import current_version, read_table
from pipelines.pseudonym import DEMO_SECRET

TASK = TASKS["histo_benign_vs_malignant"]


def module_settings(lake: str, store: Path, *overrides: str) -> Settings:
    """The tiny profile on ``lake``, with the module's own MLflow store and model names."""
    return load_settings(
        "tiny",
        [
            f"lakehouse.root={lake}",
            "spark.master=local[2]",
            f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
            "train.model_prefix=train-test-",
            "train.patience=5",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def trained_once(
    spark: SparkSession, tiles: Settings, tmp_path_factory: pytest.TempPathFactory
) -> SimpleNamespace:
    """Two epochs of the histology task in two workers, through ``train_tasks`` (the train job's work)."""
    store = tmp_path_factory.mktemp("train-mlflow")
    settings = module_settings(tiles.lakehouse.root, store, "train.epochs=2")
    table = settings.lakehouse.table("tiles")
    version = current_version(spark, table)
    [result] = train_tasks(spark, settings, [TASK.name])
    return SimpleNamespace(
        settings=settings,
        store=store,
        data=task_data(spark, table, version, TASK),
        version=version,
        result=result,
        latest=latest_checkpoint(result["checkpoint_dir"]),
        name=registry.model_name(settings, TASK.name),
    )


@pytest.fixture()
def trained(trained_once: SimpleNamespace) -> SimpleNamespace:
    """The module's model, its MLflow store the current one (other tests point MLflow elsewhere)."""
    use_tracking(trained_once.settings)
    return trained_once


@pytest.fixture(scope="module")
def evaluated(spark: SparkSession, trained_once: SimpleNamespace) -> dict:
    """The first version evaluated as the evaluate job does (``evaluate_tasks``, alias challenger)."""
    return evaluate_tasks(spark, trained_once.settings, [TASK.name], registry.CHALLENGER)[TASK.name]


@pytest.fixture(scope="module")
def resumed(spark: SparkSession, trained_once: SimpleNamespace) -> SimpleNamespace:
    """The same run resumed with one more epoch."""
    trained = trained_once
    longer = module_settings(trained.settings.lakehouse.root, trained.store, "train.epochs=3")
    use_tracking(longer)
    result = fit_task(spark, longer, TASK, trained.data, num_proc=2, resume_run_id=trained.result["run_id"])
    return SimpleNamespace(settings=longer, result=result)


def test_two_workers_of_the_default_backend_train_from_a_pinned_tiles_version(
    trained: SimpleNamespace,
) -> None:
    result, data = trained.result, trained.data
    assert trained.settings.train.backend == "torch_distributor"
    assert sum(data.counts["train"].values()) > 0 and data.train_files
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert all(r["images_per_s"] > 0 for r in result["history"])
    assert trained.latest.name == "epoch-002.pt"
    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["lineage.version"] == str(trained.version)
    assert run.data.tags["lineage.filter"] == TASK.sql_condition()
    assert json.loads(run.data.tags["lineage.counts"]) == data.counts
    assert "train_loss" in run.data.metrics and run.data.params["task"] == TASK.name
    assert run.data.params["train.momentum"] == "0.9" and run.data.params["tiles.size"] == "224"
    assert DEMO_SECRET.decode() not in json.dumps([run.data.params, run.data.tags])


def test_the_best_epoch_is_registered_as_challenger_with_calibration_and_aggregation(
    spark: SparkSession, trained: SimpleNamespace
) -> None:
    name, settings = trained.name, trained.settings
    registered = registry.find_version(name, alias=registry.CHALLENGER)
    assert str(registered.version) == trained.result["version"]
    assert registered.tags["lineage.version"] == str(trained.version)
    assert float(registered.tags["calibration.temperature"]) > 0 and 0 <= registry.threshold(registered) <= 1
    rule = registry.aggregation(registered)  # chosen on validation: aggregation is auto by default
    assert registered.tags["aggregation.chosen_on"] == "validation" and rule.rule in RULES
    assert set(json.loads(registered.tags["aggregation.validation_auc"])) >= {"image:max:1", "patient:mean:1"}
    model = mlflow.pyfunc.load_model(f"models:/{name}@{registry.CHALLENGER}")
    sample = (
        read_table(spark, settings.lakehouse.table("tiles"))
        .where(f"split = 'test' AND {TASK.sql_condition()}")
        .select("pixels")
        .limit(3)
        .toPandas()
    )
    probabilities = model.predict(sample)
    assert list(probabilities.columns) == ["p_benign", "p_malignant"]
    assert ((probabilities.sum(axis=1) - 1).abs() < 1e-5).all()


def test_evaluation_reports_three_levels_and_gates_even_the_first_version(
    trained: SimpleNamespace, evaluated: dict
) -> None:
    """The tiny corpus's test split holds a patient or two of each class: too few to promote on (even a
    perfect ranking's interval is 1.000-1.000 there), so no champion, first version or not."""
    table = evaluated["figures"]
    assert set(table["level"]) == {"tile", "image", "patient"}
    overall = table[(table["collection"] == "all")].set_index("level")
    assert (overall[["TP", "TN", "FP", "FN"]].sum(axis=1) == overall["n"]).all()
    image_level = evaluated["levels"]["image"]
    assert image_level["image_id"].is_unique and set(image_level["target"]) <= {0, 1}
    report = evaluated["report"]
    assert report.is_file() and (report.parent / "report.html").is_file()
    assert {"roc-image.png", "confusion.png", "curves.png"} <= {p.name for p in report.parent.iterdir()}
    decision = evaluated["decision"]
    patient = overall.loc["patient"]
    assert min(patient["patients_positive"], patient["patients_negative"]) < 5
    assert not decision.promoted and "patients" in decision.failed
    assert ("floor" in decision.failed) == (
        math.isnan(decision.challenger_auc) or decision.challenger_auc < 0.7
    )
    version = trained.result["version"]
    assert registry.alias_version(trained.name, registry.CHAMPION) is None
    tags = registry.find_version(trained.name, version=version).tags
    assert tags["promotion.decision"] == "not promoted" and tags["promotion.failed"] == ",".join(
        decision.failed
    )
    card = registry.find_version(trained.name, version=version).description
    assert "Not a diagnostic device" in card and "95%" in card and "Aggregation: an image is" in card
    assert "Promotion: not promoted" in card and "evaluate.min_patients" in card
    assert ("evaluate.min_auc" in card) == ("floor" in decision.failed)
    assert "not promoted (stays challenger)" in report.read_text()
    assert any(a.path == "evaluation" for a in MlflowClient().list_artifacts(trained.result["run_id"]))


def test_external_validation_reads_every_split_of_the_external_collections(
    spark: SparkSession, trained: SimpleNamespace
) -> None:
    """Here BreaKHis plays the external collection, as if the model had never seen it."""
    unseen = dataclasses.replace(TASK, collections=(), external=("breakhis",))
    rule = registry.aggregation(registry.find_version(trained.name, version=trained.result["version"]))
    uri = f"models:/{trained.name}/{trained.result['version']}"
    external = external_table(spark, uri, trained.data, unseen, 0.5, 20, rule)
    labelled = sum(n for counts in trained.data.counts.values() for n in counts.values())
    assert external.set_index(["level", "collection"]).loc[("tile", "all"), "n"] == labelled


def test_a_resumed_run_continues_from_its_last_checkpoint(
    trained: SimpleNamespace, resumed: SimpleNamespace
) -> None:
    result = resumed.result
    assert result["run_id"] == trained.result["run_id"]
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert result["history"][:2] == trained.result["history"]
    assert latest_checkpoint(result["checkpoint_dir"]).name == "epoch-003.pt"


def test_the_gate_rescores_the_champion_on_the_challengers_split(
    spark: SparkSession, trained: SimpleNamespace, evaluated: dict, resumed: SimpleNamespace
) -> None:
    """The resumed run registered a new challenger; the first version, made champion by hand (as an admin
    can), is re-scored on the challenger's test split and compared on the same patients."""
    name, first, second = trained.name, trained.result["version"], resumed.result["version"]
    MlflowClient().set_registered_model_alias(name, registry.CHAMPION, first)
    decision = evaluate_version(spark, resumed.settings, TASK, name, second)["decision"]
    tags = registry.find_version(name, version=second).tags
    comparison = decision.comparison
    assert tags["promotion.champion_version"] == first and comparison.patients >= 1
    assert tags["promotion.champion_patient_auc"] == f"{evaluated['decision'].challenger_auc:.4f}"
    assert tags["promotion.difference_low"] == f"{comparison.low:.4f}"
    # A handful of test patients: the paired interval cannot exclude "no better", so it is not beaten.
    beaten = not math.isnan(comparison.low) and comparison.low > 0
    assert not beaten and not decision.promoted and "champion" in decision.failed
    assert registry.alias_version(name, registry.CHAMPION) == first


def test_a_network_that_cannot_take_the_tile_size_is_refused_before_any_spark_work(
    spark: SparkSession, tmp_path: Path
) -> None:
    small = ("tiles.size=32", "tiles.stride=32", "tiles.scored_stride.mammography=32")
    settings = module_settings(str(tmp_path / "no-lake"), tmp_path, *small, "train.network=alexnet_like")
    with pytest.raises(Refused, match="network 'alexnet_like' cannot take 32x32 tiles"):
        train_tasks(spark, settings)
    assert not (tmp_path / "no-lake").exists() and not (tmp_path / "mlflow.db").exists()


def _worker_of_rank(root: int, backend: str, rank: str) -> psutil.Process | None:
    """The training process of ``rank`` among ``root``'s descendants (the executors' task processes)."""
    for child in psutil.Process(root).children(recursive=True):
        try:
            command, env = " ".join(child.cmdline()), child.environ()
        except psutil.Error:
            continue
        if backend == "horovod" and "gloo_exec_fn" in command and env.get("HOROVOD_RANK") == rank:
            return child
        wrappers = ("torch_run_process_wrapper", "torch.distributed.run")  # Spark's, and torchrun
        if (
            backend == "torch_distributor"
            and env.get("RANK") == rank
            and command.endswith("train.py")
            and not any(wrapper in command for wrapper in wrappers)
        ):
            return child  # the process torchrun started
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "fault"),
    [("horovod", "SIGKILL"), ("torch_distributor", "SIGKILL"), ("torch_distributor", "SIGSTOP")],
)
def test_a_worker_killed_or_hung_mid_epoch_fails_the_run_and_resume_completes_it(
    tiles: Settings, oncolake, tmp_path: Path, backend: str, fault: str
) -> None:
    """``oncolake train`` with two processes on two executor JVMs (local-cluster): the worker of rank 1
    is killed (SIGKILL) or hung (SIGSTOP) during the second epoch. The run fails with exit 3 and a
    message naming what happened (a hung peer: after ``train.peer_timeout_seconds``), the first epoch's
    checkpoint kept; ``--resume`` finishes every epoch and registers the model, losing at most the epoch
    that was running."""
    import signal
    import subprocess
    import sys
    import time

    lake = Path(tiles.lakehouse.root)
    args = ["train", "--config", "tiny", "--task", TASK.name, "--set", f"lakehouse.root={lake}"]
    args += ["--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    epochs, timeout = 6, 20  # epochs of the tiny corpus take seconds: the fault lands mid-run
    args += ["--set", "train.model_prefix=kill-test-", "--set", f"train.epochs={epochs}"]
    args += ["--set", f"train.patience={epochs + 1}", "--set", f"train.peer_timeout_seconds={timeout}"]
    args += ["--set", "spark.master=local-cluster[2,1,1024]", "--set", f"train.backend={backend}"]
    args += ["--set", "train.num_proc=2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    run_id, victim, faulted_at, seen = None, None, 0.0, []
    try:
        for line in process.stdout:
            seen.append(line)
            found = re.search(r"--resume (\w+)", line)
            run_id = found.group(1) if found and run_id is None else run_id
            if victim is None and f"train: epoch 1/{epochs} loss" in line:
                victim = _worker_of_rank(process.pid, backend, "1")
                assert victim is not None, "no worker of rank 1 among the job's processes"
                victim.send_signal(getattr(signal, fault))
                faulted_at = time.monotonic()
        process.wait(timeout=120)
        failed_after = time.monotonic() - faulted_at
    finally:
        if victim is not None and victim.is_running():  # a stopped worker outlives its run: end it
            victim.kill()
        if process.poll() is None:
            process.kill()
    output = "".join(seen)
    assert victim is not None, "the first epoch never ended:\n" + output[-3000:]
    assert process.returncode == 3, output[-3000:]
    failure = next(line for line in seen if line.startswith("oncolake train:"))
    if fault == "SIGKILL":
        assert "worker of rank 1 killed by SIGKILL" in failure or "connection closed" in failure, failure
        assert failed_after < timeout, failure  # a dead peer fails the run at once, not at the timeout
    else:
        assert f"stopped answering for {timeout} s (train.peer_timeout_seconds)" in failure, failure
        assert timeout <= failed_after < timeout + 90, failure
    assert run_id is not None and f"--resume {run_id}" in failure
    checkpoints = lake / "checkpoints" / run_id
    done = sorted(p.name for p in checkpoints.glob("epoch-*.pt"))
    assert done and done[0] == "epoch-001.pt" and len(done) < epochs

    result = oncolake(*args, "--resume", run_id)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming after epoch {len(done)}" in result.stdout + result.stderr
    assert sorted(p.name for p in checkpoints.glob("epoch-*.pt")) == [
        f"epoch-{e:03d}.pt" for e in range(1, epochs + 1)
    ]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # earlier tests set a registry URI
    steps = [m.step for m in client.get_metric_history(run_id, "val_auc")]
    # Every epoch logged once, by the resumed run (no epoch repeated).
    assert sorted(steps) == list(range(1, epochs + 1))
    run = client.get_run(run_id)
    assert run.data.params["train.backend"] == backend and run.data.params["num_proc"] == "2"
    [version] = client.search_model_versions(f"name = 'kill-test-{TASK.name}'")
    assert version.run_id == run_id
    challenger = client.get_model_version_by_alias(f"kill-test-{TASK.name}", registry.CHALLENGER)
    assert challenger.version == version.version


def test_task_batches_are_full_and_lose_no_row() -> None:
    """Reader batches mix in other splits' rows; training steps still get ``size`` task rows each."""
    rows = torch.arange(40)
    targets = torch.where(rows % 3 == 0, IGNORE, rows % 2)  # a third of the rows belong elsewhere
    reader = ({"image": rows[i : i + 8], "target": targets[i : i + 8]} for i in range(0, 40, 8))
    batches = list(task_batches(reader, 5))
    assert all(len(images) == len(labels) == 5 for images, labels in batches)
    kept = torch.cat([images for images, _ in batches])
    task_rows = rows[targets != IGNORE]
    assert len(batches) == len(task_rows) // 5
    assert torch.equal(kept, task_rows[: len(kept)])  # in order, none dropped, none repeated


def test_the_learning_rate_warms_up_then_follows_its_schedule(tmp_path: Path) -> None:
    settings = module_settings(str(tmp_path / "lake"), tmp_path, "train.epochs=4", "train.warmup_epochs=1")
    data = TaskData("tiles", 0, "", {"train": {"benign": 64}}, (), (), ())
    plan = TrainPlan.build(settings, TASK, data, 1, str(tmp_path))
    steps = plan.steps_per_epoch * plan.epochs
    assert plan.schedule == "cosine" and plan.steps_per_epoch > 1
    rates = [plan.learning_rate_at(step, 1.0) for step in range(1, steps + 1)]
    warm = plan.steps_per_epoch
    assert rates[:warm] == [pytest.approx((i + 1) / warm) for i in range(warm)]
    assert all(a >= b for a, b in zip(rates[warm - 1 :], rates[warm:], strict=False))  # never rises
    assert rates[-1] == pytest.approx(COSINE_FLOOR)
    constant = dataclasses.replace(plan, schedule="constant")
    assert [constant.learning_rate_at(s, 1.0) for s in range(warm, steps + 1)] == [1.0] * (steps - warm + 1)


def test_a_task_trains_with_its_own_values_where_train_per_task_has_them(tmp_path: Path) -> None:
    data = TaskData("tiles", 0, "", {"train": {"benign": 64}}, (), (), ())
    own = "train.per_task={histo_benign_vs_malignant: {learning_rate: 0.001, epochs: 11}}"
    settings = module_settings(str(tmp_path / "lake"), tmp_path, "train.epochs=4", own)
    plan = TrainPlan.build(settings, TASK, data, 1, str(tmp_path))
    assert (plan.learning_rate, plan.epochs, plan.patience) == (0.001, 11, settings.train.patience)
    other = TrainPlan.build(settings, TASKS["mammo_normal_vs_abnormal"], data, 1, str(tmp_path))
    assert (other.learning_rate, other.epochs) == (settings.train.learning_rate, 4)
    with pytest.raises(ConfigError, match="per_task"):
        module_settings(
            str(tmp_path / "lake"), tmp_path, "train.per_task={histo_benign_vs_malignant: {seed: 1}}"
        )


def test_one_training_process_per_task_slot(spark: SparkSession) -> None:
    # A cluster backend reports a default parallelism of at least 2: on local-cluster[1,1,M] a 2-process
    # barrier stage would wait for a slot that never comes (found by benchmarks/scaling.py).
    assert task_slots(spark) == spark.sparkContext.defaultParallelism  # local[N]: N
    for master, slots in (("local-cluster[1,1,5120]", 1), ("local-cluster[2, 3, 1024]", 6)):
        context = SimpleNamespace(master=master, defaultParallelism=2)
        assert task_slots(SimpleNamespace(sparkContext=context)) == slots
