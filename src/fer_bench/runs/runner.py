"""One experiment end to end: config -> data -> model -> train -> evaluate -> artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fer_bench.config import Experiment, from_dict, read_yaml, to_dict
from fer_bench.data.dataset import FerData, data_notices, load_data
from fer_bench.errors import FerBenchError, RunError
from fer_bench.evaluation.metrics import SplitPredictions, single_class_warning
from fer_bench.experiment import data_config, load_experiment, model_kind, seed_moves
from fer_bench.files import METRICS_FILE, MODEL_FILE
from fer_bench.runs.artifacts import (RunDirectory, earlier_stages, environment_record, now, numbered_siblings,
                                     write_evaluation)

SPLITS_EVALUATED = ("validation", "test")
CHECKPOINT_DIR = "checkpoint"  # per-epoch training state, removed once the run has finished


def choose_run_directory(results_dir: Path, name: str, explicit_name: bool, restart: bool = False) -> RunDirectory:
    """Where this run goes, locked for this process (see artifacts: a second process never shares it).

    An unfinished folder of the same name is taken over (so that the same command picks up where
    it stopped); a finished one, or one that another process is writing, gets a numbered sibling,
    or an error when the name was explicit; `restart` replaces a finished one.
    """
    path = results_dir / name
    run = RunDirectory(path)
    if not path.exists() or restart or run.state() != "finished":
        if run.acquire():
            return run
        if explicit_name:
            raise RunError(f"run {path} is in progress in another process (pid {run.holder()}); wait for it to "
                           "finish, or pass another --name")
    elif explicit_name:
        raise RunError(f"run {path} already finished; pass --restart to redo it, or another --name")
    for sibling in numbered_siblings(results_dir, name):
        candidate = RunDirectory(sibling)
        if candidate.state() != "finished" and candidate.acquire():
            return candidate


def same_experiment(run: RunDirectory, exp: Experiment) -> bool:
    """Whether the run's folder holds (or began) this very experiment, or nothing yet."""
    previous = run.file("config.yaml")
    if not previous.is_file():
        return True
    try:
        # Read through the schema, so keys added since the run began take their defaults: a run that an
        # earlier fer-bench checkpointed resumes unless something it set has changed.
        earlier = from_dict(read_yaml(previous))
    except FerBenchError:
        return False
    return to_dict(earlier) == to_dict(exp)


class _Tee:
    """Write to the console and to the run's log file at once."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def close(self) -> None:
        """Libraries that grabbed sys.stderr may close it at exit; the streams are not theirs to close."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams[0], name)


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    with path.open("a") as log:
        saved = sys.stderr
        sys.stderr = _Tee(saved, log)
        try:
            yield
        finally:
            sys.stderr = saved


def summary_lines(name: str, exp: Experiment, data: FerData, metrics: dict, best_epoch: int | None,
                  seconds: float, path: Path) -> list[str]:
    test, val, unique = metrics["test"], metrics["validation"], metrics["test_unique"]
    return [
        f"run       {name}  ({exp.model.name}, {len(data.classes)} classes, {data.protocol} split)",
        f"data      train {len(data.train)}  validation {len(data.validation)}  test {len(data.test)}  "
        f"[{data.fingerprint}]",
        *([f"best      epoch {best_epoch} by validation accuracy"] if best_epoch else []),
        f"valid     accuracy {val['accuracy']:.4f}  macro-F1 {val['macro_f1']:.4f}",
        f"test      accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  "
        f"balanced {test['balanced_accuracy']:.4f}",
        f"test*     accuracy {unique.get('accuracy', float('nan')):.4f} on the {unique['count']} test images "
        "with no copy in train",
        *([f"test+TTA  accuracy {metrics['test_tta']['accuracy']:.4f} ({metrics['test_tta']['mode']})"]
          if "test_tta" in metrics else []),
        f"time      {seconds:.0f}s",
        f"artifacts {path}",
    ]


def run_experiment(exp: Experiment, data_dir: str | Path | None = None, results_dir: str | Path = "results",
                   name: str | None = None, restart: bool = False, data: FerData | None = None,
                   sweep: dict | None = None, worker: dict | None = None) -> Path:
    """Train and evaluate one experiment; return its finished run directory.

    `data`, when given, is the dataset this experiment's data section loads (a feature run hands its
    own to the CNN it trains first; a sweep, to every trial), so it is not loaded again. A sweep's
    trial records its place in the sweep (`sweep`: name, trial, group, seed) in metrics.json, and the
    worker that ran it (`worker`) in environment.json.
    """
    from fer_bench.backends import activate

    activate(exp.runtime, exp.train.deterministic)  # before Keras starts, and before any folder is made
    run = choose_run_directory(Path(results_dir), name or exp.name or "run", name is not None, restart)
    try:
        return _run_locked(exp, run, data_dir, restart, data, {"sweep": sweep, "worker": worker})
    finally:
        run.release()


