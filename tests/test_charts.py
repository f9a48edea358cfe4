"""What the charts show: checked on the figures themselves, before they become pixels."""

import numpy as np
import pandas as pd

from fer_bench.evaluation import charts

LONG = "reference/ensemble-tuned-cnn-svm-hog-with-a-long-tail"


def table(rows):
    frame = pd.DataFrame(rows, columns=["name", "accuracy", "macro_f1", "data"])
    for metric in ("accuracy", "macro_f1"):
        frame[f"{metric}_low"], frame[f"{metric}_high"] = frame[metric] - 0.01, frame[metric] + 0.01
    return frame


def tick_labels(ax):
    return [label.get_text() for label in ax.get_yticklabels()]


def test_comparison_shows_full_names_and_marks_runs_on_other_data():
    frame = table([(LONG, 0.68, 0.63, "same"), ("cpu-tuned_cnn", 0.66, 0.58, "same"), ("tiny", 0.9, 0.9, "DIFFERENT")])
    ax = charts.comparison_figure(frame, "test").axes[0]
    labels = tick_labels(ax)
    assert labels[0].replace("\n", "") == LONG  # wrapped, never cut
    assert labels[2] == f"tiny\n{charts.OTHER_DATA}" and charts.OTHER_DATA not in labels[0] + labels[1]
    hatched = [bool(patch.get_hatch()) for patch in ax.patches]
    assert hatched == [False, False, True] * 2  # accuracy bars, then macro-F1 bars
    assert any("not comparable" in text.get_text() for text in ax.texts)


def test_per_class_f1_and_confusion_grid_mark_runs_on_other_data():
    per_class = [{"happy": {"f1": 0.8}}, {"happy": {"f1": 0.9}}]
    ax = charts.per_class_f1_figure([LONG, "tiny"], per_class, "test", [False, True]).axes[0]
    assert [label.replace("\n", "") for label in tick_labels(ax)] == [LONG, f"tiny{charts.OTHER_DATA}"]
    grid = charts.confusion_grid_figure([LONG, "tiny"], [np.eye(2, dtype=int)] * 2, [("happy", "sad")] * 2, "test",
                                        [False, True])
    titles = [ax.get_title() for ax in grid.axes if ax.get_title()]
    assert titles[0].replace("\n", "") == LONG and titles[1].endswith(charts.OTHER_DATA)


def test_identical_validation_curves_stay_distinguishable():
    history = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.4, 0.5, 0.55]})
    ax = charts.validation_curves_figure([(name, history) for name in ("a", "b", "c")]).axes[0]
    styles = {(tuple(line.get_color()), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()}
    assert len(styles) == 3
    markers = {line.get_marker() for line in ax.get_lines()}
    assert len(markers) == 3  # even where colours could not be told apart
    assert "best 0.550 at epoch 3" in ax.get_legend().get_texts()[0].get_text()


def test_a_flat_curve_is_drawn_flat_with_plain_tick_labels():
    history = [{"epoch": e, "phase": "train", "loss": 1.94591 + 1e-6 * e, "val_loss": 1.94592,
                "accuracy": 0.25, "val_accuracy": 0.25} for e in range(1, 6)]
    figure = charts.curves_figure(history, "flat")
    figure.canvas.draw()
    for ax, level in zip(figure.axes, (1.9459, 0.25)):
        low, high = ax.get_ylim()
        assert high - low >= charts.MIN_RELATIVE_SPAN * max(1.0, level) * 0.999
        assert ax.yaxis.get_offset_text().get_text() == ""
    loss_ticks = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert any(text.startswith("1.9") for text in loss_ticks), loss_ticks
