"""fer-bench sweep: trials named from what differs, checked before any starts, run on local workers or a
real Ray cluster (started here, on the loopback address) with the same results, and surviving a killed
worker and Ctrl-C."""

from __future__ import annotations

import contextlib
import re
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO
from helpers import check_run
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.errors import ConfigError
from fer_bench.sweeps.plan import SweepSpec, expand, parse_seeds, read_sweep_file

CONFIGS = REPO / "configs"
TINY = ["data.max_per_class=6", "data.classes=[happy, sad]", "train.epochs=1", "train.batch_size=6",
        "train.early_stopping_patience=null", "model.params.filters=[8, 16]", "model.params.dense_units=16"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def sweep_command(*args, sets=()):
    return [sys.executable, "-m", "fer_bench.cli", "sweep", *map(str, args), *(a for s in sets for a in ("--set", s))]


# --- what a sweep is ----------------------------------------------------------------------------------------

def test_trials_are_configs_times_grid_times_seeds_named_from_what_differs():
    spec = SweepSpec("s", (CONFIGS / "custom_cnn.yaml", CONFIGS / "custom_cnn_aug.yaml"), seeds=(0, 1),
                     grid={"train.learning_rate": (0.001, 3e-4), "model.params.filters": ([8, 16], [16, 32])},
                     sets=("train.epochs=2",))
    trials = expand(spec)
    assert len(trials) == 16
    assert trials[0].id == "custom_cnn/learning_rate=0.001/filters=8-16/seed=0"
    assert trials[-1].id == "custom_cnn_aug/learning_rate=0.0003/filters=16-32/seed=1"
    assert trials[-1].group == "custom_cnn_aug/learning_rate=0.0003/filters=16-32"
    assert trials[-1].overrides == ("train.epochs=2", "train.learning_rate=0.0003", "model.params.filters=[16, 32]",
                                    "train.seed=1")
    assert len({t.group for t in trials}) == 8
    assert [t.id for t in expand(spec)] == [t.id for t in trials]  # the same sweep lands in the same folders


def test_unsafe_or_long_values_get_a_short_stable_name_and_colliding_config_names_keep_their_folder():
    spec = SweepSpec("s", (CONFIGS / "custom_cnn.yaml", CONFIGS / "cpu" / "custom_cnn.yaml"),
                     grid={"model.weights": (None, "/some/where/w.weights.h5")})
    ids = [t.id for t in expand(spec)]
    assert ids[0] == "configs-custom_cnn/weights=null" and ids[2] == "cpu-custom_cnn/weights=null"
    hashed = ids[1].split("=")[1]
    assert len(hashed) == 8 and all(c in "0123456789abcdef" for c in hashed) and ids[3].endswith(hashed)
    long = SweepSpec("s", (CONFIGS / "custom_cnn.yaml",), seeds=(3,),
                     grid={f"model.params.a{i}": ("x" * 30,) for i in range(5)})
    (trial,) = expand(long)
    assert trial.id.startswith("custom_cnn/grid-") and trial.id.endswith("/seed=3") and len(trial.id) < 40
    assert trial.seed == 3 and trial.group == trial.id.rsplit("/", 1)[0]
    # No seeds: each config keeps its own train.seed, and no folder says seed.
    assert [t.id for t in expand(SweepSpec("s", (CONFIGS / "custom_cnn.yaml",)))] == ["custom_cnn"]


@pytest.mark.parametrize("text, seeds", [("3", (0, 1, 2)), ("0,3,7", (0, 3, 7)), ("5,", (5,))])
def test_seeds_are_a_count_or_a_list(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "-2", "a", "1,1", "1.5", "true"])
def test_bad_seeds_are_one_line_errors(text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_a_sweep_file_reads_its_configs_from_its_own_folder(tmp_path):
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    file = sweeps / "lr.yaml"
    file.write_text(f"configs: [{CONFIGS / 'custom_cnn.yaml'}, ../other.yaml]\nseeds: [1, 2]\n"
                    "grid:\n  train.learning_rate: [1e-3, 3e-4]\nset:\n  train.epochs: 2\n  data.classes: [happy, sad]\n")
    spec = read_sweep_file(file)
    assert spec.name == "lr" and spec.seeds == (1, 2) and spec.grid == {"train.learning_rate": (0.001, 0.0003)}
    assert spec.configs[1] == sweeps / "../other.yaml"
    assert spec.sets == ("train.epochs=2", "data.classes=[happy, sad]")
    file.write_text("configs: [a.yaml]\nseed: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'seed'; a sweep file has"):
        read_sweep_file(file)


def test_every_trial_is_checked_before_any_folder_exists(tmp_path):
    result = invoke("sweep", CONFIGS / "custom_cnn.yaml", "--grid", "model.params.dropout=[0.2, 1.5]", "--seeds", "2",
                    "--results-dir", tmp_path / "results")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: trial custom_cnn/dropout=1.5/seed=0: model.params.dropout must be in [0.0, 1.0); got 1.5"]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args, message", [
    (["--grid", "train.learning_rate=0.1"], "--grid train.learning_rate=0.1: give the values as a list"),
    (["--grid", "train.seed=[1, 2]"], "give seeds with --seeds"),
    (["--jobs", "0"], "--jobs must be at least 1; got 0"),
    (["--executor", "slurm"], "--executor must be one of ['local', 'ray']; got 'slurm'"),
    (["--address", "auto"], "--address is for --executor ray"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    (["--name", "a/b"], "--name must be one folder name"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    result = invoke("sweep", CONFIGS / "custom_cnn.yaml", "--results-dir", tmp_path, *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where it is not installed
    result = invoke("sweep", CONFIGS / "custom_cnn.yaml", "--executor", "ray", "--results-dir", tmp_path)
    assert result.exit_code == 1
    assert result.output.startswith('error: --executor ray needs Ray, which is not installed: pip install -e ".[ray]"')


# --- on real workers ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real one-node Ray cluster on 127.0.0.1, started as this test's child and stopped by its own pid."""
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("w") as out:
        head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "pid": head.pid}
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the whole cluster on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()


def trial_metrics(folder: Path) -> dict[str, dict]:
    found = {}
    for metrics in sorted(folder.rglob("metrics.json")):
        record = json.loads(metrics.read_text())
        found[record["sweep"]["trial"]] = record
    return found


def wait_for_trial(statuses, ready, process, timeout=300):
    """(status.json path, status) of the first trial among `statuses()` for which `ready(path, status)` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the sweep ended before the trial to act on was seen: " + process.communicate()[1][-3000:]
        for path in statuses():
            with contextlib.suppress(OSError, ValueError):
                status = json.loads(path.read_text())
                if status.get("state") == "running" and ready(path, status):
                    return path, status
        time.sleep(0.03)
    pytest.fail("no trial reached the state to act on")


def has_checkpoint(path: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((path.parent / "checkpoint" / "state.json").read_text()).get("epoch", 0) >= 1
    return False


TRIALS = ["custom_cnn/seed=0", "custom_cnn/seed=1", "custom_cnn_aug/seed=0", "custom_cnn_aug/seed=1"]


@pytest.mark.slow
def test_a_sweep_survives_a_killed_worker_and_ctrl_c_and_gives_the_same_metrics_on_ray(tmp_path, smoke_data, ray_cluster):
    """2 configs x 2 seeds, local --jobs 2 and a real Ray cluster: a worker SIGKILLed on each, Ctrl-C on the local
    one, and every trial still ends exactly as on the other executor; a rerun trains nothing."""
    from fer_bench.sweeps.executors import scratch_root

    name = f"pair-{os.getpid()}"
    common = [CONFIGS / "custom_cnn.yaml", CONFIGS / "custom_cnn_aug.yaml", "--seeds", "2", "--data-dir", smoke_data,
              "--name", name]
    sets = [*TINY, "train.epochs=2"]
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache")}
    local_args = sweep_command(*common, "--jobs", "2", "--results-dir", tmp_path / "local", sets=sets)
    local_dir = tmp_path / "local" / name
    statuses = lambda: sorted(local_dir.glob("*/seed=*/status.json"))

    # As from a terminal (see test_trust): SIGINT is not ignored in the sweep's process.
    sweep = subprocess.Popen(local_args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    killed_path, killed = wait_for_trial(statuses, lambda path, status: True, sweep)
    os.kill(killed["pid"], signal.SIGKILL)
    # Ctrl-C once another trial has a checkpoint: it records `interrupted`, and the sweep stops with code 130.
    stopped_path, _ = wait_for_trial(statuses, lambda path, status: status["pid"] != killed["pid"] and has_checkpoint(path),
                                     sweep)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: interrupted")
    killed_trial = str(killed_path.parent.relative_to(local_dir))
    assert f"retry    {killed_trial}: its worker (pid {killed['pid']}) was killed by SIGKILL" in stderr
    assert json.loads(stopped_path.read_text())["state"] == "interrupted"
    manifest = {t["id"]: t for t in json.loads((local_dir / "sweep.json").read_text())["trials"]}
    assert manifest[str(stopped_path.parent.relative_to(local_dir))]["state"] == "interrupted"

    resumed = subprocess.run(local_args, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "4 of 4 trials finished" in resumed.stdout
    assert "resumed train after epoch 1" in (stopped_path.parent / "log.txt").read_text()
    manifest = json.loads((local_dir / "sweep.json").read_text())
    assert [(t["id"], t["state"]) for t in manifest["trials"]] == [(t, "finished") for t in TRIALS]
    assert {t["id"]: t["attempts"] for t in manifest["trials"]}[killed_trial] >= 2
    assert not [p for p in local_dir.rglob("*") if ".staging" in p.name or ".tmp" in p.name]

    stamps = {p: p.stat().st_mtime_ns for p in local_dir.rglob("*") if p.name not in ("sweep.json", ".lock")}
    again = subprocess.run(local_args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 finished earlier, 0 to run" in again.stderr and "4 of 4 trials finished" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # On Ray the worker trains in a scratch folder of its own (no shared file system): kill it there, by its pid.
    ray_args = sweep_command(*common, "--executor", "ray", "--address", "auto", "--results-dir", tmp_path / "ray",
                             sets=sets)
    sweep = subprocess.Popen(ray_args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scratch = lambda: sorted(scratch_root().glob(f"{name}-*/*/seed=*/status.json"))
    _, status = wait_for_trial(scratch, lambda path, status: True, sweep)
    os.kill(status["pid"], signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr[-3000:]
    assert "ray: 1 node, 2 CPUs, 0 GPUs at auto" in stderr and "4 of 4 trials finished" in stdout

    by_local, by_ray = trial_metrics(local_dir), trial_metrics(tmp_path / "ray" / name)
    assert sorted(by_local) == sorted(by_ray) == TRIALS
    for trial, metrics in by_local.items():
        for key in ("validation", "test", "test_unique", "data_fingerprint", "epochs_run", "best_epoch"):
            assert by_ray[trial][key] == metrics[key], (trial, key)
        assert metrics["sweep"]["group"] == trial.split("/")[0] and metrics["sweep"]["seed"] == int(trial[-1])
        local_run, ray_run = local_dir / trial, tmp_path / "ray" / name / trial
        for run in (local_run, ray_run):
            check_run(run, ("happy", "sad"))
        assert pd.read_csv(ray_run / "predictions.csv").equals(pd.read_csv(local_run / "predictions.csv"))
        worker = json.loads((ray_run / "environment.json").read_text())["worker"]
        assert worker["executor"] == "ray" and worker["data"] == "ray object store" and worker["resources"] == {"CPU": 1.0}
    # The seeds train on the same images: the subset follows data.seed, not train.seed.
    assert len({m["data_fingerprint"] for m in by_local.values()}) == 1
    assert not [p for p in (tmp_path / "ray" / name).rglob("*") if ".staging" in p.name]


def test_the_seed_moves_the_subset_only_when_data_seed_is_null(fer_folder):
    from fer_bench.data.dataset import load_data
    from fer_bench.experiment import data_config, load_experiment, seed_moves

    def subset(*sets):
        exp = load_experiment(CONFIGS / "custom_cnn_aug.yaml", ["data.max_per_class=3", *sets])
        return exp, load_data(data_config(exp), exp.classes, fer_folder, progress=False).fingerprint

    (first, a), (_, b) = subset("train.seed=1"), subset("train.seed=2")
    assert a == b  # data.seed (42) draws the subset: the seeds train on the same images
    assert seed_moves(first) == ["initialisation", "data order", "dropout", "augmentation"]
    (followed, c), (_, d) = subset("train.seed=1", "data.seed=null"), subset("train.seed=2", "data.seed=null")
    assert c != d and data_config(followed).seed == 1
    assert seed_moves(followed)[-1] == "the data's subset and split (data.seed: null)"


@pytest.mark.slow
def test_a_failing_trial_never_stops_the_others_and_the_sweep_exits_1(tmp_path, smoke_data):
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not weights")  # exists, so the config is valid; loading it fails once the model is built
    args = sweep_command(CONFIGS / "custom_cnn.yaml", "--grid", f"model.weights=[null, {garbage}]", "--data-dir",
                         smoke_data, "--results-dir", tmp_path / "results", "--name", "mixed", sets=TINY)
    done = subprocess.run(args, env={**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache")}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    failed_id = [line for line in done.stdout.splitlines() if " failed " in line][0].split()[0]
    assert failed_id.startswith("custom_cnn/weights=") and failed_id != "custom_cnn/weights=null"
    assert f"FAILED   {failed_id}: cannot load weights {garbage}" in done.stderr
    assert re.search(r"^custom_cnn/weights=null +finished", done.stdout, re.M) and "1 of 2 trials finished" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == f"error: 1 trial did not finish: {failed_id}"
    check_run(tmp_path / "results" / "mixed" / "custom_cnn" / "weights=null", ("happy", "sad"))
    status = json.loads((tmp_path / "results" / "mixed" / failed_id / "status.json").read_text())
    assert status["state"] == "failed" and "cannot load weights" in status["error"]


def test_local_workers_own_a_gpu_each_or_split_the_cores(monkeypatch):
    from fer_bench.sweeps import executors

    monkeypatch.setattr(executors, "usable_cores", lambda: list(range(8)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    slots = executors.local_slots(None)  # --jobs defaults to one worker per GPU
    assert [(s.gpu, s.cores) for s in slots] == [("0", (0, 1, 2, 3)), ("1", (4, 5, 6, 7))]
    assert [s.describe() for s in slots] == ["4 cores, GPU 0", "4 cores, GPU 1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert [(s.gpu, s.cores, s.threads) for s in executors.local_slots(None)] == [(None, tuple(range(8)), 8)]
    assert [s.cores for s in executors.local_slots(3)] == [(0, 1, 2), (3, 4), (5, 6, 7)]
    assert [s.cores for s in executors.local_slots(16)][-1] == (7,)  # more workers than cores: they share
