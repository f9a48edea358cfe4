"""Ensembles: average the saved class probabilities of several runs into a run of its own.

When every member is a Keras run, the ensemble also saves one `model.keras` that averages the members' models,
so that it predicts on new faces like any run (and can be the shipped model).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench.data.dataset import FerData
from fer_bench.errors import ConfigError, RunError
from fer_bench.evaluation.metrics import SplitPredictions
from fer_bench.files import METRICS_FILE, MODEL_FILE
from fer_bench.runs.artifacts import (Run, RunDirectory, environment_record, now, read_run, run_folders, training_stages,
                                     union_of_stages, write_evaluation)


def group_members(folder: Path) -> list[Path]:
    """The finished runs under `folder` (a sweep's group: its seeds), not counting evaluations inside them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"--group {folder}: no such folder")
    members = [run for run in run_folders(folder) if run != folder and RunDirectory(run).state() == "finished"]
    # A feature run keeps the CNN it trained first inside its folder: that stage is part of its run, not a member.
    members = [m for m in members if not any(other in m.parents for other in members)]
    if not members:
        raise RunError(f"--group {folder}: no finished runs under it")
    return members


def ensemble_runs(run_paths: list[Path], name: str, results_dir: Path | None = None, tta: str = "none",
                  data_dir: Path | None = None) -> tuple[Path, dict]:
    """Average the members' probabilities (from predictions.csv, no re-inference) and write a run folder.

    A member that computes in bfloat16 or float16 (trained under mixed precision) is rebuilt in float32 for
    the averaged model, which then predicts other numbers than the members did: the ensemble is scored again
    from that model itself. With `tta`, the averaged model also scores the test faces under test-time
    augmentation, as a run does (beside the plain scores, never instead). Either way the images are read
    again, from `data_dir` or as the first member's config says, and must be those the members were scored on.
    """
    if len(run_paths) < 2:
        raise RunError("an ensemble needs at least two runs")
    resolved = [Path(p).resolve() for p in run_paths]
    repeated = next((p for p, r in zip(run_paths, resolved) if resolved.count(r) > 1), None)
    if repeated is not None:
        raise RunError(f"{repeated} is given twice: an ensemble averages different runs")
    members = [read_run(Path(p), Path(p).name) for p in run_paths]
    first = members[0]
    for member in members[1:]:
        if member.classes != first.classes:
            raise RunError(f"{member.name} predicts {member.classes}, {first.name} predicts {first.classes}")
        if member.metrics.get("data_fingerprint") != first.metrics.get("data_fingerprint"):
            raise RunError(f"{member.name} and {first.name} were evaluated on different data")
    classes = tuple(first.classes)
    model_files = [m.path / MODEL_FILE for m in members]
    if tta != "none" and not all(f.is_file() for f in model_files):
        keras_less = next(m.name for m, f in zip(members, model_files) if not f.is_file())
        raise RunError(f"--tta needs every member's model.keras to score new views; {keras_less} has none")
    columns = [f"p_{c}" for c in classes]
    splits = [s for s in ("validation", "test") if all(len(m.split_predictions(s)) for m in members)]
    if "test" not in splits:
        raise RunError("every member needs test predictions in predictions.csv")
    predictions = {}
    for split in splits:
        frames = [m.split_predictions(split) for m in members]
        if any(list(f["file"]) != list(frames[0]["file"]) for f in frames[1:]):
            raise RunError(f"the members' {split} predictions are not for the same images in the same order")
        if any(missing := [c for c in columns if c not in f.columns] for f in frames):
            raise RunError(f"a member's predictions.csv has no probability columns {missing}")
        index = {c: i for i, c in enumerate(classes)}
        base = frames[0]
        duplicate = base["duplicate_of_train"].to_numpy(bool) if "duplicate_of_train" in base else None
        probabilities = np.mean([f[columns].to_numpy(dtype=np.float64) for f in frames], axis=0)
        predictions[split] = SplitPredictions(base["file"].tolist(), base["true"].map(index).to_numpy(),
                                              probabilities, duplicate)

    results_dir = Path(results_dir) if results_dir is not None else first.path.parent
    run = RunDirectory(results_dir / name)
    if run.path.exists():
        raise RunError(f"{run.path} already exists; choose another --name")
    model, rebuilt = _averaged_model(members, model_files)
    data = _scored_data(first, predictions, data_dir) if rebuilt or tta != "none" else None
    if rebuilt:
        predictions = _scored_again(model, predictions, data)
    started = now()
    with run.lifecycle(started) as finished:
        member_names = [str(m.path) for m in members]
        run.write_yaml("config.yaml", {"name": name, "model": {"name": "ensemble", "members": member_names}})
        metrics = write_evaluation(run, classes, predictions, name)
        if model is not None:
            run.save_model(model)
            if tta != "none":
                from fer_bench.evaluation.predictors import keras_predictor
                from fer_bench.evaluation.tta import tta_scores

                metrics["test_tta"] = tta_scores(keras_predictor(model, classes), data.test.images, data.test.labels, tta)
        run.write_json("environment.json", {**environment_record(), "started": started, "finished": now()})
        stages = union_of_stages([training_stages(m.metrics) for m in members])
        record = {
            "run": name, "model": "ensemble", "kind": "ensemble", "members": member_names, "classes": list(classes),
            "data_fingerprint": first.metrics.get("data_fingerprint"), "protocol": first.metrics.get("protocol"),
            # Members that trained under mixed precision and predict here in float32: scored again as such.
            "rebuilt_in_float32": rebuilt,
            "parameters": sum(int(m.metrics.get("parameters") or 0) for m in members),
            # What the predictor cost to train: every member's stages, a stage that members share counted once.
            "stages": stages,
            "training_seconds": round(sum(float(stage["training_seconds"]) for stage in stages), 2),
            **metrics,
        }
        run.write_json(METRICS_FILE, record)  # last: its presence marks a complete set of artifacts
        finished["test_accuracy"] = metrics["test"]["accuracy"]
    return run.path, record


def _averaged_model(members: list[Run], model_files: list[Path]) -> tuple[Any, list[str]]:
    """The members' models averaged in one float32 model (None unless every member has a model.keras),
    and the names of the members that computed in another precision and were rebuilt in float32."""
    if not all(f.is_file() for f in model_files):
        return None, []
    from fer_bench.models.saved import averaged_model, computes_in_float32, load_model

    models = [load_model(f) for f in model_files]
    rebuilt = [m.name for m, model in zip(members, models) if not computes_in_float32(model)]
    return averaged_model(models), rebuilt


def _scored_again(model: Any, predictions: dict[str, SplitPredictions], data: FerData) -> dict[str, SplitPredictions]:
    """The averaged model's own probabilities on each split's images, in the members' order."""
    from fer_bench.evaluation.predictors import predict_probabilities

    return {split: replace(scored, probabilities=predict_probabilities(model, getattr(data, split).images).astype(np.float64))
            for split, scored in predictions.items()}


def _scored_data(first: Run, predictions: dict[str, SplitPredictions], data_dir: Path | None) -> FerData:
    """The images read again to score the averaged model: those the members were scored on, in their order."""
    from fer_bench.config import from_dict
    from fer_bench.data.dataset import load_data
    from fer_bench.experiment import data_config

    if not first.config:
        raise RunError(f"scoring the averaged model reads the images as {first.name}'s config.yaml says, and it has none")
    try:
        data_section = data_config(from_dict(first.config))
    except ConfigError as exc:
        raise RunError(f"scoring the averaged model reads the images as {first.name}'s config.yaml says, "
                       f"and cannot: {exc}") from None
    data = load_data(data_section, tuple(first.classes), data_dir)
    if data.fingerprint != first.metrics.get("data_fingerprint") or any(
            list(getattr(data, split).names) != list(scored.names) for split, scored in predictions.items()):
        raise RunError(f"the data found to score the averaged model is not the data that {first.name} was evaluated on")
    return data