def _run_locked(exp: Experiment, run: RunDirectory, data_dir: str | Path | None, restart: bool,
                data: FerData | None, provenance: dict[str, dict | None]) -> Path:
    exp = dataclasses.replace(exp, name=run.path.name)
    if not restart and not same_experiment(run, exp):
        # A checkpoint is training progress that only the same experiment may continue; without one,
        # the unfinished folder holds nothing to resume and the new experiment replaces it.
        if run.file(CHECKPOINT_DIR).exists():
            raise RunError(f"{run.path} holds an unfinished run of a different config; pass --restart to "
                           "replace it, or another --name")
        restart = True
    clock = time.perf_counter()
    try:
        data = data or load_data(data_config(exp), exp.classes, data_dir)
    except BaseException:
        if run.made is not None:
            # The folders were made here only to hold the lock: a bad data source leaves no trace behind.
            run.release()
            shutil.rmtree(run.made, ignore_errors=True)
        raise
    previous = run.status()
    if restart:
        run.clear()
        previous = {}
    resumed = run.file(CHECKPOINT_DIR).exists() and "started" in previous
    # A resumed run keeps the start of its first attempt, so its dates and durations cover all of it.
    started = previous["started"] if resumed else now()
    resumes = [*previous.get("resumed", []), now()] if resumed else []
    with run.lifecycle(started, **({"resumed": resumes} if resumes else {})) as finished:
        run.write_yaml("config.yaml", to_dict(exp))
        with _logging_to(run.file("log.txt")):
            print(f"== {exp.name}: {exp.model.name} -> {run.path}", file=sys.stderr, flush=True)
            for line in data_notices(data.skipped, data.resized):
                print(line, file=sys.stderr, flush=True)
            metrics = _train_and_evaluate(exp, run, data, started, clock, resumes, provenance)
        finished["test_accuracy"] = metrics["test"]["accuracy"]
    shutil.rmtree(run.file(CHECKPOINT_DIR), ignore_errors=True)
    return run.path


@dataclass
class Trained:
    """What a trainer hands back: a predictor, its scores where already computed, and its record."""

    predictor: Any  # inference.Predictor
    record: dict  # into metrics.json
    environment: dict  # into environment.json
    seconds: dict[str, float]
    best_epoch: int | None = None
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)


def _train_keras(exp: Experiment, data: FerData, run: RunDirectory) -> Trained:
    import pandas as pd

    from fer_bench.backends import configure_runtime, import_keras
    from fer_bench.evaluation.charts import curves_figure
    from fer_bench.evaluation.predictors import keras_predictor
    from fer_bench.training.fit import train_model

    try:
        runtime = configure_runtime(exp.runtime, exp.train.seed, exp.train.deterministic)
        print(runtime.describe(), file=sys.stderr, flush=True)
        result = train_model(exp, data, runtime, checkpoint_dir=run.file(CHECKPOINT_DIR), callbacks=_trackers(exp, run))
    finally:
        # The run's dtype policy is the run's: its model keeps it in its layers, and what this process builds next
        # (another run, a test's model) starts from Keras' default. Not before configure_runtime has loaded Keras:
        # loading it here would fix the backend before the run chose one.
        if "keras" in sys.modules:
            import_keras().mixed_precision.set_global_policy("float32")
    run.save_model(result.model)
    run.write_table("history.csv", pd.DataFrame(result.history))
    run.write_figure("curves.png", curves_figure(result.history, f"{exp.name}: training curves"))
    return Trained(
        predictor=keras_predictor(result.model, data.classes),
        record={"kind": "keras", "parameters": int(result.model.count_params()), "best_epoch": result.best_epoch,
                "epochs_run": len(result.history), "training_seconds": round(sum(result.phase_seconds.values()), 2),
                "weights": exp.model.weights, "earlier_stages": earlier_stages(exp.model.weights),
                "imbalance": result.imbalance},
        environment={"runtime": result.runtime, "deterministic": exp.train.deterministic,
                     "global_batch_size": result.global_batch_size},
        seconds={f"train_{phase}": s for phase, s in result.phase_seconds.items()},
        best_epoch=result.best_epoch,
    )


TENSORBOARD_DIR = "tensorboard"


def _trackers(exp: Experiment, run: RunDirectory) -> list:
    """Callbacks that report training elsewhere, plugged into the trainer's seam: TensorBoard's event files."""
    if not exp.train.tensorboard:
        return []
    from fer_bench.backends import import_keras

    # The graph is TensorFlow's alone; epoch scalars are what every backend writes. A resumed run adds to the same
    # folder, which TensorBoard reads as one run.
    return [import_keras().callbacks.TensorBoard(log_dir=str(run.file(TENSORBOARD_DIR)), write_graph=False)]


