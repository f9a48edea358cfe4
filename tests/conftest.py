"""Shared fixtures: a tiny synthetic FER-shaped dataset, and the real one where it is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_bench import EMOTIONS

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("FER_BENCH_REAL_DATA", REPO.parent / "shared" / "fer2013"))
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def synthetic_face(label: int, index: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 grey image whose class shows as a bright horizontal band, over noise."""
    image = rng.integers(0, 90, size=(48, 48), dtype=np.uint8)
    top = 3 + label * 6
    image[top:top + 4, 4 + index % 5:44] = 230
    return image


def make_fer_folder(root: Path, counts: tuple[int, int, int] = (8, 3, 3), classes=EMOTIONS, seed: int = 0) -> Path:
    """Kaggle layout: train/<class>/Training_*.png, test/<class>/PublicTest_* and PrivateTest_*."""
    rng = np.random.default_rng(seed)
    serial = 0
    for label, emotion in enumerate(EMOTIONS):
        if emotion not in classes:
            continue
        for group, prefix, count in (("train", "Training", counts[0]), ("test", "PublicTest", counts[1]),
                                     ("test", "PrivateTest", counts[2])):
            folder = root / group / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                serial += 1
                Image.fromarray(synthetic_face(label, i + serial, rng)).save(folder / f"{prefix}_{serial:05d}.png")
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes into its own cache, never the user's."""
    monkeypatch.setenv("FER_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def fer_folder(tmp_path_factory) -> Path:
    return make_fer_folder(tmp_path_factory.mktemp("fer"))


@pytest.fixture(scope="session")
def smoke_data() -> Path:
    """The real FER-2013 where it is present (CI has it beside the checkout), else a synthetic stand-in."""
    if (REAL_DATA / "train").is_dir():
        return REAL_DATA
    import tempfile

    return make_fer_folder(Path(tempfile.mkdtemp(prefix="fer-smoke-")), counts=(6, 3, 3))


def tiny_overrides(config: Path) -> list[str]:
    """Make any config train in seconds: a few images per class, one epoch, small inputs, no downloads."""
    overrides = ["data.max_per_class=6", "train.epochs=1", "train.batch_size=16", "train.early_stopping_patience=null"]
    import yaml

    raw = yaml.safe_load(config.read_text())
    if raw.get("model", {}).get("weights") is not None:
        overrides.append("model.weights=null")
    if raw.get("data", {}).get("input_size", 48) > 48:
        overrides.append("data.input_size=32")
    if raw.get("model", {}).get("fine_tune"):
        overrides.append("model.fine_tune.head_epochs=1")
    if (raw.get("features") or {}).get("cnn_config"):
        overrides.append("features.cnn_overrides=['train.epochs=1', 'model.params.filters=[8, 16]']")
    if raw.get("features"):
        overrides.append("search.max_samples=null")
    return overrides


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, fer_folder) -> Path:
    """Two small finished runs on the synthetic set (3 classes), shared by the compare/predict/ensemble tests."""
    from fer_bench.runner import load_experiment, run_experiment

    results = tmp_path_factory.mktemp("results")
    overrides = ["data.classes=[angry, happy, surprise]", "train.epochs=3", "train.batch_size=8",
                 "model.params.filters=[8, 16]", "model.params.dense_units=16", "model.params.dropout=0.1"]
    for config, seed in (("custom_cnn", 1), ("custom_cnn_aug", 2)):
        exp = load_experiment(REPO / "configs" / f"{config}.yaml", overrides + [f"train.seed={seed}"])
        run_experiment(exp, data_dir=fer_folder, results_dir=results)
    return results
