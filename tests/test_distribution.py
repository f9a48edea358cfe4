"""The distribution path, on a CPU split into two logical devices (no GPU needed)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, make_fer_folder


@pytest.mark.slow
def test_mirrored_run_matches_a_single_device_run(tmp_path):
    """Two replicas of batch 4 take the same steps as one device with batch 8.

    Exactly the same, up to float rounding, once nothing differs per replica: no BatchNorm (its
    statistics are per replica), no dropout and no augmentation (their random draws are per replica).
    The single-device run is the reference; no accuracy threshold, which would measure luck.
    """
    data = make_fer_folder(tmp_path / "data", counts=(24, 6, 6), classes=("angry", "happy", "surprise"))
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = ["--data-dir", str(data), "--results-dir", str(tmp_path / "r"), "--set", "data.classes=[angry, happy, surprise]",
              "--set", "train.epochs=3", "--set", "train.batch_size=8", "--set", "model.params.filters=[8, 16]",
              "--set", "model.params.batch_norm=false", "--set", "model.params.dropout=0.0",
              "--set", "model.params.block_dropout=0.0", "--set", "model.params.dense_units=16",
              "--set", "train.early_stopping_patience=null", "--set", "train.schedule=constant"]
    runs = {"single": ["--set", "runtime.distribution=none"],
            "mirrored": ["--set", "runtime.distribution=mirrored", "--set", "runtime.cpu_devices=2",
                         "--set", "train.batch_size=4"]}  # per replica: the same global batch of 8
    for name, extra in runs.items():
        done = subprocess.run([sys.executable, "-m", "fer_bench.cli", "run", str(REPO / "configs/custom_cnn.yaml"),
                               "--name", name, *common, *extra], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    environment = json.loads((tmp_path / "r" / "mirrored" / "environment.json").read_text())
    assert environment["runtime"]["replicas"] == 2 and environment["runtime"]["distribution"] == "mirrored"
    assert environment["global_batch_size"] == 8
    assert len(environment["runtime"]["devices"]) == 2

    single, mirrored = (pd.read_csv(tmp_path / "r" / name / "history.csv") for name in runs)
    for column in ("loss", "val_loss"):
        assert mirrored[column].to_numpy() == pytest.approx(single[column].to_numpy(), rel=1e-3), column
    probabilities = [pd.read_csv(tmp_path / "r" / name / "predictions.csv").filter(like="p_").to_numpy() for name in runs]
    assert probabilities[1] == pytest.approx(probabilities[0], abs=1e-3)
