"""One trial inside a worker: an ordinary run, with the data the driver decoded and the sweep's labels.

Whatever executes trials (a local worker process, a Ray task) calls `run_trial` and gets a
`TrialOutcome` back; a trial's own failure is an outcome, never an exception, so that it never stops
the others. Run folders travel between machines as tar archives (`pack_folder`, `unpack_folder`),
so a Ray worker needs no file system shared with the driver.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_bench.config import Experiment
from fer_bench.data.dataset import FerData
from fer_bench.errors import FerBenchError
from fer_bench.files import METRICS_FILE, put_folder
from fer_bench.runs.artifacts import LOCK_FILE
from fer_bench.sweeps.plan import Trial


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to run one trial; the data travels beside it, once per worker (see `data_key`)."""

    trial: Trial
    experiment: Experiment
    data_key: str  # trials with the same key train on the same FerData
    sweep: str
    restart: bool = False

    def record(self) -> dict:
        """The trial's place in the sweep, kept in its metrics.json (compare groups seeds by `group`)."""
        return {"name": self.sweep, "trial": self.trial.id, "group": self.trial.group, "seed": self.trial.seed,
                "config": str(self.trial.config), "overrides": list(self.trial.overrides)}


@dataclass
class TrialOutcome:
    id: str
    state: str  # finished | failed
    scores: dict[str, float] = field(default_factory=dict)
    training_seconds: float | None = None
    error: str | None = None


def run_trial(task: TrialTask, data: FerData, sweep_dir: Path, worker: dict) -> TrialOutcome:
    """Train one trial into `sweep_dir/<trial id>/` (resuming what an earlier attempt left there)."""
    from fer_bench.runs.runner import run_experiment

    folder = Path(sweep_dir).joinpath(*task.trial.parts)
    try:
        path = run_experiment(task.experiment, results_dir=folder.parent, name=folder.name, restart=task.restart,
                              data=data, sweep=task.record(), worker=worker)
        metrics = json.loads((path / METRICS_FILE).read_text())
    except FerBenchError as exc:
        return TrialOutcome(task.trial.id, "failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a trial's bug is its outcome; the sweep goes on with the others
        return TrialOutcome(task.trial.id, "failed", error=f"{exc.__class__.__name__}: {exc}")
    return outcome_of(task.trial.id, metrics)


def outcome_of(trial_id: str, metrics: dict) -> TrialOutcome:
    """A finished trial's outcome, read from its metrics.json (also for trials finished by an earlier sweep)."""
    return TrialOutcome(trial_id, "finished", training_seconds=metrics.get("training_seconds"), scores={
        "test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
        "validation_accuracy": metrics["validation"]["accuracy"]})


def thread_environment(threads: int) -> dict[str, str]:
    """Variables that hold TensorFlow's (and OpenMP's) thread pools to `threads`, set before TensorFlow loads."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(min(threads, 2)),
            "OMP_NUM_THREADS": str(threads)}


def pack_folder(folder: Path) -> bytes | None:
    """A run folder as an uncompressed tar archive (its model file is compressed already), without its lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.name != LOCK_FILE:
                archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def unpack_folder(archive: bytes, folder: Path) -> None:
    """Put a packed run folder at `folder` whole (see files.put_folder), replacing what an earlier attempt left."""
    def fill(staging: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(staging, filter="data")

    put_folder(fill, folder)


def worker_description(**facts: Any) -> dict:
    import platform
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "python": platform.python_version(), **facts}
