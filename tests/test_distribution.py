"""The distribution path, on a CPU split into two devices (no GPU needed).

Two replicas of batch 4 take the same steps as one device with batch 8: on TensorFlow that is
MirroredStrategy over two logical CPUs, here; on JAX, keras.distribution's DataParallel over two
XLA host devices, in test_backends' JAX worker, with the same commands and checks.

Exactly the same, up to float rounding, once nothing differs per replica: no BatchNorm (its
statistics are per replica), no dropout and no augmentation (their random draws are per replica).
The single-device run is the reference; no accuracy threshold, which would measure luck.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, make_fer_folder

CLASSES = ("angry", "happy", "surprise")


def distribution_runs(data: Path, results: Path) -> dict[str, list[str]]:
    """`fer-bench run` arguments: a single-device run and a mirrored one over two CPU devices."""
    common = ["run", str(REPO / "configs/custom_cnn.yaml"), "--data-dir", str(data), "--results-dir", str(results),
              "--set", f"data.classes=[{', '.join(CLASSES)}]", "--set", "train.epochs=3",
              "--set", "model.params.filters=[8, 16]", "--set", "model.params.batch_norm=false",
              "--set", "model.params.dropout=0.0", "--set", "model.params.block_dropout=0.0",
              "--set", "model.params.dense_units=16", "--set", "train.early_stopping_patience=null",
              "--set", "train.schedule=constant"]
    return {"single": [*common, "--name", "single", "--set", "runtime.distribution=none", "--set", "train.batch_size=8"],
            "mirrored": [*common, "--name", "mirrored", "--set", "runtime.distribution=mirrored",
                         "--set", "runtime.cpu_devices=2", "--set", "train.batch_size=4"]}  # per replica: 8 in all


def make_distribution_data(folder: Path) -> Path:
    return make_fer_folder(folder, counts=(24, 6, 6), classes=CLASSES)


def assert_mirrored_matches_single(results: Path, backend: str) -> None:
    environment = json.loads((results / "mirrored" / "environment.json").read_text())
    assert environment["runtime"]["replicas"] == 2 and environment["runtime"]["distribution"] == "mirrored"
    assert environment["runtime"]["backend"] == environment["keras_backend"] == backend
    assert environment["global_batch_size"] == 8
    assert len(environment["runtime"]["devices"]) == 2
    single_devices = json.loads((results / "single" / "environment.json").read_text())["runtime"]["devices"]
    assert len(single_devices) == 1

    single, mirrored = (pd.read_csv(results / name / "history.csv") for name in ("single", "mirrored"))
    for column in ("loss", "val_loss"):
        assert mirrored[column].to_numpy() == pytest.approx(single[column].to_numpy(), rel=1e-3), column
    probabilities = [pd.read_csv(results / name / "predictions.csv").filter(like="p_").to_numpy()
                     for name in ("single", "mirrored")]
    assert probabilities[1] == pytest.approx(probabilities[0], abs=1e-3)


@pytest.mark.slow
def test_mirrored_run_matches_a_single_device_run_on_tensorflow(tmp_path):
    data = make_distribution_data(tmp_path / "data")
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": "tensorflow"}
    for name, args in distribution_runs(data, tmp_path / "r").items():
        done = subprocess.run([sys.executable, "-m", "fer_bench.cli", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert_mirrored_matches_single(tmp_path / "r", "tensorflow")
