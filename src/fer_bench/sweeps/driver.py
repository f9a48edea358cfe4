"""The sweep's driver: check every trial, skip the finished ones, decode the data once, hand the rest
to an executor, and keep `sweep.json` and the console up to date as trials end.

`sweep.json` is the manifest: every trial, its overrides, group, state, attempts, score and error.
It is rewritten (atomically) after every event, so it is true even after the driver is killed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fer_bench.config import Experiment
from fer_bench.console import ProgressBar, duration
from fer_bench.data.dataset import FerData, load_data
from fer_bench.errors import FerBenchError, RunError
from fer_bench.experiment import data_config
from fer_bench.files import METRICS_FILE
from fer_bench.runs.artifacts import RunDirectory, environment_record, now
from fer_bench.runs.runner import same_experiment
from fer_bench.sweeps.executors import EXECUTORS, Executor
from fer_bench.sweeps.plan import SweepSpec, Trial, check_trials, expand
from fer_bench.sweeps.trial import TrialOutcome, TrialTask, outcome_of

MANIFEST = "sweep.json"


@dataclass
class SweepResult:
    folder: Path
    trials: list[dict]  # the manifest's trial entries

    def count(self, state: str) -> int:
        return sum(t["state"] == state for t in self.trials)

    @property
    def failed(self) -> list[dict]:
        return [t for t in self.trials if t["state"] != "finished"]


def data_key(task_data: dict, classes: tuple[str, ...]) -> str:
    """Trials whose data sections (and classes) agree train on the same images: one decode serves them all."""
    text = json.dumps([task_data, list(classes)], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class Progress:
    """The sweep as it goes: one live line on a terminal, one plain line per event everywhere (logs, CI)."""

    manifest: Manifest
    to_run: int
    start: float = field(default_factory=time.perf_counter)
    running: set[str] = field(default_factory=set)
    ended: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.bar = ProgressBar(self.to_run, "sweep")

    def _say(self, line: str) -> None:
        self.bar.close()  # wipes the live line (on a terminal only) before the plain one
        print(line, file=sys.stderr, flush=True)
        self.tick(force=True)

    def counts(self) -> str:
        left = self.to_run - self.ended - len(self.running)
        return (f"{self.ended - self.failed} done, {len(self.running)} running, {self.failed} failed, {left} left, "
                f"{duration(time.perf_counter() - self.start)}")

    def note(self, line: str) -> None:
        self._say(line)

    def started(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.manifest.update(trial_id, state="running", attempts=self.manifest.entry(trial_id).get("attempts", 0) + 1)
        self.tick(force=True)

    def retrying(self, trial_id: str, reason: str) -> None:
        self.running.discard(trial_id)
        self.manifest.update(trial_id, state="retrying", error=reason)
        self._say(f"  retry    {trial_id}: {reason}")

    def finished(self, outcome: TrialOutcome) -> None:
        self.running.discard(outcome.id)
        self.ended += 1
        self.manifest.update(outcome.id, state=outcome.state, scores=outcome.scores, error=outcome.error,
                             training_seconds=outcome.training_seconds)
        place = f"[{self.ended}/{self.to_run}]"
        if outcome.state == "finished":
            scores = outcome.scores
            line = (f"{place} finished {outcome.id}: test accuracy {scores['test_accuracy']:.4f}, "
                    f"macro-F1 {scores['test_macro_f1']:.4f}, trained in {duration(outcome.training_seconds or 0)}")
        else:
            self.failed += 1
            line = f"{place} FAILED   {outcome.id}: {outcome.error}"
        self._say(f"{line}  ({self.counts()})")

    def tick(self, force: bool = False) -> None:
        self.bar.update(self.ended, self.counts(), now=force)

    def close(self) -> None:
        self.bar.close()


class Manifest:
    """sweep.json: the sweep as given, and each trial's state, rewritten after every change."""

    def __init__(self, folder: RunDirectory, record: dict, trials: list[dict]):
        self.folder = folder
        self.record = record
        self.trials = {t["id"]: t for t in trials}

    def entry(self, trial_id: str) -> dict:
        return self.trials[trial_id]

    def update(self, trial_id: str, **fields: object) -> None:
        entry = self.trials[trial_id]
        entry.update({k: v for k, v in fields.items() if v is not None})
        if fields.get("state") == "finished":
            entry.pop("error", None)
        self.write()

    def write(self) -> None:
        self.folder.write_json(MANIFEST, {**self.record, "updated": now(), "trials": list(self.trials.values())})


def _earlier_state(trial: Trial, folder: Path, exp: Experiment, restart: bool) -> tuple[str, dict | None]:
    """('finished', metrics) for a trial an earlier sweep finished with this very config; else ('pending', None)."""
    run = RunDirectory(folder)
    state = run.state() if folder.is_dir() else None
    if state == "running":
        raise RunError(f"trial {trial.id} is being trained by another process (pid {run.holder()})")
    if restart or state != "finished":
        return "pending", None
    if not same_experiment(run, exp):
        raise RunError(f"trial {trial.id} finished earlier with a different config (a config or --set changed "
                       "since); pass --restart to train every trial again, or another --name")
    try:
        return "finished", run.read_json(METRICS_FILE)
    except (OSError, ValueError):
        return "pending", None


