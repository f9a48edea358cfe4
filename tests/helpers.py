"""Checks on a finished run directory: every artifact exists and agrees with the others."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

EVALUATION_FILES = ("config.yaml", "metrics.json", "classification_report.txt", "confusion_matrix.csv",
                    "confusion_matrix.png", "predictions.csv", "environment.json", "status.json")
TRAINING_FILES = ("history.csv", "curves.png", "log.txt")


def check_run(path: Path, classes: tuple[str, ...], model_file: str | None = "model.keras") -> dict:
    """Assert the run's artifacts are complete and consistent; return its metrics.

    `model_file=None` is a run that trained nothing itself (an ensemble).
    """
    trained_here = model_file == "model.keras"
    expected = EVALUATION_FILES + ((model_file,) if model_file else ()) + (TRAINING_FILES if trained_here else ())
    for name in expected:
        assert (path / name).is_file(), f"{name} missing from {path}"
    status = json.loads((path / "status.json").read_text())
    assert status["state"] == "finished"
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["classes"] == list(classes)
    for split in ("validation", "test"):
        for key in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"):
            assert 0.0 <= metrics[split][key] <= 1.0
        assert set(metrics[split]["per_class"]) == set(classes)
    assert metrics["test_unique"]["count"] <= metrics["test"]["count"]

    all_predictions = pd.read_csv(path / "predictions.csv")
    assert all_predictions["split"].value_counts().to_dict() == {
        s: metrics[s]["count"] for s in ("validation", "test")}
    predictions = all_predictions[all_predictions["split"] == "test"]
    probabilities = predictions[[f"p_{c}" for c in classes]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (predictions["true"] == predictions["predicted"]).mean() == pytest_approx(metrics["test"]["accuracy"])
    assert (np.array(classes)[probabilities.argmax(axis=1)] == predictions["predicted"]).all()

    matrix = pd.read_csv(path / "confusion_matrix.csv")
    assert matrix["true"].tolist() == list(classes)
    counts = matrix[list(classes)].to_numpy()
    assert counts.sum() == len(predictions)
    assert np.trace(counts) == int((predictions["true"] == predictions["predicted"]).sum())

    if trained_here:
        history = pd.read_csv(path / "history.csv")
        assert len(history) == metrics["epochs_run"] >= 1
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history.columns)

    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["name"] == path.name
    environment = json.loads((path / "environment.json").read_text())
    assert {"python", "packages", "started", "finished"} <= set(environment)
    if model_file == "model.keras":
        assert environment["keras_backend"] in ("tensorflow", "jax", "torch")
        with zipfile.ZipFile(path / "model.keras") as saved:
            with h5py.File(io.BytesIO(saved.read("model.weights.h5"))) as weights:
                assert "optimizer" not in weights, "a run keeps the network, not the optimizer's state"
    if model_file:
        assert "log.txt" in {p.name for p in path.iterdir()}
        assert environment["data"]["fingerprint"] == metrics["data_fingerprint"]
        assert environment["data"]["split_sizes"]["test"] == len(predictions)
        assert {"seconds", "seed"} <= set(environment)
    report = (path / "classification_report.txt").read_text()
    assert all(c in report for c in classes)
    return metrics


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, abs=1e-9)
