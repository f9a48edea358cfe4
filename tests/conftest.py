"""Shared fixtures: a tiny synthetic FER-shaped dataset, and the real one where it is present."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_bench import EMOTIONS

# Two test processes, the JAX worker and the runs they start share the cores: one thread each in TensorFlow's and
# OpenMP's pools (set before anything loads TensorFlow, and inherited by every process started here), so that no
# pool waits spinning on a core that another process needs. A sweep's workers still get their own share.
for _pool in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("FER_BENCH_REAL_DATA", REPO.parent / "shared" / "fer2013"))
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def config_id(config: Path) -> str:
    return str(config.relative_to(REPO / "configs"))


# Configs that change only the settings of a model family and a way of training that another config trains end to
# end here: loaded and checked, not trained, so that the slow set stays lean. The CPU twins of custom_cnn, tuned_cnn
# and hog_svm (the same code paths as their originals), cpu/tuned_cnn_seed7_sqrt_weights (tuned_cnn with fewer
# epochs, another seed and class weights) and cpu/tuned_cnn_36px_batch32 (its batch size); mobilenetv2 and resnet50 fine-tuned in two phases
# (mobilenetv2.yaml and resnet50.yaml train that way); vgg16.yaml (vgg16 trains whole as cpu/vgg16, and two phases
# are the other backbones'); the tuned CNN's second stages (their start from a run's model.keras: test_models);
# rf_cnn_features and cpu/hog_rf, another classifier on the features of cpu/svm_cnn_features and hog_svm (which
# train those ways; test_classical fits every classifier); svm_cnn_features, cpu/svm_cnn_features with another
# first-stage CNN config.
NOT_TRAINED = ("cpu/custom_cnn.yaml", "cpu/hog_rf.yaml", "cpu/hog_svm.yaml", "cpu/mobilenetv2.yaml", "cpu/resnet50.yaml",
               "cpu/tuned_cnn.yaml", "cpu/tuned_cnn_36px.yaml", "cpu/tuned_cnn_36px_batch32.yaml",
               "cpu/tuned_cnn_36px_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_36px_light_dropout.yaml", "cpu/tuned_cnn_36px_light_dropout_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift.yaml", "cpu/tuned_cnn_36px_one_cycle_flip_shift_30_epochs.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift_30_epochs_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift_mixup.yaml", "cpu/tuned_cnn_36px_one_cycle_flip_shift_peak4e-3.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift_seed3.yaml", "cpu/tuned_cnn_36px_one_cycle_flip_shift_seed7.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift_seed7_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_36px_one_cycle_flip_shift_sgd.yaml", "cpu/tuned_cnn_36px_one_cycle_lean_first_block.yaml",
               "cpu/tuned_cnn_48px_one_cycle_flip_shift_bf16.yaml",
               "cpu/tuned_cnn_48px_one_cycle_flip_shift_bf16_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_48px_one_cycle_flip_shift_erasing_bf16.yaml",
               "cpu/tuned_cnn_continued.yaml", "cpu/tuned_cnn_continued_sqrt_weights.yaml",
               "cpu/tuned_cnn_seed7_sqrt_weights.yaml", "rf_cnn_features.yaml", "svm_cnn_features.yaml", "vgg16.yaml")
SMOKE_CONFIGS = [c for c in CONFIGS if config_id(c) not in NOT_TRAINED]
# What also trains on JAX: one config per way a backend can differ (sample weights, a loss, the tuned CNN with every
# augmentation, a backbone's two phases, CNN features); the rest builds the same Keras graph. (custom_cnn_aug trains
# on JAX three times besides: as the CNN features' first stage and in test_backends' steps-per-execution pair. A
# backbone trained whole at 48 px, cpu/vgg16, took XLA 8 minutes to compile here: its graph is mobilenetv2's phase 2
# without the freeze.)
JAX_SMOKE = ("custom_cnn_class_weights.yaml", "custom_cnn_focal.yaml", "tuned_cnn.yaml", "mobilenetv2.yaml",
             "svm_cnn_features.yaml")


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


@functools.cache
def smoke_data_path() -> Path:
    """The real FER-2013 where it is present (CI has it beside the checkout), else a synthetic stand-in."""
    if (REAL_DATA / "train").is_dir():
        return REAL_DATA
    import tempfile

    return make_fer_folder(Path(tempfile.mkdtemp(prefix="fer-smoke-")), counts=(6, 3, 3))


@pytest.fixture(scope="session")
def smoke_data() -> Path:
    return smoke_data_path()


def pytest_collection_modifyitems(config, items):
    """The tests that read the JAX worker's results go last, so the worker has all the others to run beside."""
    items.sort(key=lambda item: item.get_closest_marker("jax_worker") is not None)


