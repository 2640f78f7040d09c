"""Evaluate a registered model version: score its test split, write the report, run the promotion gate.

The version's lineage tags name the tiles table and version it was trained from; its test split is read
from exactly those files, so the figures can be reproduced by time travel. Its threshold and its tile ->
image aggregation rule are the ones recorded on it (read through :mod:`model.registry`, as every alias
lookup is). The report goes to the lakehouse and to the version's run; the version's description becomes
its model card. :func:`evaluate_tasks` is the library function behind ``oncolake evaluate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from core.aggregation import AggregationRule
from core.tasks import TASKS, Task
from model import promotion, registry
from model.evaluation import (
    comparison_frame,
    figures,
    figures_frame,
    level_frames,
    score_split,
    subgroup_figures,
)
from model.report import Report, write_report
from model.training.common import TaskData, task_data

GRID_TILES = 6  # correct and wrong tiles each in the report's grid


def pyfunc_predictor(model_uri: str) -> Any:
    """``pixels -> probabilities`` through the registered MLflow model (what scoring loads)."""
    model = mlflow.pyfunc.load_model(model_uri)

    def predict(pixels: list[bytes]) -> np.ndarray:
        return model.predict(pd.DataFrame({"pixels": pixels})).to_numpy()

    return predict


def subgroup_attributes(spark: Any, images_table: str, image_ids: list[str]) -> pd.DataFrame:
    """``image_id`` with the subgroup columns the images have: magnification, digitizer, density; and,
    not a subgroup, ``collection`` and ``split_strategy`` (what drew the image's split; null: recorded
    before strategies were, so by patient)."""
    from pyspark.sql import functions as F

    from pipelines.io import read_table
    from pipelines.split import SPLIT_STRATEGY

    frame = (
        read_table(spark, images_table)
        .where(F.col("image_id").isin(image_ids))
        .select(
            "image_id",
            "collection",
            "magnification",
            F.col("attributes")["digitizer"].alias("digitizer"),
            F.col("attributes")["density"].alias("density"),
            F.col("attributes")[SPLIT_STRATEGY].alias("split_strategy"),
        )
        .toPandas()
    )
    frame["split_strategy"] = frame["split_strategy"].fillna("patient")
    return frame.dropna(axis=1, how="all")


def _grid(files: tuple[str, ...], tiles: pd.DataFrame, task: Task, threshold: float) -> pd.DataFrame:
    """The most confident correct and wrong labelled test tiles, with their pixels read back."""
    import pyarrow.dataset as ds

    labelled = tiles[task.rows_of(tiles)].copy()
    if labelled.empty:
        return labelled
    positive = labelled["label"].map(task.label_map) == task.classes.index(task.positive)
    score = labelled[f"p_{task.positive}"]
    labelled["score"] = score
    labelled["correct"] = (score >= threshold) == positive
    labelled["confidence"] = (score - threshold).abs()
    chosen = pd.concat(
        [
            labelled[labelled["correct"]].nlargest(GRID_TILES, "confidence"),
            labelled[~labelled["correct"]].nlargest(GRID_TILES, "confidence"),
        ]
    )
    dataset = ds.dataset([f.removeprefix("file:") for f in files], format="parquet")
    pixels = dataset.to_table(
        columns=["tile_id", "pixels"], filter=ds.field("tile_id").isin(list(chosen["tile_id"]))
    ).to_pandas()
    return chosen.merge(pixels, on="tile_id")


def _history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    by_epoch: dict[int, dict[str, float]] = {}
    for key in ("train_loss", "val_loss", "val_auc"):
        for metric in client.get_metric_history(run_id, key):
            by_epoch.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def patient_counts(table: pd.DataFrame) -> tuple[int, int] | None:
    """The test patients of each class (positive, other) behind the patient-level AUC."""
    row = table[(table["level"] == "patient") & (table["collection"] == "all")]
    if row.empty or "patients_positive" not in row:
        return None
    first = row.iloc[0]
    return int(first["patients_positive"]), int(first["patients_negative"])


def patient_auc(table: pd.DataFrame) -> tuple[float, float, float]:
    """The figures the promotion gate reads: patient-level AUC over all the task's collections and its
    95% interval (NaN when undefined)."""
    row = table[(table["level"] == "patient") & (table["collection"] == "all")]
    if row.empty or "auc" not in row:
        return float("nan"), float("nan"), float("nan")
    first = row.iloc[0]
    return float(first["auc"]), float(first.get("auc_low", math.nan)), float(first.get("auc_high", math.nan))


def score_version(
    model_uri: str, data: TaskData, task: Task, threshold: float, rounds: int, aggregation: AggregationRule
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame]:
    """Tile scores, level frames and the figures table of one model on ``data``'s test split."""
    tiles = score_split(data.test_files, task, "test", pyfunc_predictor(model_uri))
    levels = level_frames(tiles, task, aggregation)
    return tiles, levels, figures_frame(figures(levels, task, threshold, rounds))


