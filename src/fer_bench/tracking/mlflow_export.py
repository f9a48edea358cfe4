"""Finished run folders exported as MLflow runs: params, per-epoch metrics, final scores, tags, artifacts.

Each MLflow run carries the fer-bench run's own key (its name, start time and data: the same through a
resume, new after --restart), so exporting again finds it: unchanged runs are left alone, a run whose
folder changed (evaluated again, say) replaces its old MLflow run; nothing is duplicated. MLflow is
imported only here, and only when exporting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_bench.config import flatten
from fer_bench.errors import FerBenchError, RunError
from fer_bench.files import METRICS_FILE
from fer_bench.runs.artifacts import Run, RunDirectory, read_run, run_folders

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "fer-bench"
KEY_TAG = "fer_bench.key"
CONTENT_TAG = "fer_bench.content"
SCORE_SPLITS = ("validation", "validation_unique", "test", "test_unique", "test_tta")
SCORES = ("accuracy", "macro_f1", "balanced_accuracy", "weighted_f1")
RUN_FACTS = ("training_seconds", "parameters", "best_epoch", "epochs_run")
ARTIFACTS = ("config.yaml", "metrics.json", "environment.json", "history.csv", "predictions.csv",
             "classification_report.txt", "log.txt", "confusion_matrix.csv")  # and every chart (*.png); not model.keras
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH = {"params": 100, "metrics": 1000}  # MLflow's limits per log_batch call


@dataclass
class ExportSummary:
    tracking_uri: str
    experiment: str
    experiment_id: str
    outcomes: Counter  # new / replaced / unchanged

    def line(self) -> str:
        counts = ", ".join(f"{self.outcomes[k]} {k}" for k in ("new", "replaced", "unchanged"))
        where = (f"; open {self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}"
                 if self.tracking_uri.startswith(("http://", "https://")) else
                 f"; see them with: mlflow ui --backend-store-uri {self.tracking_uri}")
        return f"exported {sum(self.outcomes.values())} runs to {self.tracking_uri}, experiment {self.experiment!r}: {counts}{where}"


def import_mlflow() -> Any:
    # fer-bench prints one summary line; MLflow would print a "View run" line for every run
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        import mlflow
    except ImportError:
        raise FerBenchError("MLflow is not installed: pip install -e \".[mlflow]\"") from None
    for name in ("mlflow", "alembic"):  # their INFO lines (creating the database's tables) are not the user's concern
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def run_key(run: Run, status: dict) -> str:
    """The run's own identity: its name, sweep trial, start and data (kept through a resume; new after --restart)."""
    text = json.dumps([run.metrics.get("run"), (run.metrics.get("sweep") or {}).get("trial"), status.get("started"),
                       run.metrics.get("data_fingerprint")])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def content_hash(run: Run) -> str:
    """What the export shows of the run: a change in it replaces the exported run."""
    digest = hashlib.sha1()
    for name in (METRICS_FILE, "config.yaml", "history.csv", "environment.json"):
        path = run.path / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:20]


def mlflow_name(key: str) -> str:
    """A param, metric or tag key as MLflow allows it (letters, digits, _ - . space /)."""
    return re.sub(r"[^\w\-. /]", "_", key)


def params_of(run: Run) -> dict[str, str]:
    params = {}
    for key, value in flatten(run.config).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[mlflow_name(key)] = text[:MAX_PARAM_LENGTH]
    return params


def final_metrics(run: Run) -> dict[str, float]:
    metrics = {}
    for split in SCORE_SPLITS:
        scores = run.metrics.get(split) or {}
        for name in SCORES:
            if isinstance(scores.get(name), (int, float)):
                metrics[f"{split}.{name}"] = float(scores[name])
    for name in RUN_FACTS:
        if isinstance(run.metrics.get(name), (int, float)):
            metrics[name] = float(run.metrics[name])
    return metrics


def epoch_metrics(run: Run) -> list[tuple[str, float, int]]:
    """(key, value, epoch) for every number in history.csv: curves in MLflow's metric history."""
    if run.history is None or "epoch" not in run.history:
        return []
    rows = []
    for record in run.history.to_dict("records"):
        for key, value in record.items():
            if key not in ("epoch", "phase") and isinstance(value, (int, float)) and not math.isnan(value):
                rows.append((mlflow_name(key), float(value), int(record["epoch"])))
    return rows


