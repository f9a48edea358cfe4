"""Predictors: a trained model behind one surface (uint8 faces in, class probabilities out), loaded from a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench import EMOTIONS
from fer_bench.data.pipeline import EVALUATION_BATCH, evaluation_dataset
from fer_bench.data.sources import IMAGE_SUFFIXES
from fer_bench.errors import RunError
from fer_bench.files import METRICS_FILE, MODEL_FILE

# The model that ships inside the package, laid out as a run folder (model.keras, metrics.json,
# config.yaml): `predict` and `evaluate` use it when no run is given. README says how it was trained.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "shipped"


@dataclass
class Predictor:
    """A trained model behind one surface: uint8 faces (n, 48, 48) in, class probabilities (n, k) out."""

    classes: tuple[str, ...]
    predict_proba: Callable[[np.ndarray], np.ndarray]
    source: str


def keras_predictor(model: Any, classes: tuple[str, ...], source: str = "in memory") -> Predictor:
    from fer_bench.evaluation.predictors import predict_probabilities

    return Predictor(classes, lambda images: predict_probabilities(model, images), source)


def _load_keras(path: Path, classes: tuple[str, ...] | None) -> Predictor:
    from fer_bench.models.saved import load_model

    model = load_model(path)
    outputs = int(model.output_shape[-1])
    if classes is None:
        if outputs != len(EMOTIONS):
            raise RunError(f"{path} has {outputs} outputs; pass its run directory so the class names are known")
        classes = EMOTIONS
    return keras_predictor(model, classes, str(path))


def _load_joblib(path: Path, classes: tuple[str, ...] | None) -> Predictor:
    from fer_bench.models.features import load_feature_model

    model = load_feature_model(path)
    return Predictor(model.classes, model.predict_proba, str(path))


# Model files a run may hold, and how to load each.
PREDICTOR_LOADERS: dict[str, Callable[[Path, tuple[str, ...] | None], Predictor]] = {
    MODEL_FILE: _load_keras,
    "model.joblib": _load_joblib,
}


def is_model_source(path: Path) -> bool:
    """Whether a path names a model (a run folder or a model file) rather than photos.

    A path that does not exist counts as a model unless it looks like an image, so that a mistyped
    run folder is reported as such instead of as a missing photo.
    """
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in PREDICTOR_LOADERS) or (path / METRICS_FILE).is_file()
    if path.is_file():
        return path.suffix in {Path(name).suffix for name in PREDICTOR_LOADERS}
    return path.suffix.lower() not in IMAGE_SUFFIXES


def load_predictor(run_or_model: Path | str) -> Predictor:
    """A predictor from a run directory (its model file and class names) or from a model file."""
    path = Path(run_or_model)
    if path.is_dir():
        model_file = next((path / name for name in PREDICTOR_LOADERS if (path / name).is_file()), None)
        if model_file is None:
            raise RunError(f"{path} holds no model file ({' or '.join(PREDICTOR_LOADERS)})")
    elif path.is_file():
        model_file = path
    else:
        raise RunError(f"no run directory or model file at {path}")
    loader = PREDICTOR_LOADERS.get(model_file.name) or PREDICTOR_LOADERS.get("model" + model_file.suffix)
    if loader is None:
        raise RunError(f"{model_file}: unknown model file type; expected {' or '.join(PREDICTOR_LOADERS)}")
    metrics_file = model_file.parent / METRICS_FILE
    classes = tuple(json.loads(metrics_file.read_text())["classes"]) if metrics_file.is_file() else None
    return loader(model_file, classes)


def predict_probabilities(model: Any, images: np.ndarray, batch_size: int = EVALUATION_BATCH) -> np.ndarray:
    """Class probabilities (n, k) for uint8 images (n, 48, 48)."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    dataset = evaluation_dataset(images, None, 0, batch_size)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
