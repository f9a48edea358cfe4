"""Compare finished runs: a table, confidence intervals, pairwise significance and charts.

Reads only run folders (metrics.json, predictions.csv, history.csv, config.yaml); never imports
TensorFlow, so comparing many runs takes seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench.config import AugmentConfig
from fer_bench.errors import RunError
from fer_bench.evaluation.metrics import bootstrap_scores, confidence_interval, holm_adjusted, mcnemar_exact
from fer_bench.files import STATUS_FILE
from fer_bench.runs.artifacts import Run, RunDirectory, read_run

METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "weighted_f1")
SORT_KEYS = (*METRICS, "name", "training_seconds", "parameters")
SIGNIFICANCE_LEVEL = 0.05


def find_runs(root: Path) -> list[Run]:
    """Every finished run folder under `root` (recursively); others are skipped with a one-line warning."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"results directory not found: {root}")
    runs = []
    for status in sorted(root.rglob(STATUS_FILE)):
        folder = status.parent
        if "eval" in folder.relative_to(root).parts[:-1]:
            continue  # cross-dataset evaluations live inside a run; they are not runs of their own
        name = str(folder.relative_to(root)) if folder != root else folder.name
        try:
            runs.append(read_run(folder, name))
        except RunError as exc:
            print(f"warning: skipping {exc}", file=sys.stderr)
    if not runs:
        raise RunError(f"no finished runs under {root}")
    return runs


def _settings(run: Run) -> str:
    """The few settings that tell runs apart at a glance."""
    cfg = run.config
    data, train, augment, model = (cfg.get(k) or {} for k in ("data", "train", "augment", "model"))
    parts = [f"{data['input_size']}px"] if "input_size" in data else []
    if model.get("weights"):
        parts.append(f"weights={Path(str(model['weights'])).name}")
    if any(augment.get(f.name) for f in dataclasses.fields(AugmentConfig)):
        parts.append("aug")
    features = cfg.get("features") or {}
    if features:
        parts.append(f"{features.get('extractor')} features")
        if model.get("params"):
            parts.append(", ".join(f"{k}={v}" for k, v in model["params"].items()))
    elif train.get("optimizer"):
        parts.append(f"{train['optimizer']} lr={train.get('learning_rate')}")
    if train.get("class_weight") not in (None, "none"):
        parts.append(f"class_weight={train['class_weight']}")
    if run.metrics.get("members"):
        parts.append(f"{len(run.metrics['members'])} members")
    return ", ".join(parts)


def accelerators_used(environment: dict) -> str | None:
    """The GPUs (or TPUs) a run trained on, from its environment.json: "NVIDIA H100 80GB HBM3 x2"; None for the CPU."""
    runtime = environment.get("runtime") or {}
    gpus = [a["name"] for a in runtime.get("accelerators") or [] if a.get("name")]
    if gpus:
        return gpus[0] + (f" x{len(gpus)}" if len(gpus) > 1 else "")
    if any("GPU" in str(d).upper() for d in runtime.get("devices") or []):
        return "GPU"  # recorded before accelerators were named
    return None


def trained_on(environment: dict) -> str:
    """Where a run trained, from its environment.json: the accelerator (else the CPU) and the Keras backend."""
    runtime = environment.get("runtime") or {}
    device = accelerators_used(environment)
    if device is None:
        if not environment.get("cpu_count"):
            return "-"
        device = f"CPU x{environment['cpu_count']}"
    backend = runtime.get("backend") or environment.get("keras_backend")
    return f"{device} ({backend})" if backend and runtime else device


def _reference_fingerprint(runs: list[Run]) -> str | None:
    fingerprints = [r.metrics.get("data_fingerprint") for r in runs]
    return max(set(fingerprints), key=fingerprints.count) if fingerprints else None


def comparison_table(runs: list[Run], split: str, num_resamples: int = 1000) -> pd.DataFrame:
    """One row per run with its scores on `split`, 95% bootstrap intervals and key settings."""
    reference = _reference_fingerprint(runs)
    rows = []
    for run in runs:
        scores = run.metrics.get(split) or {}
        row: dict[str, Any] = {
            "name": run.name, "model": run.metrics.get("model", "?"), "settings": _settings(run),
            **{metric: scores.get(metric, np.nan) for metric in METRICS},
            "accuracy_no_duplicates": (run.metrics.get(f"{split}_unique") or {}).get("accuracy", np.nan),
            "images": scores.get("count", 0),
            "parameters": run.metrics.get("parameters"),
            "training_seconds": run.metrics.get("training_seconds"),
            # An evaluation's model trained where its run did: environment.json keeps that run's under `trained`.
            "trained_on": "-" if run.metrics.get("kind") == "ensemble" else trained_on(
                run.environment.get("trained") or run.environment),
            "epochs": run.metrics.get("epochs_run"),
            "data": "same" if run.metrics.get("data_fingerprint") == reference else "DIFFERENT",
        }
        predictions = run.split_predictions(split)
        if len(predictions):
            index = {c: i for i, c in enumerate(run.classes)}
            y_true = predictions["true"].map(index).to_numpy()
            y_pred = predictions["predicted"].map(index).to_numpy()
            samples = bootstrap_scores(y_true, y_pred, len(run.classes), num_resamples)
            for metric in ("accuracy", "macro_f1"):
                row[f"{metric}_low"], row[f"{metric}_high"] = confidence_interval(samples[metric])
        rows.append(row)
    return pd.DataFrame(rows)


