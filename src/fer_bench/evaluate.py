"""Metrics as pure functions: label arrays in, numbers out. No files, no plots, no TensorFlow."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro/weighted F1, balanced accuracy and per-class precision/recall/F1/support."""
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return {"count": 0}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    # balanced accuracy over the classes present, as scikit-learn defines it
    return {
        "count": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows of zeros stay zero)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)


def report_text(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> str:
    return classification_report(y_true, y_pred, labels=list(range(len(classes))), target_names=list(classes),
                                 digits=4, zero_division=0)
