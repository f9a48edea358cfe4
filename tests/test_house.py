"""The house issue: one run lifecycle, one atomic write, seams, and the tests that used to be unable to fail."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_fer_folder
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.config import AugmentConfig, Interval, Options
from fer_bench.errors import ConfigError
from fer_bench.experiment import load_experiment
from fer_bench.files import temporary_name
from fer_bench.runs.artifacts import RunDirectory

runner = CliRunner()
CLASSES = ["happy", "sad"]


def finished_run(folder, name, wrong, images=40):
    """A finished run folder written by hand: test predictions that miss the first `wrong` images."""
    from fer_bench.evaluation.metrics import SplitPredictions
    from fer_bench.runs.artifacts import write_evaluation

    run = RunDirectory(folder / name).create()
    labels = np.arange(images) % 2
    predicted = np.where(np.arange(images) < wrong, 1 - labels, labels)
    probabilities = np.eye(2)[predicted] * 0.6 + 0.2
    predictions = {split: SplitPredictions([f"{split}/{i}.png" for i in range(images)], labels, probabilities, None)
                   for split in ("validation", "test")}
    metrics = write_evaluation(run, tuple(CLASSES), predictions, name)
    run.write_json("metrics.json", {"run": name, "model": "custom_cnn", "classes": CLASSES, "data_fingerprint": "same",
                                    **metrics})
    run.set_status("finished")
    return run.path


# --- one lifecycle --------------------------------------------------------------------------------------

def test_an_ensemble_in_progress_reads_as_running_and_ends_finished(tmp_path, monkeypatch):
    from fer_bench.runs import ensemble

    members = [finished_run(tmp_path, "a", 2), finished_run(tmp_path, "b", 5)]
    seen = {}
    real = ensemble.write_evaluation

    def watched(run, *args):
        seen["state"] = RunDirectory(run.path).state()  # as another reader sees it, mid-write
        return real(run, *args)

    monkeypatch.setattr(ensemble, "write_evaluation", watched)
    result = runner.invoke(app, ["ensemble", *map(str, members), "--name", "both"])
    assert result.exit_code == 0, result.output
    assert seen["state"] == "running"  # the lock says a process is writing it: not "interrupted"
    status = json.loads((tmp_path / "both" / "status.json").read_text())
    assert status["state"] == "finished" and "test_accuracy" in status


def test_a_failing_body_leaves_a_failed_run_and_ctrl_c_an_interrupted_one(tmp_path):
    run = RunDirectory(tmp_path / "x")
    with pytest.raises(ValueError):
        with run.lifecycle():
            raise ValueError("broken")
    assert run.status()["state"] == "failed" and run.status()["error"] == "ValueError: broken"
    with pytest.raises(KeyboardInterrupt):
        with run.lifecycle():
            raise KeyboardInterrupt
    assert run.state() == "interrupted"
    with pytest.raises(Exception, match="metrics.json was not written"):
        with run.lifecycle():
            pass  # a body that never wrote its metrics has not finished
    assert run.status()["state"] == "failed"


@pytest.mark.slow
def test_two_evaluations_of_the_same_folder_are_tested_against_each_other(tmp_path):
    from fer_bench.evaluation.predictors import SHIPPED_MODEL
    from fer_bench.reporting.compare import build_comparison, trained_on

    faces = make_fer_folder(tmp_path / "faces", counts=(0, 0, 6), classes=("happy", "sad", "surprise")) / "test"
    for _ in range(2):
        result = runner.invoke(app, ["evaluate", "--data-dir", str(faces), "--results-dir", str(tmp_path / "r")])
        assert result.exit_code == 0, result.output
    comparison = build_comparison(tmp_path / "r" / "shipped" / "eval")
    assert list(comparison.table["data"]) == ["same", "same"]
    assert len(comparison.significance) == 1 and comparison.significance["p_value"].iloc[0] == 1.0
    shipped = json.loads((SHIPPED_MODEL / "environment.json").read_text())
    assert set(comparison.table["trained_on"]) == {trained_on(shipped)}  # where it trained, not where it was scored


# --- one atomic write -------------------------------------------------------------------------------------

FILL_CACHE = """
import sys
from fer_bench.config import DataConfig
from fer_bench.data.dataset import load_data
data = load_data(DataConfig(), ("angry", "happy", "sad"), sys.argv[1], progress=False)
print(len(data.train))
"""


def test_processes_filling_the_same_cache_at_once_end_with_one_valid_cache(tmp_path):
    data = make_fer_folder(tmp_path / "data", counts=(120, 10, 10), classes=("angry", "happy", "sad"))
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache")}
    fillers = [subprocess.Popen([sys.executable, "-c", FILL_CACHE, str(data)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [process.communicate(timeout=120) for process in fillers]
    assert [process.returncode for process in fillers] == [0] * 4, outcomes
    assert all(out.strip() == "360" and "warning" not in err for out, err in outcomes), outcomes
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].endswith(".npz"), cached  # no temporary file left behind
    with np.load(tmp_path / "cache" / cached[0]) as arrays:
        assert arrays["images"].shape == (420, 48, 48)  # every split of the listing


def test_temporary_names_are_unique_and_keep_the_suffixes_libraries_check():
    names = {temporary_name(REPO / "x" / "model.keras") for _ in range(100)}
    assert len(names) == 100 and all(n.name.endswith(".keras") and n.parent == REPO / "x" for n in names)
    assert temporary_name(REPO / "train-3.weights.h5").name.endswith(".tmp.weights.h5")


def test_atomic_write_is_the_only_place_that_renames_into_place():
    sources = {path: path.read_text() for path in (REPO / "src" / "fer_bench").rglob("*.py")}
    renaming = sorted(str(path.relative_to(REPO)) for path, text in sources.items()
                      if "os.replace(" in text or ".replace(path)" in text or "os.rename(" in text)
    assert renaming == ["src/fer_bench/files.py"]


# --- seams ------------------------------------------------------------------------------------------------

def test_building_a_comparison_writes_nothing_and_writing_it_writes_its_figures(tmp_path):
    from fer_bench.reporting.compare import build_comparison, write_comparison

    finished_run(tmp_path / "runs", "a", 2)
    finished_run(tmp_path / "runs", "b", 9)
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    comparison = build_comparison(tmp_path / "runs")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before
    assert list(comparison.table["name"]) == ["a", "b"] and len(comparison.significance) == 1
    assert {"comparison.png", "per_class_f1.png", "confusion_matrices.png"} <= set(comparison.figures)
    out = write_comparison(comparison, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["comparison.csv", "comparison.md", "seeds.csv", "significance.csv", *comparison.figures])
    assert (out / "comparison.md").read_text() == comparison.document()


@pytest.mark.slow
def test_extra_callbacks_plug_into_training_and_each_phase_traces_its_step_once(fer_folder, monkeypatch):
    import keras
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from fer_bench.backends import configure_runtime
    from fer_bench.data.dataset import load_data
    from fer_bench.training.fit import train_model

    class Count(keras.callbacks.Callback):
        epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((epoch, sorted(logs)))

    exp = load_experiment(REPO / "configs" / "custom_cnn.yaml", [
        "data.classes=[angry, happy]", "train.epochs=2", "model.params.filters=[8]", "train.batch_size=8",
        "train.early_stopping_patience=null"])
    data = load_data(exp.data, exp.classes, fer_folder, progress=False)
    # train_step runs in Python only while TensorFlow traces it: a trace that creates the optimizer's
    # variables is traced again (seconds a phase), unless they exist before fit starts.
    traces, step = [], TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step", lambda self, batch: traces.append(1) or step(self, batch))
    result = train_model(exp, data, configure_runtime(exp.runtime, 0, False), callbacks=[Count()])
    assert [epoch for epoch, _ in Count.epochs] == [0, 1] and len(result.history) == 2
    assert "val_accuracy" in Count.epochs[0][1]
    assert len(traces) == 1


# --- tests that can fail ------------------------------------------------------------------------------------

def test_intervals_bound_both_ends_and_options_keep_types_apart():
    assert Interval(0.0, 1.0).allows(1.0) and not Interval(0.0, 1.0).allows(1.01)
    assert not Interval(0.0, 1.0, high_open=True).allows(1.0)
    assert not Interval(1).allows(True)  # a bool is no number here
    assert Options((True, False)).allows(True) and not Options((True, False)).allows(1)
    with pytest.raises(ConfigError, match=r"train.momentum must be in \[0.0, 1.0\]; got 1.5"):
        load_experiment(REPO / "configs" / "custom_cnn.yaml", ["train.momentum=1.5"])
    with pytest.raises(ConfigError, match=r"augment.rotation must be in \[0.0, 180.0\]; got 200.0"):
        load_experiment(REPO / "configs" / "custom_cnn.yaml", ["augment.rotation=200.0"])


def test_augmentation_differs_from_epoch_to_epoch_even_where_the_order_cannot():
    from fer_bench.data.pipeline import training_dataset

    # Every image the same: shuffling changes nothing, so any difference comes from the augmentation's seed.
    images = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 48, 48), dtype=np.uint8), 8, axis=0)
    dataset, steps = training_dataset(images, np.zeros(8, int), 7, 8, AugmentConfig(rotation=20, shift=0.1), seed=3,
                                      num_epochs=2)
    first, second = [x for x, _ in dataset.as_numpy_iterator()]
    assert steps == 1 and not np.allclose(first, second)


@pytest.mark.parametrize("config", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_names_the_key_it_gets_wrong(config):
    """Whatever the config, a bad value's error names its full key."""
    for override, key in (("train.epochs=0", "train.epochs"), ("augment.zoom=-1", "augment.zoom"),
                          ("runtime.backend=torch", "runtime.backend"), ("data.colour=sepia", "data.colour"),
                          ("model.params.nope=1", "model.params.nope")):
        with pytest.raises(ConfigError) as error:
            load_experiment(config, [override])
        assert key in str(error.value), (override, str(error.value))


@pytest.mark.slow
def test_tensorboard_logs_every_epoch_into_the_run_folder(fer_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["run", str(REPO / "configs" / "custom_cnn.yaml"), "--data-dir", str(fer_folder),
                                 "--results-dir", str(tmp_path), "--set", "data.classes=[angry, happy]",
                                 "--set", "train.epochs=2", "--set", "model.params.filters=[8]",
                                 "--set", "train.batch_size=8", "--set", "train.tensorboard=true"])
    assert result.exit_code == 0, result.output
    for part in ("train", "validation"):
        events = EventAccumulator(str(tmp_path / "custom_cnn" / "tensorboard" / part)).Reload()
        steps = [event.step for event in events.Tensors("epoch_accuracy")]
        assert steps == [0, 1], (part, events.Tags())


def test_tensorboard_without_its_package_is_one_line_at_load_time(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.tensorboard needs the tensorboard package, which is not installed"):
        load_experiment(REPO / "configs" / "custom_cnn.yaml", ["train.tensorboard=true"])
