"""Figures from numbers: each function takes arrays or rows and returns a matplotlib Figure (it writes nothing)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fer_bench.evaluate import row_normalise  # noqa: E402


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> plt.Figure:
    """Counts and row-normalised confusion matrices side by side."""
    import seaborn as sns  # here: only the per-run figure uses it, and compare stays quick

    fig, axes = plt.subplots(1, 2, figsize=(14, 6), constrained_layout=True)
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0],
                xticklabels=classes, yticklabels=classes)
    sns.heatmap(row_normalise(matrix), annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, ax=axes[1],
                xticklabels=classes, yticklabels=classes, cbar_kws={"label": "fraction of the true class"})
    for ax, subtitle in zip(axes, ("counts", "row-normalised (recall on the diagonal)")):
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(subtitle)
        ax.tick_params(axis="x", rotation=45)
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title, fontsize=14)
    return fig


def curves_figure(history: list[dict], title: str) -> plt.Figure:
    """Loss and accuracy per epoch, train and validation, with the fine-tune phase boundary marked."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [row.get(metric, np.nan) for row in history], marker="o", label="train")
        ax.plot(epochs, [row.get(f"val_{metric}", np.nan) for row in history], marker="o", label="validation")
        boundaries = [b["epoch"] for a, b in zip(history, history[1:]) if a["phase"] != b["phase"]]
        for epoch in boundaries:
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(epoch - 0.4, ax.get_ylim()[1], "fine-tune", va="top", fontsize=8, color="grey")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=13)
    return fig


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def comparison_figure(table, split: str) -> plt.Figure:
    """Accuracy and macro-F1 per run, horizontal bars with 95% bootstrap intervals, best at the top."""
    names = [_short(n) for n in table["name"]]
    height = 1.2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(10, max(height, 3)), constrained_layout=True)
    positions = np.arange(len(names))
    bar = 0.38
    for offset, metric, label, colour in ((-bar / 2, "accuracy", "accuracy", "#4C72B0"),
                                          (bar / 2, "macro_f1", "macro-F1", "#DD8452")):
        values = table[metric].to_numpy(dtype=float)
        low = table.get(f"{metric}_low", values).to_numpy(dtype=float)
        high = table.get(f"{metric}_high", values).to_numpy(dtype=float)
        errors = np.vstack([values - low, high - values])
        ax.barh(positions + offset, values, height=bar, xerr=np.nan_to_num(errors), capsize=3, label=label,
                color=colour)
        for y, value, top in zip(positions + offset, values, np.nan_to_num(high, nan=0.0)):
            ax.text(min(max(value, top) + 0.012, 0.95), y, f"{value:.3f}", va="center", fontsize=8)
    ax.set_yticks(positions, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{split} score (error bars: 95% bootstrap interval over {split} images)")
    ax.set_title(f"Runs compared on the {split} split")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def per_class_f1_figure(names: Sequence[str], per_class: Sequence[dict], split: str) -> plt.Figure:
    """Heatmap of per-class F1: runs down, emotions across."""
    classes = list(dict.fromkeys(c for scores in per_class for c in scores))
    values = np.array([[scores.get(c, {}).get("f1", np.nan) for c in classes] for scores in per_class])
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 4.0, 0.42 * len(names) + 1.9), constrained_layout=True)
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if value > 0.6 else "white")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), [_short(n) for n in names])
    fig.colorbar(image, ax=ax, label="F1", fraction=0.05)
    ax.set_title(f"Per-class F1 on the {split} split")
    return fig


MAX_CONFUSION_PANELS = 16


def confusion_grid_figure(names: Sequence[str], matrices: Sequence[np.ndarray], classes: Sequence[Sequence[str]],
                          split: str) -> plt.Figure:
    """Row-normalised confusion matrices side by side, one panel per run (the first 16 in the given order).

    Plain imshow, not seaborn: seaborn redraws the whole figure for every panel, which took
    minutes for 50 runs.
    """
    shown = min(len(names), MAX_CONFUSION_PANELS)
    columns = min(4, shown)
    rows = int(np.ceil(shown / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.8 * rows), squeeze=False)
    annotate = shown <= 8
    for ax, name, matrix, labels in zip(axes.flat, names, matrices, classes):
        normalised = row_normalise(matrix)
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        if annotate:
            for (row, column), value in np.ndenumerate(normalised):
                ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(_short(name, 34), fontsize=10)
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("true", fontsize=9)
    for ax in list(axes.flat)[shown:]:
        ax.axis("off")
    title = f"Row-normalised confusion matrices, {split} split (diagonal = recall)"
    if shown < len(names):
        title += f": the first {shown} of {len(names)} runs"
    height = 3.8 * rows
    fig.suptitle(title, fontsize=13, y=1 - 0.15 / height)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.85 / height, top=1 - 0.75 / height, wspace=0.45, hspace=0.55)
    return fig


def validation_curves_figure(curves: Sequence[tuple[str, object]]) -> plt.Figure:
    """Validation accuracy per epoch of every deep run, overlaid."""
    fig, ax = plt.subplots(figsize=(11, 5.5), constrained_layout=True)
    palette = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(curves), 2)))
    for colour, (name, history) in zip(palette, curves):
        ax.plot(history["epoch"], history["val_accuracy"], marker=".", label=_short(name), color=colour)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig
