"""Metrics as pure functions: label arrays in, numbers out. No files, no plots, no TensorFlow."""

from __future__ import annotations

import functools

import warnings
from dataclasses import dataclass

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro/weighted F1, balanced accuracy and per-class precision/recall/F1/support.

    Macro-F1 averages over the classes present in `y_true`, as balanced accuracy does: a class
    with no test images (neutral on a 6-class dataset) has no F1 to count.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support  # here: compare needs none

    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return {"count": 0}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "count": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present_labels(y_true), average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
    }


def present_labels(y_true: np.ndarray) -> list[int]:
    """The class indices that occur in the true labels: what macro averages run over."""
    return sorted(int(label) for label in np.unique(y_true))


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        # Expected when a model predicts classes a (cross-dataset) test set lacks.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; a class with no images has no fractions, so its row is NaN (drawn blank)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.full(matrix.shape, np.nan), where=totals > 0)


def report_text(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> str:
    from sklearn.metrics import classification_report

    present = present_labels(y_true)
    report = classification_report(y_true, y_pred, labels=present, target_names=[classes[i] for i in present],
                                   digits=4, zero_division=0)
    absent = [classes[i] for i in range(len(classes)) if i not in present]
    if absent:
        report += f"\nno true images of {', '.join(absent)}: left out of the averages above\n"
    return report


@dataclass
class SplitPredictions:
    """A model's class probabilities for one split, with what is needed to score them."""

    names: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    duplicate: np.ndarray | None  # True where the image has a pixel-identical copy in train; None if unknown

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def score_splits(predictions: dict[str, SplitPredictions], classes: tuple[str, ...]) -> dict:
    """Metrics per split, and per split on the images with no pixel-identical copy in train."""
    metrics = {}
    for split, pred in predictions.items():
        metrics[split] = classification_metrics(pred.labels, pred.predicted, classes)
        if pred.duplicate is not None:
            unique = ~pred.duplicate
            metrics[f"{split}_unique"] = classification_metrics(pred.labels[unique], pred.predicted[unique], classes)
    return metrics


def bootstrap_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, num_resamples: int = 1000,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 over `num_resamples` bootstrap resamples of the images.

    Resampling n images with replacement puts a multinomial(n, cell shares) count in each
    confusion-matrix cell, so the resampled matrices are drawn directly: the same distribution
    as resampling images, at a fraction of the cost.
    """
    n = len(y_true)
    cells = np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2)
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=num_resamples)
    matrices = draws.reshape(num_resamples, num_classes, num_classes)
    true_positive = np.diagonal(matrices, axis1=1, axis2=2).astype(float)
    support, predicted = matrices.sum(axis=2), matrices.sum(axis=1)
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    # macro-F1 over the classes present in y_true, as classification_metrics does
    present = present_labels(y_true)
    return {"accuracy": true_positive.sum(axis=1) / n, "macro_f1": f1[:, present].mean(axis=1)}


def confidence_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired predictions: (A right & B wrong, A wrong & B right, two-sided p)."""
    from scipy.special import bdtr  # the binomial CDF as a ufunc: scipy.stats.binom.cdf costs 3 ms a call

    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    if a_only + b_only == 0:
        return a_only, b_only, 1.0
    # Two-sided exact binomial test at p = 0.5 (symmetric, so twice the smaller tail).
    return a_only, b_only, float(min(1.0, 2 * bdtr(min(a_only, b_only), a_only + b_only, 0.5)))


def holm_adjusted(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjustment: each p-value made to hold its level over all the tests made together."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values, kind="stable")
    tests = len(p_values)
    stepped = np.maximum.accumulate((tests - np.arange(tests)) * p_values[order])
    adjusted = np.empty(tests)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def single_class_warning(predicted: np.ndarray, classes: tuple[str, ...] | list[str], split: str) -> str | None:
    """A warning when a model gives one class to every image: it has learnt nothing but that class."""
    values = np.unique(predicted)
    if len(predicted) < 2 or len(values) != 1:
        return None
    return (f"warning: the model predicts {classes[int(values[0])]!r} for every one of the {len(predicted)} {split} "
            "images: it has not learnt to tell the classes apart (see its training curves)")


# --- across seeds: the unit is a training run, not a test image -----------------------------------------

MIN_SEEDS = 3  # fewer per group, and no test across seeds is made: its answer would be noise


def seed_interval(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of per-seed scores (NaN for fewer than two)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    mean, error = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
    half = float(_t_quantile((1 + level) / 2, len(values) - 1) * error)
    return float(mean - half), float(mean + half)


@functools.lru_cache(maxsize=None)
def _t_quantile(probability: float, freedom: int) -> float:
    """Student's t quantile, once per number of seeds: a comparison of 200 groups asks for it 1,200 times."""
    from scipy import stats

    return float(stats.t.ppf(probability, freedom))


@dataclass
class SeedTest:
    """A test of two configurations whose unit is the seed: `a` and `b` hold one score per seed."""

    kind: str  # "paired t over seeds" | "Welch t over seeds"
    p_value: float
    effect_size: float  # Cohen's d (paired: the mean difference over the differences' SD)
    p_improvement: float  # P(A > B) over pairs of seeds (paired: over the shared seeds); ties count half


def seed_test(a: np.ndarray, b: np.ndarray, paired: bool) -> SeedTest:
    """Welch's t-test, or the paired t-test where both ran the same seeds (a[i] and b[i] share a seed)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no spread at all: handled below
        if paired:
            differences = a - b
            spread = differences.std(ddof=1)
            p_value = float(stats.ttest_rel(a, b).pvalue)
            pairs = differences
            kind = "paired t over seeds"
        else:
            spread = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
            p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
            pairs = (a[:, None] - b[None, :]).ravel()
            kind = "Welch t over seeds"
    difference = float(np.mean(a) - np.mean(b))
    if np.isnan(p_value):  # every seed scored the same in both: nothing differs
        p_value = 1.0
    effect = difference / spread if spread > 0 else (0.0 if difference == 0 else float(np.sign(difference)) * np.inf)
    improvement = float(np.mean((pairs > 0) + 0.5 * (pairs == 0)))
    return SeedTest(kind, p_value, float(effect), improvement)