def significance_table(runs: list[Run], split: str) -> pd.DataFrame:
    """McNemar's exact test for every pair of runs scored on the same images of `split`.

    With many runs, some pairs would pass p < 0.05 by chance alone: each verdict reads the p-value
    adjusted by Holm's method over the pairs tested on the same data. Each data set is a family of its
    own, so runs on other data never change the verdicts of the main group.
    """
    scored = []
    for run in runs:
        predictions = run.split_predictions(split)
        if len(predictions):
            images = tuple(predictions["file"]) if "file" in predictions else tuple(predictions.index)
            correct = (predictions["true"] == predictions["predicted"]).to_numpy()
            scored.append((run, (run.metrics.get("data_fingerprint"), hash(images)), correct))
    rows = []
    for (a, key_a, correct_a), (b, key_b, correct_b) in itertools.combinations(scored, 2):
        if key_a != key_b:
            continue  # other data or other images: not a paired comparison
        a_only, b_only, p_value = mcnemar_exact(correct_a, correct_b)
        rows.append({"run_a": a.name, "run_b": b.name, "data": key_a[0], "accuracy_a": correct_a.mean(),
                     "accuracy_b": correct_b.mean(), "a_right_b_wrong": a_only, "a_wrong_b_right": b_only,
                     "p_value": p_value})
    table = pd.DataFrame(rows, columns=["run_a", "run_b", "data", "accuracy_a", "accuracy_b", "a_right_b_wrong",
                                        "a_wrong_b_right", "p_value", "p_adjusted", "summary"])
    families = [table.index[table["data"] == data] for data in table["data"].unique()]
    for family in families:
        table.loc[family, "p_adjusted"] = holm_adjusted(table.loc[family, "p_value"].to_numpy(dtype=float))
    table["summary"] = [_verdict(row) for row in table.itertuples(index=False)]
    return table


def _verdict(row: Any) -> str:
    if row.p_adjusted < SIGNIFICANCE_LEVEL:
        better, worse = (row.run_a, row.run_b) if row.accuracy_a >= row.accuracy_b else (row.run_b, row.run_a)
        return f"{better} beats {worse} (adjusted p={row.p_adjusted:.3g})"
    return f"{row.run_a} vs {row.run_b}: no significant difference (adjusted p={row.p_adjusted:.3g})"


def neighbour_verdicts(significance: pd.DataFrame, order: list[str]) -> list[str]:
    """The verdicts for runs next to each other in `order` (of those tested): is each step down the table real?"""
    verdicts = {frozenset(pair): summary for *pair, summary in
                significance[["run_a", "run_b", "summary"]].itertuples(index=False)}
    tested = [name for name in order if any(name in pair for pair in verdicts)]
    return [verdicts[frozenset(pair)] for pair in zip(tested, tested[1:]) if frozenset(pair) in verdicts]


