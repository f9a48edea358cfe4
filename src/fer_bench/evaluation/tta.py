"""Test-time augmentation: the views of each face whose probabilities are averaged."""

from __future__ import annotations

import numpy as np

from fer_bench import IMAGE_SIDE
from fer_bench.config import TTA_MODES
from fer_bench.errors import FerBenchError
from fer_bench.evaluation.metrics import classification_metrics
from fer_bench.evaluation.predictors import Predictor

CROP_SIDE = 42  # ten-crop takes 42x42 of the 48x48 face, about 88% of its side


def tta_views(images: np.ndarray, mode: str) -> list[np.ndarray]:
    """The views of each face averaged by test-time augmentation (each still uint8 48x48)."""
    if mode not in TTA_MODES:
        raise FerBenchError(f"--tta must be one of {list(TTA_MODES)}; got {mode!r}")
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images[:, :, ::-1]]
    from scipy.ndimage import zoom

    margin = IMAGE_SIDE - CROP_SIDE
    offsets = [(0, 0), (0, margin), (margin, 0), (margin, margin), (margin // 2, margin // 2)]
    views = []
    for top, left in offsets:
        crop = images[:, top:top + CROP_SIDE, left:left + CROP_SIDE].astype(np.float32)
        resized = zoom(crop, (1, IMAGE_SIDE / CROP_SIDE, IMAGE_SIDE / CROP_SIDE), order=1)
        view = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
        views.extend([view, view[:, :, ::-1]])
    return views


def predict_with_tta(predictor: Predictor, images: np.ndarray, mode: str) -> np.ndarray:
    """Class probabilities averaged over the test-time views."""
    return np.mean([predictor.predict_proba(view) for view in tta_views(images, mode)], axis=0)


def tta_scores(predictor: Predictor, images: np.ndarray, labels: np.ndarray, mode: str) -> dict:
    """The `test_tta` record: the mode and the metrics of the TTA-averaged predictions.

    Kept beside the plain scores, never in their place: selection stays on plain validation accuracy.
    """
    probabilities = predict_with_tta(predictor, images, mode)
    return {"mode": mode, **classification_metrics(labels, probabilities.argmax(axis=1), predictor.classes)}
