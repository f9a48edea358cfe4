"""Figures from numbers: each function takes arrays or rows and returns a matplotlib Figure (it writes nothing)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fer_bench.evaluation.metrics import row_normalise  # noqa: E402


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> plt.Figure:
    """Counts and row-normalised confusion matrices side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), constrained_layout=True)
    _confusion_panel(axes[0], matrix, classes, "{:d}", vmax=max(int(matrix.max()), 1), aspect="auto")
    image = _confusion_panel(axes[1], row_normalise(matrix), classes, "{:.2f}", vmax=1, aspect="auto")
    fig.colorbar(image, ax=axes[1], label="fraction of the true class")
    for ax, subtitle in zip(axes, ("counts", "row-normalised (recall on the diagonal)")):
        ax.set_title(subtitle)
    fig.suptitle(title, fontsize=14)
    return fig


def _confusion_panel(ax: plt.Axes, values: np.ndarray, classes: Sequence[str], number: str | None, vmax: float,
                     fontsize: float | None = None, aspect: str = "equal") -> AxesImage:
    """One confusion matrix, true classes down, predicted across, each cell written in `number` (None: unwritten).

    Plain imshow, not seaborn: seaborn redraws the whole figure for each panel it adds (to check whether its
    tick labels overlap), which cost every run a second and a 50-run comparison minutes.
    """
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, aspect=aspect)  # NaN rows (a class with no images) stay blank
    for row in np.flatnonzero(np.isnan(values).all(axis=1)):
        ax.text((len(classes) - 1) / 2, row, "no images", ha="center", va="center", fontsize=fontsize or 7, color="grey")
    if number is not None:
        for (row, column), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(column, row, number.format(value.item()), ha="center", va="center",
                        fontsize=fontsize and fontsize - 1,
                        color="white" if value > 0.6 * vmax else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(classes)), classes, fontsize=fontsize)
    ax.set_xlabel("predicted", fontsize=fontsize and fontsize + 1)
    ax.set_ylabel("true", fontsize=fontsize and fontsize + 1)
    return image


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
        _honest_y_range(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=13)
    return fig


MIN_RELATIVE_SPAN = 0.02  # a y-axis spans at least 2% of its largest value (0.02 for values below 1)


def _honest_y_range(ax: plt.Axes) -> None:
    """Plain tick labels, no offset, and a floor on the span, so a flat line looks flat.

    Left alone, matplotlib stretches a change of 1e-5 over the whole axis and writes the value
    as an offset (+1.946), which reads as a steep drop.
    """
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if not len(values):
        return
    low, high = float(values.min()), float(values.max())
    least = MIN_RELATIVE_SPAN * max(1.0, abs(low), abs(high))
    if high - low < least:
        middle = (low + high) / 2
        ax.set_ylim(middle - least / 2, middle + least / 2)


def _wrap(name: str, width: int = 40) -> str:
    """A run name in full, broken after '/', '-' or '_' into lines of about `width` characters."""
    lines, line = [], ""
    for token in re.split(r"(?<=[/_-])", name):
        while len(token) > width:  # a long stretch with no break point
            if line:
                lines.append(line)
                line = ""
            lines.append(token[:width])
            token = token[width:]
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = ""
        line += token
    return "\n".join([*lines, line] if line else lines)


OTHER_DATA = "(other test images)"


def _label(name: str, other_data: bool) -> str:
    return _wrap(name) + (f"\n{OTHER_DATA}" if other_data else "")


def _of_total(other_data: Sequence[bool], total: int | None) -> str:
    """What part of the table a chart draws: its first ranked rows, then those scored on other test images."""
    shown, elsewhere = len(other_data), int(sum(other_data))
    if not total or total <= shown:
        return ""
    part = (f"the first {shown} of {total} rows" if not elsewhere else
            f"the first {shown - elsewhere} ranked rows and {elsewhere} on other test images, of {total} rows")
    return f"{part}; every row is in comparison.csv"


