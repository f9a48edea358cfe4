"""One experiment end to end: config -> data -> model -> train -> evaluate -> artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


from fer_bench.artifacts import METRICS_FILE, RunDirectory, environment_record, now, write_evaluation
from fer_bench.config import Experiment, load_config, to_dict
from fer_bench.data import FerData, load_data, resolve_source
from fer_bench.errors import FerBenchError, RunError
from fer_bench.evaluate import SplitPredictions, classification_metrics
from fer_bench.models import check_model_config

SPLITS_EVALUATED = ("validation", "test")


def load_experiment(path: Path | str, overrides: list[str] | None = None) -> Experiment:
    """Load and fully validate an experiment file: schema, then the model registry's own checks."""
    exp = load_config(path, overrides)
    check_model_config(exp)
    return exp


def choose_run_directory(results_dir: Path, name: str, explicit_name: bool, restart: bool) -> RunDirectory:
    """Where this run goes. A finished run is never overwritten unless `restart` says so.

    An unfinished folder of the same name is taken over (so that the same command picks up where
    it stopped); a finished one gets a numbered sibling, or an error when the name was explicit.
    """
    path = results_dir / name
    if not path.exists():
        return RunDirectory(path)
    if restart:
        shutil.rmtree(path)
        return RunDirectory(path)
    if RunDirectory(path).status().get("state") != "finished":
        return RunDirectory(path)
    if explicit_name:
        raise RunError(f"run {path} already finished; pass --restart to redo it, or another --name")
    for number in range(2, 10_000):
        candidate = results_dir / f"{name}-{number}"
        if not candidate.exists() or RunDirectory(candidate).status().get("state") != "finished":
            return RunDirectory(candidate)
    raise RunError(f"too many runs named {name} under {results_dir}")


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
        f"best      epoch {best_epoch} by validation accuracy",
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
                   name: str | None = None, restart: bool = False) -> Path:
    """Train and evaluate one experiment; return its finished run directory."""
    resolve_source(exp.data, data_dir)  # a missing data path fails here, before a run folder exists
    run_name = name or exp.name or "run"
    run = choose_run_directory(Path(results_dir), run_name, name is not None, restart).create()
    exp = dataclasses.replace(exp, name=run.path.name)
    started, clock = now(), time.perf_counter()
    run.set_status("running", started=started)
    run.write_yaml("config.yaml", to_dict(exp))
    try:
        with _logging_to(run.file("log.txt")):
            print(f"== {exp.name}: {exp.model.name} -> {run.path}", file=sys.stderr, flush=True)
            metrics = _train_and_evaluate(exp, run, data_dir, started, clock)
    except KeyboardInterrupt:
        run.set_status("failed", started=started, error="interrupted")
        raise
    except FerBenchError as exc:
        run.set_status("failed", started=started, error=str(exc))
        raise
    except Exception as exc:
        run.set_status("failed", started=started, error=f"{exc.__class__.__name__}: {exc}")
        raise
    run.set_status("finished", started=started, finished=now(), test_accuracy=metrics["test"]["accuracy"])
    return run.path


def _train_and_evaluate(exp: Experiment, run: RunDirectory, data_dir: str | Path | None, started: str,
                        clock: float) -> dict:
    import pandas as pd

    from fer_bench.charts import curves_figure
    from fer_bench.inference import keras_predictor, predict_with_tta
    from fer_bench.train import configure_runtime, predict_probabilities, train_model

    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    data = load_data(exp.data, exp.classes, data_dir, seed=exp.train.seed)
    seconds["data"] = round(time.perf_counter() - tick, 2)
    runtime = configure_runtime(exp.runtime, exp.train.seed, exp.train.deterministic)
    result = train_model(exp, data, runtime)
    seconds.update({f"train_{phase}": s for phase, s in result.phase_seconds.items()})
    run.save_model(result.model)
    run.write_table("history.csv", pd.DataFrame(result.history))
    run.write_figure("curves.png", curves_figure(result.history, f"{exp.name}: training curves"))

    tick = time.perf_counter()
    predictions = {
        split: SplitPredictions(data.split(split).names, data.split(split).labels,
                                predict_probabilities(result.model, data.split(split).images),
                                ~data.unique_mask(split))
        for split in SPLITS_EVALUATED
    }
    metrics = write_evaluation(run, data.classes, predictions, exp.name)
    if exp.evaluate.tta != "none":
        # Reported beside the plain scores, never in their place: selection stays on plain validation accuracy.
        probabilities = predict_with_tta(keras_predictor(result.model, data.classes), data.test.images,
                                         exp.evaluate.tta)
        metrics["test_tta"] = {"mode": exp.evaluate.tta,
                               **classification_metrics(data.test.labels, probabilities.argmax(axis=1), data.classes)}
    seconds["evaluate"] = round(time.perf_counter() - tick, 2)
    seconds["total"] = round(time.perf_counter() - clock, 2)

    run.write_json("environment.json", {
        **environment_record(), "runtime": result.runtime, "data": data.record(), "seed": exp.train.seed,
        "deterministic": exp.train.deterministic, "global_batch_size": result.global_batch_size,
        "started": started, "finished": now(), "seconds": seconds,
    })
    record = {
        "run": exp.name, "model": exp.model.name, "kind": "keras", "classes": list(data.classes),
        "data_fingerprint": data.fingerprint, "protocol": data.protocol,
        "parameters": int(result.model.count_params()), "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "training_seconds": round(sum(result.phase_seconds.values()), 2),
        "weights": exp.model.weights, **metrics,
    }
    run.write_json(METRICS_FILE, record)  # last: its presence marks a complete set of artifacts
    for line in summary_lines(exp.name, exp, data, metrics, result.best_epoch, seconds["total"], run.path):
        print(line)
    return record