def model_card(task: Task, version: Any, table: pd.DataFrame, settings: Any, decision: Any) -> str:
    """The version's description: figures with intervals, threshold, lineage, config, intended use."""
    tags, rule = version.tags, registry.aggregation(version)
    lines = [
        f"# {version.name} v{version.version} ({task.name}: {', '.join(task.classes)})",
        "",
        "Intended use: research on public breast-cancer imaging collections. Not a diagnostic device; "
        "not validated on any clinical population.",
        "",
        "## Test figures (patient-bootstrap 95% intervals)",
        "",
        f"| level | collection | n | patients {task.positive} / other | AUC (95% CI) | sensitivity | "
        "specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        if row["level"] == "tile" or not isinstance(row.get("auc"), float) or math.isnan(row["auc"]):
            continue
        lines.append(
            f"| {row['level']} | {row['collection']} | {int(row['n'])} | {int(row['patients_positive'])} / "
            f"{int(row['patients_negative'])} | {row['auc']:.3f} ({row['auc_low']:.3f}–"
            f"{row['auc_high']:.3f}) | {row['sensitivity']:.3f} | {row['specificity']:.3f} |"
        )
    lines += [
        "",
        f"Threshold {registry.threshold(version):.4f} ({tags.get('threshold.rule', '')}); "
        f"calibration temperature {tags.get('calibration.temperature', '')} (validation split).",
        f"Aggregation: {rule.describe()}, chosen on {tags.get('aggregation.chosen_on', 'configuration')}.",
        f"Data: {tags.get('lineage.table', '')} version {tags.get('lineage.version', '')}; "
        f"split by patient, linked re-releases kept together.",
        f"Training: network {settings.train.network}, {settings.train.epochs} epochs max, "
        f"batch {settings.train.batch_size}, learning rate {settings.train.learning_rate}, "
        f"best epoch {tags.get('best_epoch', '')}.",
        f"Promotion: {decision.tags()['promotion.decision']} ({decision.reason}).",
    ]
    if task.warning:
        lines.append(f"Warning: {task.warning}.")
    return "\n".join(lines)


def audit_table(client: MlflowClient, run_id: str | None) -> pd.DataFrame | None:
    """The leakage audit's figures (logged by its training run), marked as image-level split."""
    if not run_id:
        return None
    path = client.download_artifacts(run_id, "audit/figures.csv")
    table = pd.read_csv(path)
    table["note"] = ("image-level split (leaky) " + table["note"].fillna("").astype(str)).str.strip()
    return table


def external_table(
    spark: Any,
    model_uri: str,
    data: TaskData,
    task: Task,
    threshold: float,
    rounds: int,
    aggregation: AggregationRule,
) -> pd.DataFrame | None:
    """Figures on the task's external collections, every split of them (the model never saw any)."""
    from pipelines.io import files_holding

    if not task.external:
        return None
    external = task.on_external()
    files = files_holding(spark, data.table, data.version, external.sql_condition())
    if not files:
        return None
    tiles = score_split(files, external, None, pyfunc_predictor(model_uri))
    levels = level_frames(tiles, external, aggregation)
    return figures_frame(figures(levels, external, threshold, rounds))


def compare_with_champion(
    name: str, champion: str, data: TaskData, task: Task, patients: pd.DataFrame, rounds: int
) -> promotion.Comparison:
    """The champion re-scored on the challenger's test split (its own threshold and rule), and the
    paired-bootstrap AUC difference challenger - champion over the test patients both scored.

    Args:
        patients: the challenger's patient level (:func:`model.evaluation.level_frames`).
    """
    from model.metrics import paired_auc_difference

    version = registry.find_version(name, version=champion)
    uri = f"models:/{name}/{champion}"
    aggregation = registry.aggregation(version)
    _, levels, table = score_version(uri, data, task, registry.threshold(version), rounds, aggregation)
    paired = patients.merge(levels["patient"][["patient", "score"]], on="patient", suffixes=("", "_champion"))
    result = paired_auc_difference(
        paired["target"].to_numpy(),
        paired["score"].to_numpy(),
        paired["score_champion"].to_numpy(),
        paired["patient"].to_numpy(),
        rounds,
    )
    return promotion.Comparison(
        champion, patient_auc(table)[0], result["difference"], result["low"], result["high"], len(paired)
    )


def split_kind(data: TaskData, strategies: pd.DataFrame | None = None) -> str:
    """How the test split the figures come from was drawn.

    Args:
        strategies: ``collection, split_strategy`` of the test images (:func:`subgroup_attributes`);
            collections split by their own division (``official``) are named.
    """
    if data.rule.by != "patient":
        return "image-level random (the leakage audit)"
    kind = "patient-level (groups of linked patients never span splits)"
    if strategies is not None and not strategies.empty:
        official = sorted(set(strategies.loc[strategies["split_strategy"] == "official", "collection"]))
        if official:
            kind += f"; {', '.join(official)}: official (the collection's own test set, whole groups kept)"
    return kind


def figure_labels(task: Task, trained_on: dict[str, str], method: str) -> str:
    """Which labels the figures of each collection use, and which the model trained on."""
    parts = []
    for collection, how in task.label_sources().items():
        if how == "collection":
            parts.append(f"{collection}: its own")
        else:
            parts.append(f"{collection}: expert consensus ({method}, annotations {how.split(':', 1)[1]})")
    used = ", ".join(f"{c}: {how}" for c, how in sorted(trained_on.items())) or "each collection's own"
    return f"figures use {'; '.join(parts)}; training used {used}"


def gate(settings: Any) -> promotion.Gate:
    """The promotion gate's settings."""
    evaluate = settings.evaluate
    return promotion.Gate(evaluate.min_auc, evaluate.promotion_margin, evaluate.min_patients)


def evaluate_version(spark: Any, settings: Any, task: Task, name: str, version: str) -> dict[str, Any]:
    """Score ``name`` v``version`` on its test split, report it, and run the promotion gate."""
    client = MlflowClient()
    registered = registry.find_version(name, version=version, client=client)
    tags = registered.tags
    threshold, aggregation = registry.threshold(registered), registry.aggregation(registered)
    from pipelines.curation import LANDING

    trained_on = json.loads(tags.get("lineage.labels", "{}"))
    # Figures keep each collection's own ground truth; images without any (landed ones) are judged on
    # the consensus they were trained on, and the report says so.
    without_truth = {c: how for c, how in trained_on.items() if c == LANDING}
    task = task.with_labels(without_truth) if without_truth else task
    data = task_data(spark, tags["lineage.table"], int(tags["lineage.version"]), task)
    rounds, uri = settings.evaluate.bootstrap_rounds, f"models:/{name}/{version}"
    print(f"evaluate: {name} v{version} on {data.table}@{data.version}, test split", flush=True)
    tiles, levels, table = score_version(uri, data, task, threshold, rounds, aggregation)
    images = levels["image"]
    attributes = subgroup_attributes(spark, settings.lakehouse.table("images"), list(images["image_id"]))
    strategies = attributes[["collection", "split_strategy"]] if "collection" in attributes else None
    subgroups = figures_frame(
        subgroup_figures(
            images,
            attributes.drop(columns=["collection", "split_strategy"], errors="ignore"),
            threshold,
            max(10, rounds // 5),
        )
    )

    champion = registry.alias_version(name, registry.CHAMPION, client)
    auc, low, high = patient_auc(table)
    if champion == str(version):
        decision = promotion.Decision(True, auc, low, high, None, (), "already the champion", gate(settings))
    else:
        comparison = None
        if champion is not None:
            comparison = compare_with_champion(name, champion, data, task, levels["patient"], rounds)
        decision = promotion.decide(auc, low, high, comparison, gate(settings), patient_counts(table))
        promotion.record(name, str(version), decision, client)

    folder = Path(settings.lakehouse.root) / settings.evaluate.reports / name / f"v{version}"
    summary = [
        f"model {name} version {version}; task {task.name} ({task.positive} is positive)",
        f"data: {data.table} @ version {data.version}; counts {json.dumps(data.counts, sort_keys=True)}",
        f"test split: {split_kind(data, strategies)}",
        f"labels: {figure_labels(task, trained_on, settings.train.consensus_method)}",
        f"threshold {threshold:.4f} ({tags.get('threshold.rule', '')}); temperature "
        f"{tags.get('calibration.temperature', '')}",
        f"promotion: {decision.summary()}",
    ]
    notes = [task.warning] if task.warning else []
    report = Report(
        title=f"Evaluation of {name} v{version}",
        summary=summary,
        figures=table,
        levels=levels,
        threshold=threshold,
        history=_history(client, registered.run_id),
        subgroups=subgroups,
        audit=audit_table(client, tags.get("audit.run_id")),
        external=external_table(spark, uri, data, task, threshold, rounds, aggregation),
        grid=_grid(data.test_files, tiles, task, threshold),
        notes=notes,
        comparison=comparison_frame(task, table, split_kind(data, strategies)),
    )
    written = write_report(report, folder, (task.classes[0], task.positive))
    with mlflow.start_run(run_id=registered.run_id):
        overall = table[table["collection"] == "all"]
        for _, row in overall.iterrows():
            for key in ("auc", "auc_low", "auc_high", "sensitivity", "specificity", "accuracy", "f1"):
                value = row.get(key)
                if isinstance(value, float) and not math.isnan(value):
                    mlflow.log_metric(f"test_{row['level']}_{key}", value)
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
    card = model_card(task, registered, table, settings, decision)
    client.update_model_version(name, version, description=card)
    return {"report": folder / "report.md", "figures": table, "decision": decision, "levels": levels}


def evaluate_tasks(
    spark: Any, settings: Any, tasks: Sequence[str] | None, alias: str, version: str | None = None
) -> dict[str, dict[str, Any] | None]:
    """Evaluate each task's version ``version``, else the one holding ``alias``: one line per task.

    Returns:
        Per task, :func:`evaluate_version`'s result, or None when its model has no such version.
    """
    from model.tracking import use_tracking

    use_tracking(settings)
    results: dict[str, dict[str, Any] | None] = {}
    for task_name in tasks or settings.train.tasks:
        name = registry.model_name(settings, task_name)
        chosen = version or registry.alias_version(name, alias)
        if chosen is None:
            print(f"evaluate: {name} has no version with alias {alias!r}: train it first")
            results[task_name] = None
            continue
        result = results[task_name] = evaluate_version(spark, settings, TASKS[task_name], name, chosen)
        decision = result["decision"]
        print(
            f"evaluate: {name} v{chosen}: patient-level test AUC {decision.challenger_auc:.3f}; "
            f"{decision.tags()['promotion.decision']} ({decision.reason}); report {result['report']}"
        )
    return results