def comparison_figure(table, split: str, seed_scores: dict[str, dict[str, np.ndarray]] | None = None,
                      total: int | None = None) -> plt.Figure:
    """Accuracy and macro-F1 per row, horizontal bars with 95% intervals, best at the top.

    A single run's interval is the bootstrap over the split's images; a group's (a row whose name is in
    `seed_scores`) is Student's t over its seeds, and each seed's score is a dot on the bar. Rows made on
    other images (table column `data` = DIFFERENT) come last, below a line, hatched and labelled: their
    scores are not comparable with the rest.
    """
    seed_scores = seed_scores or {}
    other = (table["data"] == "DIFFERENT").to_numpy() if "data" in table else np.zeros(len(table), bool)
    names = [_label(n, o) for n, o in zip(table["name"], other)]
    lines = [n.count("\n") + 1 for n in names]
    positions = np.cumsum([0.0] + [0.35 + 0.2 * max(a, b) for a, b in zip(lines, lines[1:])])
    fig, ax = plt.subplots(figsize=(10, max(1.4 + positions[-1] * 1.05 if len(names) else 0, 3)), constrained_layout=True)
    bar = 0.17
    for offset, metric, label, colour in ((-bar / 2, "accuracy", "accuracy", "#4C72B0"),
                                          (bar / 2, "macro_f1", "macro-F1", "#DD8452")):
        values = table[metric].to_numpy(dtype=float)
        low = table.get(f"{metric}_low", values).to_numpy(dtype=float)
        high = table.get(f"{metric}_high", values).to_numpy(dtype=float)
        errors = np.clip(np.vstack([values - low, high - values]), 0, None)
        bars = ax.barh(positions + offset, values, height=bar, xerr=np.nan_to_num(errors), capsize=3, label=label,
                       color=colour)
        for patch, is_other in zip(bars, other):
            if is_other:
                patch.set_hatch("///")
                patch.set_alpha(0.45)
        for y, name, value, top in zip(positions + offset, table["name"], values, np.nan_to_num(high, nan=0.0)):
            seeds = seed_scores.get(name, {}).get(metric)
            if seeds is not None:
                ax.scatter(seeds, np.full(len(seeds), y), s=14, color="black", zorder=3, linewidths=0,
                           label="one seed" if metric == "accuracy" and "one seed" not in ax.get_legend_handles_labels()[1] else None)
                top = max(top, float(np.nanmax(seeds)))
            ax.text(min(max(value, top) + 0.012, 0.95), y, f"{value:.3f}", va="center", fontsize=8)
    if other.any() and not other.all():
        first_other = int(np.argmax(other))
        boundary = (positions[first_other - 1] + positions[first_other]) / 2
        ax.axhline(boundary, color="black", linewidth=1, linestyle="--")
        ax.text(0.995, boundary, "below: scored on other test images, not comparable  ", ha="right", va="bottom", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(positions, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    if seed_scores:
        # Two lines: on one, the label ran past the figure's edge.
        ax.set_xlabel(f"{split} score; error bars: 95% interval, over seeds for a group (its mean; dots: its seeds),\n"
                      f"over {split} images for a single run")
    else:
        ax.set_xlabel(f"{split} score (error bars: 95% bootstrap interval over {split} images)")
    extent = _of_total(other, total)
    ax.set_title(f"Runs compared on the {split} split" + (f"\n({extent})" if extent else ""), fontsize=10 if total else None)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def per_class_f1_figure(names: Sequence[str], per_class: Sequence[dict], split: str,
                        other_data: Sequence[bool] | None = None, total: int | None = None) -> plt.Figure:
    """Heatmap of per-class F1: runs down, emotions across; a group's cell is its mean over seeds, ± the SD
    (`f1_sd`); runs on other data labelled as such."""
    other_data = list(other_data) if other_data is not None else [False] * len(names)
    classes = list(dict.fromkeys(c for scores in per_class for c in scores))
    values = np.array([[scores.get(c, {}).get("f1", np.nan) for c in classes] for scores in per_class])
    labels = [_label(n, o) for n, o in zip(names, other_data)]
    rows = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 5.0, 0.3 * rows + 0.2 * len(names) + 1.9),
                           constrained_layout=True)
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    spread = np.array([[scores.get(c, {}).get("f1_sd", np.nan) for c in classes] for scores in per_class])
    for (row, column), value in np.ndenumerate(values):
        if not np.isnan(value):
            text = f"{value:.2f}" + (f"\n±{spread[row, column]:.2f}" if not np.isnan(spread[row, column]) else "")
            ax.text(column, row, text, ha="center", va="center", fontsize=9 if "\n" not in text else 7.5,
                    color="black" if value > 0.6 else "white")
    if any(other_data) and not all(other_data):
        ax.axhline(int(np.argmax(other_data)) - 0.5, color="white", linewidth=3)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    fig.colorbar(image, ax=ax, label="F1", fraction=0.05)
    extent = _of_total(other_data, total)
    ax.set_title(f"Per-class F1 on the {split} split" + (" (groups: mean ± SD over seeds)" if not np.isnan(spread).all() else "")
                 + (f"\n{extent}" if extent else ""))
    return fig


