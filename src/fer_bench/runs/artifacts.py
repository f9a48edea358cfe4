"""The run directory: every file written atomically, a status that says how far the run got.

A reader never sees half a file: each write goes through `files.atomic_write` (a temporary name
of this process's own, moved into place with `os.replace`). `metrics.json` is written last, and `status.json` says `running`, `finished` or
`failed` (with the error), so `compare` reads finished runs only.

The process writing a run holds an exclusive lock on its `.lock` file. The kernel drops the lock
when that process ends, however it ends (SIGKILL included), so a `running` status whose lock nobody
holds is read as `interrupted`, and a second process never writes into a run that is in progress.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fer_bench.backends import cpu_features
from fer_bench.errors import FerBenchError, RunError
from fer_bench.evaluation.metrics import SplitPredictions, confusion, report_text, score_splits
from fer_bench.files import FOLDER_NAME_RULE, METRICS_FILE, MODEL_FILE, STATUS_FILE, atomic_write, is_folder_name

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs of the same name must not overlap there
    fcntl = None

LOCK_FILE = ".lock"
PACKAGES = ("fer-bench", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn", "pandas",
            "matplotlib", "pyyaml", "typer", "pillow", "kagglehub")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def numbered_siblings(folder: Path, name: str) -> Iterator[Path]:
    """folder/name-2, folder/name-3, ...: where a run or an evaluation goes when its name is taken."""
    for number in range(2, 10_000):
        yield folder / f"{name}-{number}"
    raise RunError(f"too many folders named {name}-N under {folder}")


def check_name(name: str, option: str = "--name") -> str:
    """`name` when it is one folder name (see files.is_folder_name), else a one-line error naming the option."""
    if not is_folder_name(name):
        raise FerBenchError(f"{option} must be {FOLDER_NAME_RULE}; got {name!r}")
    return name


class RunDirectory:
    """One run's folder under the results directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: Any = None  # the open lock file while this process holds the run
        self.made: Path | None = None  # the outermost folder that `acquire` had to create, if any

    def create(self) -> "RunDirectory":
        if self.path.exists() and not self.path.is_dir():
            raise FerBenchError(f"{self.path} is a file; give a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FerBenchError(f"cannot create folder {self.path}: {exc.strerror or exc}") from None
        if not os.access(self.path, os.W_OK):
            raise FerBenchError(f"folder is not writable: {self.path}")
        return self

    # -- ownership ---------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Create the folder and take its lock; False when another process holds it."""
        missing = [folder for folder in (self.path, *self.path.parents) if not folder.exists()]
        self.made = self.made or (missing[-1] if missing else None)
        self.create()
        if fcntl is None or self._lock is not None:
            return True
        handle = self.file(LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the lock
            self._lock = None

    def in_use(self) -> bool:
        """True while some process (this one included) holds the run's lock."""
        if self._lock is not None:
            return True
        if fcntl is None or not self.file(LOCK_FILE).is_file():
            return False
        with self.file(LOCK_FILE).open("r") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    def holder(self) -> str:
        """The pid written by the process that holds the lock, for messages."""
        try:
            return self.file(LOCK_FILE).read_text().strip() or "?"
        except OSError:
            return "?"

    def clear(self) -> None:
        """Remove everything in the folder but the lock this process holds."""
        for child in self.path.iterdir():
            if child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.file(name), lambda tmp: tmp.write_text(text))

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

    def write_yaml(self, name: str, data: Any) -> None:
        self.write_text(name, yaml.safe_dump(data, sort_keys=False))

    def write_table(self, name: str, frame: Any) -> None:
        atomic_write(self.file(name), lambda tmp: frame.to_csv(tmp, index=False))

    def write_figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        try:
            atomic_write(self.file(name), lambda tmp: figure.savefig(tmp, dpi=110, format=Path(name).suffix[1:]))
        finally:
            plt.close(figure)

    def write_image(self, name: str, image: Any) -> None:
        """Save a PIL image; the format follows the name's suffix."""
        atomic_write(self.file(name), lambda tmp: image.save(tmp, format=Path(name).suffix[1:].upper().replace("JPG", "JPEG")))

    def save_model(self, model: Any, name: str = MODEL_FILE) -> None:
        atomic_write(self.file(name), model.save)  # the temporary name keeps .keras, which Keras insists on

    def save_joblib(self, obj: Any, name: str = "model.joblib") -> None:
        import joblib

        atomic_write(self.file(name), lambda tmp: joblib.dump(obj, tmp))

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def status(self) -> dict:
        try:
            return self.read_json(STATUS_FILE)
        except (OSError, ValueError):
            return {}

    def state(self) -> str | None:
        """finished, failed, running (its process is alive), interrupted (its process died), or None."""
        state = self.status().get("state")
        if state == "running" and not self.in_use():
            return "interrupted"
        return state

    def set_status(self, state: str, **info: Any) -> None:
        self.write_json(STATUS_FILE, {"state": state, "updated": now(), **info})

    @contextlib.contextmanager
    def lifecycle(self, started: str | None = None, **info: Any) -> Iterator[dict]:
        """One attempt at writing this folder, the same for a run, an ensemble and an evaluation.

        Holds the lock throughout (taking it here unless this process holds it already) and says
        `running` while the body writes; then `finished` if the body wrote metrics.json (last),
        `interrupted` on Ctrl-C (the same command resumes), or `failed` with the error. What the
        body puts in the yielded dict is recorded with `finished`.
        """
        took_lock = self._lock is None
        if not self.acquire():
            raise RunError(f"{self.path} is being written by another process (pid {self.holder()}); wait for it, "
                           "or choose another name")
        started = started or now()
        finished: dict[str, Any] = {}
        try:
            self.set_status("running", started=started, pid=os.getpid(), **info)
            try:
                yield finished
                if not self.file(METRICS_FILE).is_file():
                    raise RunError(f"{self.path}: {METRICS_FILE} was not written")
            except KeyboardInterrupt:
                self._settle("interrupted", started=started, error="interrupted by Ctrl-C", **info)
                raise
            except FerBenchError as exc:
                self._settle("failed", started=started, error=str(exc), **info)
                raise
            except Exception as exc:
                self._settle("failed", started=started, error=f"{exc.__class__.__name__}: {exc}", **info)
                raise
            self.set_status("finished", started=started, finished=now(), **info, **finished)
        finally:
            if took_lock:
                self.release()

    def _settle(self, state: str, **info: Any) -> None:
        try:
            self.set_status(state, **info)
        except FerBenchError:
            pass  # e.g. the disk is full: the original error is the one to report


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the fer-bench checkout, with '+dirty' when it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_record() -> dict:
    """Where and with what a run was made."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(),  # bfloat16 support (AMX, AVX-512): what runtime.mixed_precision=auto reads
        "packages": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
        "keras_backend": keras_backend(),
    }


def earlier_stages(weights: str | None) -> list[dict[str, Any]]:
    """The trainings that a model continued from, first stage first (each a run name and its training_seconds):
    read from the metrics.json beside a weights file that is a finished run's model.keras; [] for any other file."""
    if not weights or Path(weights).name != MODEL_FILE:
        return []
    try:
        metrics = RunDirectory(Path(weights).parent).read_json(METRICS_FILE)
    except (OSError, ValueError):
        return []
    if not isinstance(metrics, dict) or metrics.get("training_seconds") is None:
        return []
    return training_stages(metrics)


def training_stages(metrics: dict) -> list[dict[str, Any]]:
    """Every training that the run's predictions took, first stage first: an ensemble's are its members', each
    counted once (members may share a first stage); a run's are the stages it continued from, and its own."""
    if metrics.get("kind") == "ensemble":
        return list(metrics.get("stages") or [])
    own = {"run": metrics.get("run"), "training_seconds": metrics.get("training_seconds")}
    return [*metrics.get("earlier_stages", []), own] if own["training_seconds"] is not None else []


def union_of_stages(stage_lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The stages of several lineages, each run once, in first-seen order."""
    seen: dict[str, dict[str, Any]] = {}
    for stages in stage_lists:
        for stage in stages:
            seen.setdefault(stage["run"], stage)
    return list(seen.values())


def keras_backend() -> str | None:
    """The Keras backend this process runs on (tensorflow, jax, torch), or None where Keras was never loaded."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None


def prediction_table(predictions: dict[str, SplitPredictions], classes: tuple[str, ...]) -> Any:
    """One row per evaluated image: split, file, true and predicted class, duplicate flag, probabilities."""
    import pandas as pd

    frames = []
    for split, pred in predictions.items():
        frame = pd.DataFrame({
            "split": split,
            "index": np.arange(len(pred.labels)),
            "file": pred.names,
            "true": [classes[i] for i in pred.labels],
            "predicted": [classes[i] for i in pred.predicted],
            "correct": pred.labels == pred.predicted,
        })
        if pred.duplicate is not None:
            frame["duplicate_of_train"] = pred.duplicate
        for column, name in enumerate(classes):
            frame[f"p_{name}"] = np.round(pred.probabilities[:, column], 6)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_evaluation(run: RunDirectory, classes: tuple[str, ...], predictions: dict[str, SplitPredictions],
                     title: str) -> dict:
    """Predictions, report, and the confusion matrix of the last split (test, when there is one); return metrics."""
    import pandas as pd

    from fer_bench.evaluation.charts import confusion_figure

    metrics = score_splits(predictions, classes)
    run.write_table("predictions.csv", prediction_table(predictions, classes))
    headline = "test" if "test" in predictions else list(predictions)[-1]
    pred = predictions[headline]
    matrix = confusion(pred.labels, pred.predicted, len(classes))
    frame = pd.DataFrame(matrix, columns=list(classes))
    frame.insert(0, "true", list(classes))
    run.write_table("confusion_matrix.csv", frame)
    run.write_figure("confusion_matrix.png", confusion_figure(matrix, classes, f"{title}: {headline} confusion matrix"))
    run.write_text("classification_report.txt", "\n".join(
        f"== {split} ({len(p.labels)} images) ==\n" + report_text(p.labels, p.predicted, classes)
        for split, p in predictions.items()))
    return metrics


@dataclass
class Run:
    """A finished run as read back from its folder: what `compare` and `ensemble` need."""

    name: str
    path: Path
    metrics: dict
    config: dict
    predictions: Any
    history: Any | None
    environment: dict = field(default_factory=dict)  # environment.json; {} where missing or unreadable
    # What is derived from the run, once: a comparison of 1,000 runs asks for each split's rows many times.
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def classes(self) -> list[str]:
        return self.metrics["classes"]

    def split_predictions(self, split: str) -> Any:
        return self.memo(("split", split), lambda: self.predictions[self.predictions["split"] == split])

    def memo(self, key: Any, compute: Any) -> Any:
        """`compute()`, made once per run and key (the run folder does not change while it is read)."""
        if key not in self.derived:
            self.derived[key] = compute()
        return self.derived[key]


def run_folders(root: Path) -> list[Path]:
    """Every folder under `root` (recursively, `root` too) that holds a run's status.json, in sorted order;
    cross-dataset evaluations (a run's eval/ folder) are part of their run, not runs of their own."""
    root = Path(root)
    return [status.parent for status in sorted(root.rglob(STATUS_FILE))
            if "eval" not in status.parent.relative_to(root).parts[:-1]]


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it: 10x faster
SCORED_COLUMNS = ("split", "file", "true", "predicted")  # what scores and tests need; the rest are probabilities


def read_run(path: Path, name: str, probabilities: bool = True) -> Run:
    """Load one run folder, or raise RunError saying why it cannot be compared; without `probabilities`, only
    the predictions' SCORED_COLUMNS, which is a fifth of the memory (compare holds a thousand runs at once)."""
    import pandas as pd

    run = RunDirectory(path)
    state = run.state()
    if state == "interrupted":
        raise RunError(f"{name}: interrupted (its process ended or was stopped while training; run the same command "
                       "again to resume it)")
    if state != "finished":
        raise RunError(f"{name}: not finished (status {state or 'missing'})")

    def load(file: str, reader: Any, optional: bool = False) -> Any:
        if optional and not run.file(file).is_file():
            return None
        try:
            return reader(run.file(file))
        except FileNotFoundError:
            raise RunError(f"{name}: {file} is missing") from None
        except (ValueError, yaml.YAMLError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise RunError(f"{name}: {file} is unreadable ({exc.__class__.__name__})") from None

    metrics = load(METRICS_FILE, lambda p: json.loads(p.read_text()))
    config = load("config.yaml", lambda p: yaml.load(p.read_text(), Loader=SAFE_LOADER), optional=True)
    predictions = load("predictions.csv", lambda p: pd.read_csv(p, dtype={"split": "category"},
                                                               usecols=None if probabilities else lambda c: c in SCORED_COLUMNS))
    history = load("history.csv", pd.read_csv, optional=True)
    if not isinstance(metrics, dict) or "classes" not in metrics:
        raise RunError(f"{name}: {METRICS_FILE} is unreadable (no classes)")
    needed = {"split", "true", "predicted"}
    if not needed <= set(predictions.columns):
        raise RunError(f"{name}: predictions.csv lacks columns {sorted(needed - set(predictions.columns))}")
    try:  # only describes the run: a damaged one does not keep the run out of a comparison
        environment = load("environment.json", lambda p: json.loads(p.read_text()), optional=True)
    except RunError:
        environment = None
    return Run(name=name, path=path, metrics=metrics, config=config or {}, predictions=predictions, history=history,
               environment=environment if isinstance(environment, dict) else {})
