"""After training, on the driver: calibrate the best epoch, choose its threshold, register it.

Temperature and threshold are fitted on the validation split only; the version records them with its
lineage and the tile -> image aggregation rule (``aggregation``) its threshold was chosen under, which
evaluation and scoring read back (:mod:`model.registry`). Test figures and the promotion gate belong to
evaluation. The leakage audit's model is never registered: :func:`audit_figures` gives its test figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.aggregation import AggregationRule
from core.tasks import Task
from model.calibration import choose_aggregation, choose_threshold, fit_temperature
from model.data import TileInput
from model.training.common import TaskData, best_path, validation_logits


@dataclass(frozen=True)
class Calibrated:
    """The best epoch's network with its validation-fitted temperature and decision threshold."""

    net: Any
    weights: dict[str, Any]
    tile_input: TileInput
    temperature: float
    threshold: float
    rule: str
    aggregation: AggregationRule
    trials: tuple[dict[str, Any], ...] = ()
    """The aggregation candidates tried on validation (:func:`model.calibration.choose_aggregation`)."""

    def predict(self, classes: int, batch_size: int) -> Any:
        from model.inference import predict_tiles

        return lambda pixels: predict_tiles(
            self.net, pixels, classes, self.temperature, batch_size, self.tile_input
        )


def calibrate(settings: Any, task: Task, data: TaskData, directory: Path) -> Calibrated:
    """Load the best epoch and fit its temperature and threshold on the validation split only.

    The temperature is fitted on the labelled validation tiles; the aggregation rules are chosen on the
    calibrated validation scores (:func:`model.calibration.choose_aggregation`, when ``auto``); the
    decision threshold by the configured rule (``evaluate.threshold_rule``) on validation *image* scores,
    aggregated from tiles by the chosen rule exactly as scoring does, since scoring applies it to images.
    """
    import torch

    from model.evaluation import level_frames, score_split
    from model.networks import build_network

    weights = torch.load(best_path(str(directory)), weights_only=False)["model"]
    net = build_network(settings.train.network, len(task.classes))
    net.load_state_dict(weights)
    batch, tile_input = settings.train.batch_size, TileInput.from_settings(settings)
    logits, targets = validation_logits(net, data.val_files, task, tile_input, batch, data.rule)
    fitted = Calibrated(
        net, weights, tile_input, fit_temperature(logits, targets), 0.5, "", AggregationRule()
    )
    scores = score_split(data.val_files, task, "val", fitted.predict(len(task.classes), batch), data.rule)
    chosen, trials = choose_aggregation(scores, task, **settings.aggregation.model_dump())
    images = level_frames(scores, task, chosen)["image"]
    rule = settings.evaluate
    threshold = choose_threshold(
        images["target"].to_numpy(), images["score"].to_numpy(), rule.threshold_rule, rule.target_sensitivity
    )
    described = (
        f"image-level validation sensitivity >= {rule.target_sensitivity:g} on p_{task.positive}"
        if rule.threshold_rule == "sensitivity"
        else f"image-level validation Youden index on p_{task.positive}"
    )
    return Calibrated(
        net, weights, tile_input, fitted.temperature, threshold, described, chosen, tuple(trials)
    )


def audit_figures(settings: Any, task: Task, data: TaskData, directory: Path) -> Any:
    """The leakage audit's test figures: the image-split model on its own (image-split) test tiles."""
    from model.evaluation import figures, figures_frame, level_frames, score_split

    fitted = calibrate(settings, task, data, directory)
    predict = fitted.predict(len(task.classes), settings.train.batch_size)
    tiles = score_split(data.test_files, task, "test", predict, data.rule)
    levels = level_frames(tiles, task, fitted.aggregation)
    return figures_frame(figures(levels, task, fitted.threshold, settings.evaluate.bootstrap_rounds))


def register_best(settings: Any, task: Task, data: TaskData, directory: Path, state: dict[str, Any]) -> str:
    """Calibrate the best epoch (:func:`calibrate`), log it as the pyfunc model, register the challenger.

    The version's tags: task, lineage, best epoch, temperature, threshold and its rule, and the
    aggregation rule (:meth:`core.aggregation.AggregationRule.tags`).
    """
    import pyarrow.parquet as pq

    from model.registry import model_name
    from model.tracking import log_tile_model, register

    fitted = calibrate(settings, task, data, directory)
    temperature, threshold, described = fitted.temperature, fitted.threshold, fitted.rule
    example = pq.ParquetFile(data.val_files[0].removeprefix("file:")).read_row_group(0, columns=["pixels"])
    pixels = example["pixels"].to_pylist()[:2]
    info = log_tile_model(
        fitted.weights, settings.train.network, list(task.classes), temperature, pixels, fitted.tile_input
    )
    tags = {
        "task": task.name,
        "lineage.table": data.table,
        "lineage.version": str(data.version),
        **data.lineage_tags(),
        "best_epoch": str(state["best_epoch"]),
        "best_val_auc": f"{state['best_auc']:.4f}",
        "calibration.temperature": f"{temperature:.4f}",
        "threshold": f"{threshold:.6f}",
        "threshold.rule": described,
        **fitted.aggregation.tags(),
        "aggregation.chosen_on": "validation" if fitted.trials else "configuration",
        "aggregation.validation_auc": json.dumps(
            {
                f"{t['level']}:{t['rule']}:{t['top_k']}": None if math.isnan(t["auc"]) else round(t["auc"], 4)
                for t in fitted.trials
            }
        ),
    }
    description = (
        f"{task.name}: {', '.join(task.classes)} from {data.table}@{data.version} "
        f"(counts {json.dumps(data.counts, sort_keys=True)}); temperature {temperature:.3f} and threshold "
        f"{threshold:.3f} ({described}) fitted on the validation split. Research use only; not a "
        "diagnostic device. Test figures: see the evaluation report."
    )
    return register(info.model_uri, model_name(settings, task.name), tags, description)