MAX_CONFUSION_PANELS = 16


def confusion_grid_figure(names: Sequence[str], matrices: Sequence[np.ndarray], classes: Sequence[Sequence[str]],
                          split: str, other_data: Sequence[bool] | None = None, total: int | None = None) -> plt.Figure:
    """Row-normalised confusion matrices side by side, one panel per run (the first 16 in the given order)."""
    shown = min(len(names), MAX_CONFUSION_PANELS)
    columns = min(4, shown)
    rows = int(np.ceil(shown / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.8 * rows), squeeze=False)
    number = "{:.2f}" if shown <= 8 else None
    other_data = list(other_data) if other_data is not None else [False] * len(names)
    image = None
    for ax, name, matrix, labels, other in zip(axes.flat, names, matrices, classes, other_data):
        image = _confusion_panel(ax, row_normalise(matrix), labels, number, vmax=1, fontsize=8)
        ax.set_title(_label(name, other), fontsize=9)
    for ax in list(axes.flat)[shown:]:
        ax.axis("off")
    title = f"Row-normalised confusion matrices, {split} split (diagonal = recall)"
    total = max(total or 0, len(names))
    if shown < total:
        title += f": the first {shown} of {total} rows"
    height = 3.8 * rows
    fig.suptitle(title, fontsize=13, y=1 - 0.15 / height)
    bottom, top, right = 0.85 / height, 1 - 0.75 / height, 1 - 0.9 / (3.8 * columns)
    fig.subplots_adjust(left=0.08, right=right, bottom=bottom, top=top, wspace=0.45, hspace=0.55)
    if image is not None:
        scale = fig.add_axes((right + 0.25 / (3.8 * columns), bottom, 0.12 / (3.8 * columns), top - bottom))
        fig.colorbar(image, cax=scale, label="fraction of the true class")
    return fig


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x")


def _seed_curves(histories: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, min, max) of validation accuracy over the seeds that reached each epoch."""
    table: dict[int, list[float]] = {}
    for history in histories:
        for epoch, value in zip(np.asarray(history["epoch"]), np.asarray(history["val_accuracy"], dtype=float)):
            table.setdefault(int(epoch), []).append(value)
    epochs = np.array(sorted(table))
    values = [np.array(table[e]) for e in epochs]
    return (epochs, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
            np.array([v.max() for v in values]))


def validation_curves_figure(curves: Sequence[tuple[str, object]], other_data: Sequence[bool] | None = None,
                             size: tuple[float, float] = (12, 5.5)) -> plt.Figure:
    """Validation accuracy per epoch of every deep run, overlaid; a group's (a list of histories) is the mean
    over its seeds with a min-max band.

    Each line differs from the others in colour, line style and marker, so two runs with the same
    curve both stay visible; the legend gives each line's best epoch and marks runs on other data.
    """
    other_data = list(other_data) if other_data is not None else [False] * len(curves)
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    palette = plt.get_cmap("tab10")(np.arange(10))
    for index, ((name, history), other) in enumerate(zip(curves, other_data)):
        seeds = len(history) if isinstance(history, list) else 1
        if isinstance(history, list) and seeds > 1:
            epochs, accuracy, low, high = _seed_curves(history)
            ax.fill_between(epochs, low, high, color=palette[index % 10], alpha=0.18, linewidth=0)
        else:
            history = history[0] if isinstance(history, list) else history
            epochs, accuracy = np.asarray(history["epoch"]), np.asarray(history["val_accuracy"], dtype=float)
        best = int(np.nanargmax(accuracy)) if np.isfinite(accuracy).any() else 0
        step = max(len(epochs) // 12, 2)
        # Each line is drawn thinner than the one before it, over it, and its markers sit at other epochs:
        # a run whose curve is the very same as an earlier one's still shows that earlier run around it.
        width = 1.4 + 3.0 * (1 - index / max(len(curves) - 1, 1))
        ax.plot(epochs, accuracy, color=palette[index % 10], linestyle=LINE_STYLES[(index // 10) % len(LINE_STYLES)],
                marker=MARKERS[index % len(MARKERS)], markersize=3 + width,
                markevery=((index % step) % max(len(epochs), 1), step),  # never past the end: a 1-epoch run keeps its dot
                linewidth=width, alpha=0.9,
                label=f"{_label(name, other)}\n  best {accuracy[best]:.3f} at epoch {epochs[best]}"
                      + (f"\n  mean of {seeds} seeds (of those still training at an epoch), band min-max" if seeds > 1 else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig
