"""Figures from numbers: each function takes arrays or rows and returns a matplotlib Figure (it writes nothing)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from fer_bench.evaluate import row_normalise  # noqa: E402


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> plt.Figure:
    """Counts and row-normalised confusion matrices side by side."""
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
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=13)
    return fig