def _feature_source(exp: Experiment, run: RunDirectory, data: FerData) -> Path | None:
    """The model.keras the cnn extractor reads: a finished run's, or one trained here first."""
    features = exp.features
    if features.extractor != "cnn":
        return None
    if features.from_run is not None:
        return Path(features.from_run) / MODEL_FILE  # checked when the config was loaded
    # First stage: the CNN experiment, on this run's data, trained into <run>/cnn/ (or resumed there).
    stage_dir = RunDirectory(run.file("cnn"))
    if stage_dir.state() == "finished":
        return stage_dir.file(MODEL_FILE)
    stage = load_experiment(features.cnn_config, list(features.cnn_overrides))
    stage = dataclasses.replace(stage, data=exp.data, train=dataclasses.replace(stage.train, seed=exp.train.seed))
    given = "".join(f" --set {o}" for o in features.cnn_overrides)
    print(f"== first stage: training {features.cnn_config}{given} for its features", file=sys.stderr, flush=True)
    return run_experiment(stage, results_dir=run.path, name="cnn", data=data) / MODEL_FILE


def _train_features(exp: Experiment, data: FerData, run: RunDirectory) -> Trained:
    from fer_bench.evaluation.predictors import Predictor
    from fer_bench.models.features import fit_feature_model

    tick = time.perf_counter()
    source = _feature_source(exp, run, data)
    stage_seconds = round(time.perf_counter() - tick, 2)
    fit = fit_feature_model(exp, data, source)
    run.save_joblib(fit.model)
    if fit.search_table is not None:
        run.write_table("search.csv", fit.search_table)
    seconds = {"first_stage": stage_seconds, **{f"train_{k}": v for k, v in fit.record["seconds"].items()}}
    return Trained(
        predictor=Predictor(data.classes, fit.model.predict_proba, "model.joblib"),
        record={"kind": "features", "parameters": None, "epochs_run": None,
                "training_seconds": round(sum(seconds.values()), 2), "features": fit.record,
                # A first stage trained here is in training_seconds already; a finished run's is an earlier stage.
                "earlier_stages": earlier_stages(str(source)) if exp.features.from_run is not None else []},
        environment={},
        seconds=seconds,
        probabilities={s: fit.model.probabilities_from_features(fit.features[s]) for s in SPLITS_EVALUATED},
    )


TRAINERS = {"keras": _train_keras, "features": _train_features}


def _train_and_evaluate(exp: Experiment, run: RunDirectory, data: FerData, started: str, clock: float,
                        resumes: list[str], provenance: dict[str, dict | None]) -> dict:
    from fer_bench.evaluation.tta import tta_scores

    seconds: dict[str, float] = {"data": round(time.perf_counter() - clock, 2)}
    trained = TRAINERS[model_kind(exp.model.name)](exp, data, run)
    seconds.update(trained.seconds)

    tick = time.perf_counter()
    predictions = {}
    for split in SPLITS_EVALUATED:
        part = data.split(split)
        probabilities = trained.probabilities.get(split)
        if probabilities is None:
            probabilities = trained.predictor.predict_proba(part.images)
        predictions[split] = SplitPredictions(part.names, part.labels, probabilities, ~data.unique_mask(split))
    metrics = write_evaluation(run, data.classes, predictions, exp.name)
    collapsed = single_class_warning(predictions["test"].predicted, data.classes, "test")
    if collapsed:
        print(collapsed, file=sys.stderr, flush=True)
    if exp.evaluate.tta != "none":
        # Reported beside the plain scores, never in their place: selection stays on plain validation accuracy.
        metrics["test_tta"] = tta_scores(trained.predictor, data.test.images, data.test.labels, exp.evaluate.tta)
    seconds["evaluate"] = round(time.perf_counter() - tick, 2)
    seconds["total"] = round(time.perf_counter() - clock, 2)

    run.write_json("environment.json", {
        **environment_record(), **trained.environment, "data": data.record(), "seed": exp.train.seed,
        "seed_moves": seed_moves(exp),
        "started": started, "finished": now(), "seconds": seconds, **({"resumed": resumes} if resumes else {}),
        **({"worker": provenance["worker"]} if provenance.get("worker") else {}),
    })
    record = {
        "run": exp.name, "model": exp.model.name, "classes": list(data.classes),
        "data_fingerprint": data.fingerprint, "protocol": data.protocol, **trained.record, **metrics,
        **({"sweep": provenance["sweep"]} if provenance.get("sweep") else {}),
    }
    run.write_json(METRICS_FILE, record)  # last: its presence marks a complete set of artifacts
    for line in summary_lines(exp.name, exp, data, metrics, trained.best_epoch, seconds["total"], run.path):
        print(line)
    return record
