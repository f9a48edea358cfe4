"""A run killed mid-training and started again with the same command ends as if never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, make_fer_folder

CLASSES = "[angry, happy, surprise]"


def command(config, data, results, name, *overrides):
    args = [sys.executable, "-m", "fer_bench.cli", "run", str(REPO / "configs" / config), "--data-dir", str(data),
            "--results-dir", str(results), "--name", name, "--set", f"data.classes={CLASSES}",
            "--set", "train.batch_size=16", "--set", "train.early_stopping_patience=2", "--set", "train.plateau_patience=1"]
    for override in overrides:
        args += ["--set", override]
    return args


def kill_after(args, state_file, ready, env, timeout=240):
    """Start the run, SIGKILL it as soon as `ready(state)` holds, and return the state it had reached."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                pytest.fail("the run finished before it could be killed; give it more work")
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                state = None
            if state and ready(state):
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return state
            time.sleep(0.02)
        pytest.fail("the run never reached the point to kill it")
    finally:
        if process.poll() is None:
            process.kill()


def read(path):
    return json.loads(path.read_text())


@pytest.fixture()
def env(tmp_path):
    return {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.slow
@pytest.mark.parametrize("config, overrides, ready", [
    # killed in the middle of plain training
    ("custom_cnn_aug.yaml", ["train.epochs=6", "model.params.filters=[16, 32]"],
     lambda state: state.get("epoch", 0) >= 2),
    # killed in the fine-tune phase of a backbone, after the frozen-backbone phase finished
    ("mobilenetv2.yaml", ["train.epochs=3", "data.input_size=32", "model.weights=null", "model.params.alpha=0.35",
                          "model.fine_tune.head_epochs=2", "model.fine_tune.unfreeze_top=20"],
     lambda state: state.get("phase") == "fine_tune" and state.get("epoch", 0) >= 3),
], ids=["custom_cnn", "mobilenetv2-two-phase"])
def test_a_killed_run_resumes_to_the_same_result(tmp_path, env, config, overrides, ready):
    images = 70 if config.startswith("custom") else 40  # enough work per epoch to be killed mid-run
    data = make_fer_folder(tmp_path / "data", counts=(images, 8, 8), classes=("angry", "happy", "surprise"))
    results = tmp_path / "results"
    subprocess.run(command(config, data, results, "whole", *overrides), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    args = command(config, data, results, "resumed", *overrides)
    state = kill_after(args, results / "resumed" / "checkpoint" / "state.json", ready, env)
    assert read(results / "resumed" / "status.json")["state"] == "running"
    assert not (results / "resumed" / "metrics.json").exists()

    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed {state['phase']} after epoch {state['epoch']}" in again.stderr
    whole, resumed = read(results / "whole" / "metrics.json"), read(results / "resumed" / "metrics.json")
    for key in ("validation", "test", "best_epoch", "epochs_run"):
        assert resumed[key] == whole[key], key
    history = [(results / run / "history.csv").read_text().splitlines() for run in ("whole", "resumed")]
    strip_seconds = [[",".join(line.split(",")[:-1]) for line in rows] for rows in history]
    assert strip_seconds[0] == strip_seconds[1]
    assert not (results / "resumed" / "checkpoint").exists()


@pytest.mark.slow
def test_restart_starts_afresh_and_a_changed_config_is_refused(tmp_path, env, fer_folder):
    args = command("custom_cnn.yaml", fer_folder, tmp_path, "run", "train.epochs=4", "model.params.filters=[8]")
    kill_after(args, tmp_path / "run" / "checkpoint" / "state.json", lambda s: s.get("epoch", 0) >= 1, env)
    changed = subprocess.run(args[:-2] + ["--set", "model.params.filters=[16]"], env=env, capture_output=True, text=True)
    assert changed.returncode == 1
    assert "holds an unfinished run of a different config; pass --restart" in changed.stderr
    fresh = subprocess.run(args + ["--restart"], env=env, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "resumed" not in fresh.stderr
