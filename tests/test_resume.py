"""A run killed mid-training and started again with the same command ends as if never interrupted."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO, make_fer_folder
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.config import to_dict
from fer_bench.experiment import load_experiment
from fer_bench.runs.artifacts import RunDirectory
from fer_bench.runs.runner import same_experiment

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
    # killed in the fine-tune phase of a backbone, after the frozen-backbone phase finished (a run killed in plain
    # training resumes exactly too: test_sweep checks an interrupted trial against an uninterrupted one)
    ("mobilenetv2.yaml", ["train.epochs=3", "data.input_size=32", "model.weights=null", "model.params.alpha=0.35",
                          "model.fine_tune.head_epochs=2", "model.fine_tune.unfreeze_top=20"],
     lambda state: state.get("phase") == "fine_tune" and state.get("epoch", 0) >= 3),
], ids=["mobilenetv2-two-phase"])
def test_a_killed_run_resumes_to_the_same_result(tmp_path, env, config, overrides, ready):
    images = 70 if config.startswith("custom") else 40  # enough work per epoch to be killed mid-run
    data = make_fer_folder(tmp_path / "data", counts=(images, 8, 8), classes=("angry", "happy", "surprise"))
    results = tmp_path / "results"
    # The uninterrupted reference trains beside the one to kill.
    whole = subprocess.Popen(command(config, data, results, "whole", *overrides), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = command(config, data, results, "resumed", *overrides)
    try:
        state = kill_after(args, results / "resumed" / "checkpoint" / "state.json", ready, env)
    finally:
        assert whole.wait(timeout=600) == 0
    killed = read(results / "resumed" / "status.json")
    assert killed["state"] == "running"  # what the killed process last wrote; readers know better:
    assert RunDirectory(results / "resumed").state() == "interrupted"
    listed = CliRunner().invoke(app, ["compare", str(results), "--out", str(results.parent / "comparison")])
    assert listed.exit_code == 0, listed.output
    assert "warning: skipping resumed: interrupted (its process ended or was stopped while training; run the same command " \
           "again to resume it)" in listed.output
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
    # Dates and durations cover the whole run, the part before the kill included.
    finished = read(results / "resumed" / "status.json")
    environment = read(results / "resumed" / "environment.json")
    assert finished["state"] == "finished" and finished["started"] == killed["started"] == environment["started"]
    assert len(environment["resumed"]) == 1
    epoch_seconds = pd.read_csv(results / "resumed" / "history.csv")["seconds"].sum()
    assert resumed["training_seconds"] >= epoch_seconds


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


def test_a_run_begun_by_an_earlier_fer_bench_counts_as_thesame_experiment(tmp_path):
    """Its config.yaml lacks the keys added since (their defaults apply); a value it set that changed still counts."""
    exp = load_experiment(REPO / "configs" / "custom_cnn.yaml", ["train.epochs=4"])
    exp = dataclasses.replace(exp, name="run")
    run = RunDirectory(tmp_path / "run").create()
    earlier = to_dict(exp)
    del earlier["runtime"]["backend"], earlier["runtime"]["steps_per_execution"]
    run.write_yaml("config.yaml", earlier)
    assert same_experiment(run, exp)
    assert not same_experiment(run, dataclasses.replace(exp, train=dataclasses.replace(exp.train, epochs=5)))
    run.write_text("config.yaml", "model: {name: no_such_model}\n")
    assert not same_experiment(run, exp)


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail("timed out")


@pytest.mark.slow
def test_two_runs_of_the_same_name_at_once(tmp_path, env):
    """The second never writes into the first: with --name it stops with one line, without it takes NAME-2."""
    data = make_fer_folder(tmp_path / "data", counts=(70, 8, 8), classes=("angry", "happy", "surprise"))
    results = tmp_path / "results"
    first_args = command("custom_cnn.yaml", data, results, "x", "train.early_stopping_patience=null",
                         "train.epochs=2", "model.params.filters=[16, 32]")
    first_args.remove("--name"), first_args.remove("x")  # the config's own name: custom_cnn
    first = subprocess.Popen(first_args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (results / "custom_cnn" / "checkpoint" / "state.json").is_file())
        # Paused mid-run (its lock held, its process alive) while the others start: no race, no epochs to spare.
        os.kill(first.pid, signal.SIGSTOP)
        same_name = subprocess.run(command("custom_cnn.yaml", data, results, "custom_cnn", "train.epochs=2",
                                           "model.params.filters=[16, 32]"), env=env, capture_output=True, text=True)
        default_name = subprocess.Popen(first_args + ["--set", "train.epochs=1"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        default_stderr = default_name.communicate(timeout=300)[1]
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first_stderr = first.communicate(timeout=300)[1]
    assert same_name.returncode == 1
    assert same_name.stderr.strip().splitlines() == [
        f"error: run {results / 'custom_cnn'} is in progress in another process (pid {first.pid}); wait for it to "
        "finish, or pass another --name"]
    assert default_name.returncode == 0, default_stderr[-2000:]
    assert f"-> {results / 'custom_cnn-2'}" in default_stderr
    assert first.returncode == 0, first_stderr[-2000:]
    for run in ("custom_cnn", "custom_cnn-2"):
        assert read(results / run / "status.json")["state"] == "finished"
    assert read(results / "custom_cnn" / "metrics.json")["epochs_run"] == 2
    assert read(results / "custom_cnn-2" / "metrics.json")["epochs_run"] == 1