def tags_of(run: Run, key: str, content: str) -> dict[str, str]:
    from fer_bench import __version__
    from fer_bench.reporting.compare import trained_on

    environment = run.environment.get("trained") or run.environment
    sweep = run.metrics.get("sweep") or {}
    tags = {
        KEY_TAG: key, CONTENT_TAG: content, "fer_bench.version": __version__, "fer_bench.folder": str(run.path),
        "model": run.metrics.get("model"), "kind": run.metrics.get("kind"),
        "backend": (environment.get("runtime") or {}).get("backend") or environment.get("keras_backend"),
        "hardware": trained_on(environment), "cpu": environment.get("cpu"),
        "data_fingerprint": run.metrics.get("data_fingerprint"), "protocol": run.metrics.get("protocol"),
        "git_commit": environment.get("git_commit"), "mlflow.source.git.commit": environment.get("git_commit"),
        "command": environment.get("command"),
        "sweep": sweep.get("name"), "sweep_group": sweep.get("group"), "seed": sweep.get("seed", (run.config.get("train") or {}).get("seed")),
    }
    return {name: str(value)[:MAX_PARAM_LENGTH] for name, value in tags.items() if value not in (None, "", "-")}


def _millis(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    try:
        return int(dt.datetime.fromisoformat(timestamp).timestamp() * 1000)
    except ValueError:
        return None


def _check_server(uri: str) -> None:
    """An http(s) tracking URI must answer: MLflow itself retries for minutes before it says so."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            answer.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FerBenchError(f"no MLflow tracking server answers at {uri} ({reason})") from None


def _existing_runs(client: Any, experiment_id: str) -> dict[str, Any]:
    """The experiment's runs that fer-bench exported, by key."""
    found, token = {}, None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` != ''", max_results=1000, page_token=token)
        for mlflow_run in page:
            found[mlflow_run.data.tags[KEY_TAG]] = mlflow_run
        token = page.token
        if not token:
            return found


def export_runs(roots: Sequence[Path], tracking_uri: str = DEFAULT_URI, experiment: str = DEFAULT_EXPERIMENT) -> ExportSummary:
    """Every finished run under `roots` as an MLflow run in `experiment` (created if missing) at `tracking_uri`."""
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    _check_server(tracking_uri)
    runs = _finished_runs(roots)
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        existing = _existing_runs(client, experiment_id)
        outcomes: Counter = Counter()
        for run, status in runs:
            key, content = run_key(run, status), content_hash(run)
            previous = existing.get(key)
            if previous is not None and previous.data.tags.get(CONTENT_TAG) == content:
                outcomes["unchanged"] += 1
                continue
            if previous is not None:
                client.delete_run(previous.info.run_id)  # params cannot change in MLflow: the new export replaces it
            _export_run(client, experiment_id, run, status, tags_of(run, key, content))
            outcomes["replaced" if previous is not None else "new"] += 1
    except MlflowException as exc:
        raise FerBenchError(f"MLflow at {tracking_uri}: {str(exc).splitlines()[0]}") from None
    return ExportSummary(tracking_uri, experiment, experiment_id, outcomes)


def _finished_runs(roots: Sequence[Path]) -> list[tuple[Run, dict]]:
    """Each finished run folder under `roots` with its status.json; the others skipped with a one-line warning."""
    runs = []
    for root in roots:
        if not Path(root).is_dir():
            raise RunError(f"results directory not found: {root}")
        for folder in run_folders(Path(root)):
            try:
                runs.append((read_run(folder, str(folder), probabilities=False), RunDirectory(folder).status()))
            except RunError as exc:
                print(f"warning: skipping {exc}", file=sys.stderr)
    if not runs:
        raise RunError(f"no finished runs under {', '.join(map(str, roots))}")
    return runs


def _export_run(client: Any, experiment_id: str, run: Run, status: dict, tags: dict[str, str]) -> None:
    """One run folder as a new MLflow run: params and metrics in batches MLflow accepts, then the artifacts."""
    from mlflow.entities import Metric, Param

    created = client.create_run(experiment_id, start_time=_millis(status.get("started")), tags=tags, run_name=run.path.resolve().name)
    run_id = created.info.run_id
    when = _millis(status.get("finished")) or 0
    params = [Param(k, v) for k, v in params_of(run).items()]
    metrics = [Metric(k, v, when, 0) for k, v in final_metrics(run).items()]
    metrics += [Metric(k, v, when, step) for k, v, step in epoch_metrics(run)]
    for start in range(0, len(params), BATCH["params"]):
        client.log_batch(run_id, params=params[start:start + BATCH["params"]])
    for start in range(0, len(metrics), BATCH["metrics"]):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH["metrics"]])
    for file in sorted({*ARTIFACTS, *(p.name for p in run.path.glob("*.png"))}):
        if (run.path / file).is_file():
            client.log_artifact(run_id, str(run.path / file))
    client.set_terminated(run_id, "FINISHED", end_time=_millis(status.get("finished")))
