"""The evaluation report: Markdown and HTML side by side, with the pictures people would rather look at.

Everything here is drawing and formatting; the numbers come from :mod:`model.evaluation`. The report
folder holds ``report.md``, ``report.html``, ``figures.csv`` and the PNGs both documents link to, so it
can be logged to MLflow as it is and opened from the run's artifacts.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHOWN = ["TP", "TN", "FP", "FN", "accuracy", "sensitivity", "specificity", "precision", "recall", "f1"]


@dataclass
class Report:
    """What one report says; sections without data are left out."""

    title: str
    summary: list[str]
    figures: pd.DataFrame
    levels: dict[str, pd.DataFrame]
    threshold: float
    history: list[dict[str, float]] = field(default_factory=list)
    subgroups: pd.DataFrame | None = None
    audit: pd.DataFrame | None = None
    external: pd.DataFrame | None = None
    grid: pd.DataFrame | None = None  # tiles with pixels, label, score, correct
    notes: list[str] = field(default_factory=list)
    comparison: pd.DataFrame | None = None  # this run beside published figures, each with its split kind


# Counts: integers even where a row without data made pandas store the column as floats.
COUNTS = {"n", "patients", "TP", "TN", "FP", "FN", "patients_positive", "patients_negative"}


def _cell(value: Any, column: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.0f}" if column in COUNTS else f"{value:.3f}"
    return str(value)


def _table_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Rows of a figures table; beside every AUC, the patients of each class behind it (``+/−``)."""
    shown = ["level", "collection", "n", "patients", *SHOWN]
    columns = [*shown, "AUC (95% CI)", "patients +/−", "note"]
    rows = []
    for _, row in frame.iterrows():
        auc = row.get("auc", float("nan"))
        interval = (
            f"{auc:.3f} ({row['auc_low']:.3f}–{row['auc_high']:.3f})"
            if isinstance(auc, float) and not math.isnan(auc) and not math.isnan(row.get("auc_low", math.nan))
            else _cell(auc)
        )
        positive, negative = row.get("patients_positive", math.nan), row.get("patients_negative", math.nan)
        per_class = "—" if pd.isna(positive) else f"{_cell(positive, 'n')}/{_cell(negative, 'n')}"
        cells = [_cell(row.get(c, ""), c) for c in shown]
        rows.append([*cells, interval, per_class, str(row.get("note", "") or "")])
    return columns, rows


def _markdown_table(frame: pd.DataFrame) -> str:
    columns, rows = _table_rows(frame)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def _html_table(frame: pd.DataFrame) -> str:
    columns, rows = _table_rows(frame)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    return list(frame.columns), [[_cell(v, str(c)) for c, v in row.items()] for _, row in frame.iterrows()]


def _plain_markdown(frame: pd.DataFrame) -> str:
    columns, rows = _plain_rows(frame)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def _plain_html(frame: pd.DataFrame) -> str:
    columns, rows = _plain_rows(frame)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plot_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("train_loss", "val_loss"):
        left.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [h.get("val_auc", np.nan) for h in history], marker="o", color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel("validation AUC (tiles)")
    right.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _groups(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    collections = sorted(rows["collection"].unique())
    groups = [(c, rows[rows["collection"] == c]) for c in collections]
    return [*groups, ("all", rows)] if groups else []


def _plot_roc(rows: pd.DataFrame, path: Path, level: str) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axis = plt.subplots(figsize=(4.5, 4.5))
    for name, subset in _groups(rows):
        if subset["target"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(subset["target"], subset["score"])
        axis.plot(fpr, tpr, label=f"{name} (n={len(subset)})", linewidth=2.5 if name == "all" else 1.2)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(f"ROC, {level} level, test split")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_confusion(rows: pd.DataFrame, threshold: float, path: Path, classes: tuple[str, str]) -> None:
    import matplotlib.pyplot as plt

    groups = _groups(rows)
    fig, axes = plt.subplots(1, len(groups), figsize=(2.8 * len(groups), 2.9), squeeze=False)
    for axis, (name, subset) in zip(axes[0], groups, strict=True):
        predicted = subset["score"] >= threshold
        matrix = np.array(
            [
                [((subset["target"] == t) & (predicted == p)).sum() for p in (False, True)]
                for t in (False, True)
            ]
        )
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(j, i, str(count), ha="center", va="center")
        axis.set_xticks([0, 1], classes)
        axis.set_yticks([0, 1], classes)
        axis.set_xlabel("predicted")
        axis.set_title(name)
    axes[0][0].set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_grid(grid: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    from core.codec import decode_png

    columns = 6
    rows = max(1, math.ceil(len(grid) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (_, tile) in zip(axes.flat, grid.iterrows(), strict=False):
        pixels = decode_png(tile["pixels"])
        axis.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        colour = "green" if tile["correct"] else "red"
        axis.set_title(f"{tile['label']} p={tile['score']:.2f}", color=colour, fontsize=8)
    fig.suptitle("test tiles: most confident correct (green) and wrong (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(report: Report, folder: Path, classes: tuple[str, str]) -> list[Path]:
    """Write the report's files into ``folder``; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    pictures: list[tuple[str, str]] = []
    if report.history:
        _plot_curves(report.history, folder / "curves.png")
        pictures.append(("Training curves", "curves.png"))
    for level in ("image", "patient"):
        rows = report.levels.get(level)
        if rows is not None and not rows.empty:
            _plot_roc(rows, folder / f"roc-{level}.png", level)
            pictures.append((f"ROC curves per collection ({level} level)", f"roc-{level}.png"))
    if report.levels.get("image") is not None and not report.levels["image"].empty:
        _plot_confusion(report.levels["image"], report.threshold, folder / "confusion.png", classes)
        pictures.append(("Confusion matrices (image level, at the threshold)", "confusion.png"))
    if report.grid is not None and not report.grid.empty:
        _plot_grid(report.grid, folder / "tiles.png")
        pictures.append(("Tiles", "tiles.png"))
    report.figures.to_csv(folder / "figures.csv", index=False)

    tables = [("Test split: figures per level and collection", report.figures)]
    for heading, frame in (
        ("Subgroups (image level)", report.subgroups),
        ("Leakage audit: the same training with an image-level random split", report.audit),
        ("External validation: collections the model never saw", report.external),
    ):
        if frame is not None and not frame.empty:
            tables.append((heading, frame))

    compare = "Beside published figures (which split produced each decides whether they compare)"
    md = [f"# {report.title}", "", *[f"- {line}" for line in report.summary], ""]
    md += [f"> {note}" for note in report.notes] + ([""] if report.notes else [])
    if report.comparison is not None and not report.comparison.empty:
        md += [f"## {compare}", "", _plain_markdown(report.comparison), ""]
    for heading, frame in tables:
        md += [f"## {heading}", "", _markdown_table(frame), ""]
    for heading, name in pictures:
        md += [f"## {heading}", "", f"![{heading}]({name})", ""]
    (folder / "report.md").write_text("\n".join(md))

    body = [f"<h1>{html.escape(report.title)}</h1>", "<ul>"]
    body += [f"<li>{html.escape(line)}</li>" for line in report.summary] + ["</ul>"]
    body += [f"<blockquote>{html.escape(note)}</blockquote>" for note in report.notes]
    if report.comparison is not None and not report.comparison.empty:
        body += [f"<h2>{html.escape(compare)}</h2>", _plain_html(report.comparison)]
    for heading, frame in tables:
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(frame)]
    for heading, name in pictures:
        body += [f"<h2>{html.escape(heading)}</h2>", f'<img src="{name}" alt="{html.escape(heading)}">']
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    (folder / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return sorted(folder.iterdir())
