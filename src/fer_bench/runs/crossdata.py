"""A cross-dataset test: a finished run scored on another labelled dataset, written as `<run>/eval/<name>/`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fer_bench.data.dataset import Split, data_notices, fingerprint_of
from fer_bench.data.labelled import load_labelled_folder, parse_class_map, scored_folder
from fer_bench.errors import RunError
from fer_bench.evaluation.metrics import SplitPredictions, single_class_warning
from fer_bench.evaluation.predictors import Predictor, load_predictor
from fer_bench.evaluation.tta import tta_scores
from fer_bench.files import METRICS_FILE
from fer_bench.runs.artifacts import RunDirectory, environment_record, now, numbered_siblings, write_evaluation


def evaluation_directory(base: Path, name: str | None, default: str, overwrite: bool) -> RunDirectory:
    """`<base>/<name>/`: an earlier evaluation of that name is kept, never silently replaced.

    A default name that is taken gets a numbered sibling; an explicit one is an error unless `overwrite`.
    """
    wanted = RunDirectory(base / (name or default))
    if overwrite or not wanted.path.exists():
        return wanted
    if name is not None:
        raise RunError(f"{wanted.path} already holds an evaluation; pass --overwrite to replace it, or another --name")
    return RunDirectory(next(path for path in numbered_siblings(base, default) if not path.exists()))


def evaluate_on_dataset(run_path: Path, data_dir: Path, mapping: list[str] | str | None = None, tta: str = "none",
                        name: str | None = None, overwrite: bool = False,
                        eval_root: Path | None = None) -> tuple[Path, dict]:
    """Score a trained run on another class-per-folder dataset; write `<eval_root>/<name>/`.

    `eval_root` defaults to `<run>/eval`; the shipped model, which lives inside the installed
    package, is evaluated into a folder of the caller's choosing.
    """
    run_path = Path(run_path)
    if not (run_path / METRICS_FILE).is_file():
        raise RunError(f"{run_path} is not a finished run (no {METRICS_FILE})")
    # Where it goes is settled first: a name that is taken is refused before any image is read.
    out = evaluation_directory(Path(eval_root) if eval_root else run_path / "eval", name, Path(data_dir).resolve().name,
                               overwrite)
    predictor = load_predictor(run_path)
    classes = predictor.classes
    split, ignored, skipped = load_labelled_folder(Path(data_dir), classes, parse_class_map(mapping, classes))
    scored = scored_folder(Path(data_dir))
    print(f"scoring the {len(split)} images under {scored}"
          + (" (its train/ folder is not scored)" if scored != Path(data_dir) else ""), file=sys.stderr)
    if ignored:
        print(f"notice: ignored folders the model has no class for: {', '.join(ignored)}", file=sys.stderr)
    for line in data_notices(skipped):
        print(line, file=sys.stderr)
    name = out.path.name
    if not out.acquire():
        raise RunError(f"{out.path} is being written by another process (pid {out.holder()}); choose another --name")
    try:
        out.clear()  # --overwrite: nothing of the earlier evaluation stays to be mistaken for this one
        with out.lifecycle():
            record = _score(predictor, split, out, run_path, tta, {
                "dataset": str(data_dir), "scored_folder": str(scored), "ignored_folders": ignored,
                "skipped": [{"item": i, "reason": r} for i, r in skipped]})
    finally:
        out.release()
    return out.path, record


def _score(predictor: Predictor, split: Split, out: RunDirectory, run_path: Path, tta: str, facts: dict) -> dict:
    """Predict, score and write the evaluation, metrics.json last; return the metrics record."""
    classes = predictor.classes
    predictions = {"test": SplitPredictions(split.names, split.labels, predictor.predict_proba(split.images), None)}
    metrics = write_evaluation(out, classes, predictions, f"{run_path.name} on {out.path.name}")
    collapsed = single_class_warning(predictions["test"].predicted, classes, "scored")
    if collapsed:
        print(collapsed, file=sys.stderr)
    if tta != "none":
        metrics["test_tta"] = tta_scores(predictor, split.images, split.labels, tta)
    # The fingerprint of the images scored: two evaluations of the same folder are tested against each other.
    fingerprint = fingerprint_of(split.images, split.labels, np.array(["test"] * len(split)), classes)
    record = {"run": f"{run_path.name} on {out.path.name}", "model": _run_model(run_path), "kind": "evaluation",
              "classes": list(classes), "data_fingerprint": fingerprint, **facts, **metrics}
    # Where the model trained (what compare shows as "trained on") is the evaluated run's; where it was scored, this one.
    trained = _read_json(run_path / "environment.json")
    out.write_json("environment.json", {**environment_record(), "finished": now(), "trained": trained})
    out.write_json(METRICS_FILE, record)
    return record


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_model(run_path: Path) -> str:
    try:
        return json.loads((run_path / METRICS_FILE).read_text()).get("model", "?")
    except (OSError, ValueError):
        return "?"