@pytest.fixture(autouse=True)
def close_figures():
    """A comparison built and not written keeps its matplotlib figures open (they are its objects): close them."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def pytest_collection_finish(session):
    """Start the JAX side of test_backends now, so that it runs beside the TensorFlow tests."""
    if any(item.get_closest_marker("jax_worker") for item in session.items):
        from test_backends import start_jax_side

        start_jax_side(session.config)


def tiny_overrides(config: Path) -> list[str]:
    """Make any config train in seconds: a few images per class, one epoch, small inputs, no downloads."""
    # 6 images a class: 42 for seven classes (three whole batches of 14), 12 for two (one batch).
    overrides = ["data.max_per_class=6", "train.epochs=1", "train.batch_size=14", "train.early_stopping_patience=null"]
    import yaml

    raw = yaml.safe_load(config.read_text())
    if raw.get("model", {}).get("weights") is not None:
        overrides.append("model.weights=null")
    # A network's width is a setting, not a code path: the narrowest keeps every layer (so every traced op) and cuts
    # the compute, which was half of a wide config's smoke run on 2 cores (tuned_cnn: 20 CPU-s, 9 at these widths).
    params = raw.get("model", {}).get("params") or {}
    if "filters" in params:
        overrides.append(f"model.params.filters={[8 * 2 ** i for i in range(len(params['filters']))]}")
    if params.get("dense_units"):
        overrides.append("model.params.dense_units=16")
    if "alpha" in params:
        overrides.append("model.params.alpha=0.35")
    if raw.get("data", {}).get("input_size", 48) > 48:
        overrides.append("data.input_size=32")
    if raw.get("model", {}).get("fine_tune"):
        overrides.append("model.fine_tune.head_epochs=1")
    if (raw.get("features") or {}).get("cnn_config"):
        overrides.append("features.cnn_overrides=['train.epochs=1', 'model.params.filters=[8, 16]']")
    if raw.get("features"):
        overrides.append("search.max_samples=null")
    return overrides


TWO_CLASSES = ("happy", "sad")


def smoke_classes(config: Path) -> tuple[str, ...]:
    """The CPU twins under configs/cpu/ and the two costliest backbones run on two classes, so that every model
    family is proven on a subset; the rest on all seven."""
    return TWO_CLASSES if config.parent.name == "cpu" or config_id(config) in ("mobilenetv2.yaml", "resnet50.yaml") \
        else EMOTIONS


def smoke_argv(config: Path, data: Path, results: Path) -> list[str]:
    """`fer-bench run` of one config, made tiny; run from the repository root (configs name other configs)."""
    overrides = [arg for o in tiny_overrides(config) for arg in ("--set", o)]
    classes = smoke_classes(config)
    if classes != EMOTIONS:
        overrides += ["--set", f"data.classes=[{', '.join(classes)}]"]
    return ["run", str(config), "--data-dir", str(data), "--results-dir", str(results), *overrides]


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, fer_folder) -> Path:
    """Two small finished runs on the synthetic set (3 classes), shared by the compare/predict/ensemble tests."""
    from fer_bench.experiment import load_experiment
    from fer_bench.runs.runner import run_experiment

    results = tmp_path_factory.mktemp("results")
    # float32 on every CPU: `auto` would train in bfloat16 where the CPU has a unit for it, and the ensemble tests
    # need members that predict in float32 (the one that tests a bfloat16 member trains its own).
    overrides = ["data.classes=[angry, happy, surprise]", "train.epochs=3", "train.batch_size=8",
                 "model.params.filters=[8, 16]", "model.params.dense_units=16", "model.params.dropout=0.1",
                 "runtime.mixed_precision=false"]
    for config, seed in (("custom_cnn", 1), ("custom_cnn_aug", 2)):
        exp = load_experiment(REPO / "configs" / f"{config}.yaml", overrides + [f"train.seed={seed}"])
        run_experiment(exp, data_dir=fer_folder, results_dir=results)
    return results


SHIPPED_PER_CLASS = 3


def copy_shipped_photos(folder: Path):
    """A few real PrivateTest faces per class, in class folders, with the shipped run's committed predictions."""
    import json
    import shutil

    import pandas as pd

    from fer_bench.evaluation.predictors import SHIPPED_MODEL

    run = json.loads((SHIPPED_MODEL / "metrics.json").read_text())["run"]
    committed = pd.read_csv(REPO / "results" / "reference" / run / "predictions.csv")
    committed = committed[committed["split"] == "test"]
    chosen = committed.groupby("true", sort=True).head(SHIPPED_PER_CLASS)
    for file, emotion in zip(chosen["file"], chosen["true"]):
        (folder / emotion).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL_DATA / file, folder / emotion / file.split("/")[-1])
    return folder, chosen.set_index(chosen["file"].str.split("/").str[-1])


@pytest.fixture(scope="session")
def shipped_photos(tmp_path_factory):
    if not (REAL_DATA / "test").is_dir():
        pytest.skip("needs ../shared/fer2013")
    return copy_shipped_photos(tmp_path_factory.mktemp("photos"))