def significance_text(significance: pd.DataFrame, order: list[str]) -> list[str]:
    """What compare says of significance: how the tests were made, then the verdicts for neighbouring runs."""
    if significance.empty:
        return []
    sizes = significance["data"].value_counts(sort=False)
    pairs = " and ".join(f"{n} pair{'s' * (n > 1)}" for n in sizes)
    family = (f"for the {pairs} tested" if len(sizes) == 1
              else f"within each data set ({pairs} tested on {len(sizes)} data sets)")
    return [f"McNemar's exact test on the same images, p adjusted by Holm's method {family}; "
            "here runs next to each other in the table, every pair in significance.csv:",
            *neighbour_verdicts(significance, order)]


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    """The comparison as a Markdown table (also what the console shows)."""
    header = ["#", "run", "model", "settings", "accuracy (95% CI)", "macro-F1 (95% CI)", "balanced acc.",
              "acc. w/o duplicates", "params", "train time", "trained on", "epochs", "data"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ranks = iter(range(1, len(table) + 1))
    for row in table.itertuples(index=False):
        rank = "-" if row.data == "DIFFERENT" else next(ranks)  # not ranked among runs on other data
        def interval(name: str) -> str:
            value = getattr(row, name)
            low, high = getattr(row, f"{name}_low", np.nan), getattr(row, f"{name}_high", np.nan)
            return f"{value:.4f}" + (f" ({low:.3f}-{high:.3f})" if not np.isnan(low) else "")

        params = f"{row.parameters / 1e6:.2f}M" if row.parameters and not pd.isna(row.parameters) else "-"
        seconds = row.training_seconds
        duration = f"{seconds / 60:.1f} min" if seconds and not pd.isna(seconds) else "-"
        epochs = str(int(row.epochs)) if row.epochs and not pd.isna(row.epochs) else "-"
        lines.append("| " + " | ".join([
            str(rank), row.name, row.model, row.settings, interval("accuracy"), interval("macro_f1"),
            f"{row.balanced_accuracy:.4f}", f"{row.accuracy_no_duplicates:.4f}", params, duration, row.trained_on, epochs, row.data,
        ]) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class Comparison:
    """Finished runs compared: tables, tests and figures as objects. `compare` writes it; a report can render it."""

    split: str
    metric: str
    runs: list[Run]
    table: pd.DataFrame  # one row per run, in the order shown
    significance: pd.DataFrame  # every pair tested
    markdown: str  # the table as the console and comparison.md show it
    notes: list[str]
    significance_text: list[str]  # how the tests were made, then the verdicts for neighbouring runs
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure

    def document(self) -> str:
        """comparison.md: the table, the notes and the significance verdicts."""
        tests = self.significance_text
        return (f"# Comparison on the {self.split} split\n\n{self.markdown}\n" + "".join(f"{n}\n" for n in self.notes)
                + (f"\n## Significance\n\n{tests[0]}\n\n" + "".join(f"- {s}\n" for s in tests[1:]) if tests else ""))


def build_comparison(root: Path, split: str = "test", metric: str = "accuracy", sort: str | None = None) -> Comparison:
    """Compare every finished run under `root` (recursively): nothing is written."""
    from fer_bench.evaluation import charts

    runs = find_runs(root)
    table = comparison_table(runs, split)
    sort = sort or metric
    table = table.sort_values(sort, ascending=sort in ("name", "training_seconds", "parameters"), kind="stable")
    # Runs on other data are not ranked among the rest: they follow them, in the same order.
    table = table.sort_values("data", key=lambda data: data == "DIFFERENT", kind="stable").reset_index(drop=True)
    order = {name: i for i, name in enumerate(table["name"])}
    runs.sort(key=lambda r: order[r.name])
    significance = significance_table(runs, split)
    notes = []
    if (table["data"] == "DIFFERENT").any():
        notes.append("Runs marked DIFFERENT were made on other data (their data fingerprint differs); "
                     "their numbers are not comparable with the rest.")
    other_data = dict(zip(table["name"], table["data"] == "DIFFERENT"))
    names, other = [r.name for r in runs], [other_data[r.name] for r in runs]
    figures = {
        "comparison.png": charts.comparison_figure(table, split),
        "per_class_f1.png": charts.per_class_f1_figure(
            names, [r.metrics.get(split, {}).get("per_class", {}) for r in runs], split, other),
        "confusion_matrices.png": charts.confusion_grid_figure(
            names, [_confusion(r, split) for r in runs], [r.classes for r in runs], split, other),
    }
    curves = [r for r in runs if r.history is not None and "val_accuracy" in r.history]
    if curves:
        figures["training_curves.png"] = charts.validation_curves_figure(
            [(r.name, r.history) for r in curves], [other_data[r.name] for r in curves])
    return Comparison(split, metric, runs, table, significance, markdown_table(table, metric), notes,
                      significance_text(significance, list(table["name"])), figures)


def write_comparison(comparison: Comparison, out: Path) -> Path:
    """comparison.csv, comparison.md, significance.csv and the figures, into `out` (each file atomically)."""
    folder = RunDirectory(Path(out)).create()
    folder.write_table("comparison.csv", comparison.table)
    folder.write_text("comparison.md", comparison.document())
    folder.write_table("significance.csv", comparison.significance)
    for name, figure in comparison.figures.items():
        folder.write_figure(name, figure)
    return folder.path


def compare_runs(root: Path, out: Path | None = None, split: str = "test", metric: str = "accuracy",
                 sort: str | None = None) -> Comparison:
    """Build the comparison of the runs under `root` and write it into `out` (default: `root`)."""
    comparison = build_comparison(root, split, metric, sort)
    write_comparison(comparison, Path(out) if out is not None else Path(root))
    return comparison


def _confusion(run: Run, split: str) -> np.ndarray:
    predictions = run.split_predictions(split)
    index = {c: i for i, c in enumerate(run.classes)}
    k = len(run.classes)
    codes = predictions["true"].map(index).to_numpy() * k + predictions["predicted"].map(index).to_numpy()
    return np.bincount(codes.astype(int), minlength=k * k).reshape(k, k)

