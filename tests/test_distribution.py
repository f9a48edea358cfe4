"""The distribution path, on a CPU split into two logical devices (no GPU needed)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, make_fer_folder


@pytest.mark.slow
def test_mirrored_run_matches_a_single_device_run(tmp_path):
    data = make_fer_folder(tmp_path / "data", counts=(30, 8, 8), classes=("angry", "happy", "surprise"))
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = ["--data-dir", str(data), "--results-dir", str(tmp_path / "r"), "--set", "data.classes=[angry, happy, surprise]",
              "--set", "train.epochs=6", "--set", "train.batch_size=8", "--set", "model.params.filters=[16, 32]",
              "--set", "model.params.dropout=0.1", "--set", "train.early_stopping_patience=null"]
    runs = {"single": ["--set", "runtime.distribution=none"],
            "mirrored": ["--set", "runtime.distribution=mirrored", "--set", "runtime.cpu_devices=2",
                         "--set", "train.batch_size=4"]}  # per replica: the same global batch of 8
    for name, extra in runs.items():
        subprocess.run([sys.executable, "-m", "fer_bench.cli", "run", str(REPO / "configs/custom_cnn.yaml"),
                        "--name", name, *common, *extra], env=env, check=True, capture_output=True)
    single, mirrored = (json.loads((tmp_path / "r" / n / "metrics.json").read_text()) for n in runs)
    environment = json.loads((tmp_path / "r" / "mirrored" / "environment.json").read_text())
    assert environment["runtime"]["replicas"] == 2 and environment["runtime"]["distribution"] == "mirrored"
    assert environment["global_batch_size"] == 8
    assert len(environment["runtime"]["devices"]) == 2
    for split in ("validation", "test"):
        assert abs(single[split]["accuracy"] - mirrored[split]["accuracy"]) <= 0.15, split
    assert mirrored["validation"]["accuracy"] > 0.6