def run_sweep(spec: SweepSpec, executor_name: str = "local", jobs: int | None = None, address: str | None = None,
              data_dir: str | Path | None = None, results_dir: str | Path = "results",
              restart: bool = False) -> SweepResult:
    """Run every trial of the sweep that is not finished yet; return the manifest's account of all of them."""
    if executor_name not in EXECUTORS:
        raise FerBenchError(f"--executor must be one of {sorted(EXECUTORS)}; got {executor_name!r}")
    executor: Executor = EXECUTORS[executor_name](jobs=jobs, address=address)
    executor.check()
    trials = expand(spec)
    experiments = check_trials(trials)  # every trial, before the first one starts

    folder = RunDirectory(Path(results_dir) / spec.name)
    if not folder.acquire():
        raise RunError(f"sweep {folder.path} is running in another process (pid {folder.holder()})")
    try:
        earlier = _earlier_attempts(folder)
        entries, tasks = [], []
        keys = [data_key(dataclasses.asdict(data_config(exp)), exp.classes) for exp in experiments]
        for trial, exp, key in zip(trials, experiments, keys):
            state, metrics = _earlier_state(trial, folder.path.joinpath(*trial.parts), exp, restart)
            entry = {"id": trial.id, "group": trial.group, "config": str(trial.config), "seed": trial.seed,
                     "overrides": list(trial.overrides), "state": state, "attempts": earlier.get(trial.id, 0)}
            if metrics is not None:
                outcome = outcome_of(trial.id, metrics)
                entry.update(scores=outcome.scores, training_seconds=outcome.training_seconds)
            else:
                tasks.append(TrialTask(trial, exp, key, spec.name, restart))
            entries.append(entry)
        record = {"name": spec.name, "created": now(), "executor": executor_name, "jobs": jobs, "address": address,
                  "configs": [str(c) for c in spec.configs], "seeds": list(spec.seeds) if spec.seeds else None,
                  "grid": {k: list(v) for k, v in spec.grid.items()}, "set": list(spec.sets),
                  "command": environment_record()["command"]}
        manifest = Manifest(folder, record, entries)
        manifest.write()
        print(f"sweep {spec.name}: {len(trials)} trials ({_shape(spec)}); {len(trials) - len(tasks)} finished "
              f"earlier, {len(tasks)} to run on {executor_name} -> {folder.path}", file=sys.stderr, flush=True)
        if tasks:
            datasets = _load_datasets(tasks, experiments, keys, data_dir)
            progress = Progress(manifest, len(tasks))
            try:
                executor.run(tasks, datasets, folder.path, progress)
            except KeyboardInterrupt:
                for entry in manifest.trials.values():
                    if entry["state"] in ("running", "retrying"):
                        entry["state"] = "interrupted"
                manifest.write()
                raise
            finally:
                progress.close()
        return SweepResult(folder.path, list(manifest.trials.values()))
    finally:
        folder.release()


def _earlier_attempts(folder: RunDirectory) -> dict[str, int]:
    """Attempts per trial that earlier invocations of this sweep recorded: a trial's count covers all of them."""
    try:
        return {t["id"]: int(t.get("attempts", 0)) for t in folder.read_json(MANIFEST)["trials"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _shape(spec: SweepSpec) -> str:
    parts = [f"{len(spec.configs)} config{'s' if len(spec.configs) > 1 else ''}"]
    parts += [f"{len(values)} {key.split('.')[-1]}" for key, values in spec.grid.items()]
    if spec.seeds:
        parts.append(f"{len(spec.seeds)} seed{'s' if len(spec.seeds) > 1 else ''}")
    return " x ".join(parts)


def _load_datasets(tasks: list[TrialTask], experiments: list, keys: list[str],
                   data_dir: str | Path | None) -> dict[str, FerData]:
    """Each distinct dataset the tasks train on, loaded (decoded, or read from the cache) once here."""
    needed = {task.data_key for task in tasks}
    datasets = {}
    for exp, key in zip(experiments, keys):
        if key in needed and key not in datasets:
            tick = time.perf_counter()
            datasets[key] = data = load_data(data_config(exp), exp.classes, data_dir)
            users = sum(task.data_key == key for task in tasks)
            print(f"data: {len(data.train) + len(data.validation) + len(data.test)} images [{data.fingerprint}] "
                  f"loaded once for {users} trial{'s' if users > 1 else ''} in {time.perf_counter() - tick:.1f}s",
                  file=sys.stderr, flush=True)
    return datasets


def summary_table(result: SweepResult) -> str:
    """Every trial of the sweep: state, scores and training time, in the sweep's order."""
    width = max(len(t["id"]) for t in result.trials)
    lines = [f"{'trial':<{width}}  {'state':<11} {'test acc':>8} {'macro-F1':>8} {'trained':>8}"]
    for t in result.trials:
        scores = t.get("scores") or {}
        acc = f"{scores['test_accuracy']:.4f}" if "test_accuracy" in scores else "-"
        f1 = f"{scores['test_macro_f1']:.4f}" if "test_macro_f1" in scores else "-"
        seconds = duration(t["training_seconds"]) if t.get("training_seconds") is not None else "-"
        lines.append(f"{t['id']:<{width}}  {t['state']:<11} {acc:>8} {f1:>8} {seconds:>8}")
    return "\n".join(lines)
