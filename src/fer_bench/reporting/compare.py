"""Compare finished runs: a table, confidence intervals, pairwise significance and charts.

Reads only run folders (metrics.json, predictions.csv, history.csv, config.yaml); never imports
TensorFlow, so comparing many runs takes seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import multiprocessing
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench.backends import usable_cores
from fer_bench.config import AugmentConfig, TrainConfig
from fer_bench.errors import RunError
from fer_bench.evaluation.metrics import MIN_SEEDS, bootstrap_scores, confidence_interval, holm_adjusted, mcnemar_exact, seed_interval, seed_test
from fer_bench.models.registry import MODELS, model_params
from fer_bench.reporting.groups import Group, group_runs
from fer_bench.runs.artifacts import Run, RunDirectory, read_run, run_folders, training_stages

METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "weighted_f1")
SORT_KEYS = (*METRICS, "name", "training_seconds", "parameters")
SIGNIFICANCE_LEVEL = 0.05


PARALLEL_FROM = 64  # runs: below, starting worker processes costs more than it saves
NUM_RESAMPLES = 1000  # bootstrap resamples per run


def find_runs(roots: Path | Sequence[Path], split: str | None = None) -> list[Run]:
    """Every finished run folder under `roots` (recursively); others are skipped with a one-line warning.

    A run is named by its folder under its root; with several roots, the root's own name comes first
    (`reference/cpu-tuned_cnn`). With `split`, each run's row on it (its bootstrap, the costly part) is
    made as it is read, in one process per core where there are many runs: reading and scoring 1,000
    runs is 25 s of work.
    """
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    for root in roots:
        if not root.is_dir():
            raise RunError(f"results directory not found: {root}")
    jobs = []
    for root in roots:
        prefix = f"{root.resolve().name}/" if len(roots) > 1 else ""
        jobs += [(folder, prefix + str(folder.relative_to(root)) if folder != root else root.resolve().name, split)
                 for folder in run_folders(root)]
    names = [name for _, name, _ in jobs]
    if len(set(names)) < len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise RunError(f"two results folders hold runs of the same name ({', '.join(repeated[:3])}): "
                       "give folders whose own names differ")
    workers = min(len(jobs) // (PARALLEL_FROM // 2), len(usable_cores()))
    results = _in_processes(_read_scored, jobs, workers) if workers > 1 else None
    if results is None:
        results = [_read_scored(job) for job in jobs]
    runs = []
    for result in results:
        if isinstance(result, str):
            print(f"warning: skipping {result}", file=sys.stderr)
        else:
            runs.append(result)
    if not runs:
        raise RunError(f"no finished runs under {', '.join(str(r) for r in roots)}")
    return runs


def _in_processes(function: Any, jobs: list, workers: int) -> list | None:
    """`function` over `jobs` in `workers` processes; None where a pool cannot run here (the caller does it itself).

    Forked where that is safe (Linux, no other thread: nothing to re-import), else spawned; a spawned worker
    re-imports the caller's main module, which a script read from stdin does not have.
    """
    fork = sys.platform == "linux" and threading.active_count() == 1
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork" if fork else "spawn")) as pool:
            return list(pool.map(function, jobs, chunksize=16))
    except (BrokenProcessPool, OSError):
        return None


def _read_scored(job: tuple[Path, str, str | None]) -> Run | str:
    """One run read (only the columns scores need) and, given a split, scored: the run, or why it was skipped."""
    folder, name, split = job
    try:
        run = read_run(folder, name, probabilities=False)
    except RunError as exc:
        return str(exc)
    if split is not None:
        _row(run, split)
    # What compare asks of the file names is their digest: made for each split here, and the names (most of
    # the bytes a worker would send back) dropped, with the per-split copies.
    for part in run.predictions["split"].unique():
        test_images(run, part)
        run.derived.pop(("split", part))
    run.predictions = run.predictions.drop(columns="file", errors="ignore")
    return run


def _value(value: Any) -> str:
    """A setting's value without the spaces that the ", " between settings would blur."""
    return f"[{','.join(map(str, value))}]" if isinstance(value, (list, tuple)) else str(value)


def _model_settings(model: dict) -> list[str]:
    """A deep model's parameters where they differ from its builder's defaults (every one given, for a model
    that is no longer registered): what tells two runs of one architecture apart."""
    def plain(value: Any) -> Any:  # a default tuple is a YAML list; 0 and 0.0 are one rate
        return list(value) if isinstance(value, tuple) else value

    params = model.get("params") or {}
    defaults = model_params(model["name"]) if model.get("name") in MODELS else {}
    return [f"{key}={_value(value)}" for key, value in params.items()
            if key not in defaults or plain(value) != plain(defaults[key])]


def _settings(run: Run) -> str:
    """The few settings that tell runs apart at a glance."""
    cfg = run.config
    data, train, augment, model = (cfg.get(k) or {} for k in ("data", "train", "augment", "model"))
    parts = [f"{data['input_size']}px"] if "input_size" in data else []
    if model.get("weights"):
        parts.append(f"weights={Path(str(model['weights'])).name}")
    features = cfg.get("features") or {}
    if not features:
        parts.extend(_model_settings(model))
    kinds = [f.name for f in dataclasses.fields(AugmentConfig) if augment.get(f.name)]
    if kinds:
        parts.append(f"aug={'+'.join(kinds)}")
    if features:
        parts.append(f"{features.get('extractor')} features")
        if model.get("params"):
            parts.append(", ".join(f"{k}={_value(v)}" for k, v in model["params"].items()))
    elif train.get("optimizer"):
        parts.append(f"{train['optimizer']} lr={train.get('learning_rate')}")
        if train.get("schedule") == "one_cycle":
            parts.append(f"one_cycle warm-up={train.get('warmup_fraction')}")
        if train.get("batch_size") not in (None, TrainConfig.batch_size):
            parts.append(f"batch={train['batch_size']}")
    if train.get("class_weight") not in (None, "none"):
        parts.append(f"class_weight={train['class_weight']}")
    if train.get("ema_momentum"):
        parts.append(f"ema={train['ema_momentum']}")
    # The policy the run trained under (`auto` decides it per machine), said only where it is not float32.
    precision = (_training_environment(run).get("runtime") or {}).get("precision")
    if precision and precision != "float32":
        parts.append(precision.removeprefix("mixed_"))
    if run.metrics.get("members"):
        parts.append(f"{len(run.metrics['members'])} members")
    return ", ".join(parts)


def _training_seconds(run: Run) -> float | None:
    """What the run's predictions took to train from scratch: with the stages it continued from, or an ensemble's
    members' stages (each once)."""
    stages = training_stages(run.metrics)
    return sum(float(s["training_seconds"]) for s in stages) if stages else run.metrics.get("training_seconds")


def _training_environment(run: Run) -> dict:
    """Where the run's model trained: an evaluation's environment.json keeps its run's under `trained`."""
    return run.environment.get("trained") or run.environment


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


def test_images(run: Run, split: str) -> str | None:
    """Which images (and labels) the run was scored on in `split`: runs with the same key are tested against each other."""
    return run.memo(("images", split), lambda: _images_digest(run.split_predictions(split)))


def _images_digest(predictions: pd.DataFrame) -> str | None:
    if not len(predictions):
        return None
    files = predictions["file"] if "file" in predictions else predictions.index
    lines = map("\t".join, zip(files.astype(str).tolist(), predictions["true"].astype(str).tolist()))
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


def _reference(values: list[str | None]) -> str | None:
    present = [v for v in values if v is not None]
    return max(set(present), key=present.count) if present else None


DATA_LABELS = {"same": "same", "train": "other train data", "different": "DIFFERENT"}


def _data_label(run: Run, split: str, fingerprint: str | None, images: str | None) -> str:
    """same: the reference data; other train data: scored on the same images, trained on others; DIFFERENT: other images."""
    if test_images(run, split) != images:
        return DATA_LABELS["different"]
    return DATA_LABELS["same"] if run.metrics.get("data_fingerprint") == fingerprint else DATA_LABELS["train"]


def run_row(run: Run, split: str, num_resamples: int) -> dict[str, Any]:
    """One run's scores on `split`, with 95% bootstrap intervals over the split's images."""
    scores = run.metrics.get(split) or {}
    row: dict[str, Any] = {
        "name": run.name, "model": run.metrics.get("model", "?"), "settings": _settings(run), "seeds": 1,
        **{metric: scores.get(metric, np.nan) for metric in METRICS},
        "accuracy_no_duplicates": (run.metrics.get(f"{split}_unique") or {}).get("accuracy", np.nan),
        "images": scores.get("count", 0),
        "parameters": run.metrics.get("parameters"),
        "training_seconds": _training_seconds(run),
        "trained_on": "-" if run.metrics.get("kind") == "ensemble" else trained_on(_training_environment(run)),
        "epochs": run.metrics.get("epochs_run"),
        "interval": "test images",
    }
    if len(run.split_predictions(split)):
        y_true, y_pred = _labels(run, split)
        samples = bootstrap_scores(y_true, y_pred, len(run.classes), num_resamples)
        for metric in ("accuracy", "macro_f1"):
            row[f"{metric}_low"], row[f"{metric}_high"] = confidence_interval(samples[metric])
    return row


SEED_SUMMARIES = (*METRICS, "accuracy_no_duplicates", "training_seconds")


def run_rows(groups: list[Group], split: str) -> dict[str, dict[str, Any]]:
    """Every run's own row (with its bootstrap, the costly part), made once for both tables."""
    return {run.name: _row(run, split) for group in groups for run in group.runs}


def _row(run: Run, split: str) -> dict[str, Any]:
    return run.memo(("row", split), lambda: run_row(run, split, NUM_RESAMPLES))


def group_row(group: Group, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A single run's row; for several seeds, the mean of every score with its SD, range and 95% interval over seeds."""
    members = [rows[run.name] for run in group.runs]
    if group.single:
        return dict(members[0])
    row = {**members[0], "name": group.name, "seeds": len(members), "interval": "seeds",
           "epochs": float(np.mean([r["epochs"] for r in members])) if all(r["epochs"] for r in members) else None}
    for key in SEED_SUMMARIES:
        values = np.array([r[key] if r[key] is not None else np.nan for r in members], dtype=float)
        row[key] = float(values.mean())
        row[f"{key}_sd"] = float(values.std(ddof=1))
        row[f"{key}_min"], row[f"{key}_max"] = float(values.min()), float(values.max())
        row[f"{key}_low"], row[f"{key}_high"] = seed_interval(values)
    return row


def comparison_table(groups: list[Group], split: str, rows: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per group of seeds (or single run) with its scores on `split`, intervals and key settings."""
    rows = rows if rows is not None else run_rows(groups, split)
    runs = [run for group in groups for run in group.runs]
    fingerprint = _reference([r.metrics.get("data_fingerprint") for r in runs])
    images = _reference([test_images(r, split) for r in runs])
    table = []
    for group in groups:
        row = group_row(group, rows)
        row["data"] = _data_label(group.runs[0], split, fingerprint, images)
        table.append(row)
    return pd.DataFrame(table)


def seeds_table(groups: list[Group], split: str, rows: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Every run of every group, one row each: what the group rows summarise (seeds.csv)."""
    rows = rows if rows is not None else run_rows(groups, split)
    return pd.DataFrame([{"group": group.name, "seed": seed, **rows[run.name]}
                         for group in groups for run, seed in zip(group.runs, group.seeds)])


SIGNIFICANCE_COLUMNS = ["run_a", "run_b", "data", "test", "metric", "seeds_a", "seeds_b", "score_a", "score_b",
                        "a_right_b_wrong", "a_wrong_b_right", "effect_size", "p_a_better", "p_value", "p_adjusted",
                        "summary"]


ALL_PAIRS_UP_TO = 30  # rows on one set of test images; beyond, the pairs a reader needs (tested_pairs)


def tested_pairs(count: int) -> list[tuple[int, int]]:
    """Which pairs of `count` rows (in table order) are tested: every pair up to ALL_PAIRS_UP_TO rows; beyond,
    each row against the next one (is each step down the table real?) and against the top row (does it tie the
    best?), 2n pairs instead of n^2/2: 1,000 runs would be half a million tests, and Holm's correction over that
    many would leave nothing significant."""
    if count <= ALL_PAIRS_UP_TO:
        return list(itertools.combinations(range(count), 2))
    return sorted({(i, i + 1) for i in range(count - 1)} | {(0, i) for i in range(2, count)})


def significance_table(groups: list[Group], split: str, metric: str = "accuracy") -> pd.DataFrame:
    """The pairs of rows scored on the same images of `split` (`tested_pairs`), each with the test that fits it.

    Two single runs: McNemar's exact test on their paired predictions (the unit is the test image).
    Two groups of at least MIN_SEEDS seeds: a t-test whose unit is the seed (paired where both ran the
    same seeds, else Welch's), with Cohen's d and P(A > B) over pairs of seeds. Anything else (a group
    of two seeds, a group against a single run) is "too few seeds to test", never a verdict. With
    many pairs some would pass p < 0.05 by chance alone: each verdict reads the p-value adjusted by
    Holm's method over the pairs tested on the same images, each set of images a family of its own.
    """
    by_images: dict[str, list[Group]] = {}
    for group in groups:
        key = test_images(group.runs[0], split)
        if key is not None:  # a run without predictions on the split has nothing to pair
            by_images.setdefault(key, []).append(group)
    correct = {g.name: _correct(g.runs[0], split) for g in groups if g.single and test_images(g.runs[0], split)}
    rows = []
    for key, members in by_images.items():
        for i, j in tested_pairs(len(members)):
            rows.append(_pair_row(members[i], members[j], key, split, metric, correct))
    table = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)
    for images in table["data"].unique():
        family = table.index[(table["data"] == images) & table["p_value"].notna()]
        table.loc[family, "p_adjusted"] = holm_adjusted(table.loc[family, "p_value"].to_numpy(dtype=float))
    table["summary"] = [_verdict(row) for row in table.itertuples(index=False)]
    return table


def _pair_row(a: Group, b: Group, images: str, split: str, metric: str, correct: dict[str, np.ndarray]) -> dict[str, Any]:
    row: dict[str, Any] = {"run_a": a.name, "run_b": b.name, "data": images, "seeds_a": len(a.runs),
                           "seeds_b": len(b.runs), "metric": metric, "score_a": float(np.mean(a.scores(split, metric))),
                           "score_b": float(np.mean(b.scores(split, metric)))}
    if a.single and b.single:
        correct_a, correct_b = correct[a.name], correct[b.name]
        a_only, b_only, p_value = mcnemar_exact(correct_a, correct_b)
        # McNemar tests correctness image by image: its scores are accuracies, whatever the headline metric.
        row.update(metric="accuracy", score_a=float(correct_a.mean()), score_b=float(correct_b.mean()))
        row.update(test="McNemar over test images", a_right_b_wrong=a_only, a_wrong_b_right=b_only, p_value=p_value)
    elif min(len(a.runs), len(b.runs)) >= MIN_SEEDS:
        test = seed_test(a.scores(split, metric), b.scores(split, metric), a.seeds == b.seeds)
        row.update(test=test.kind, effect_size=test.effect_size, p_a_better=test.p_improvement, p_value=test.p_value)
    else:
        row.update(test=TOO_FEW, p_value=np.nan)
    return row


TOO_FEW = "too few seeds to test"


def _correct(run: Run, split: str) -> np.ndarray:
    y_true, y_pred = _labels(run, split)
    return y_true == y_pred


def _verdict(row: Any) -> str:
    if row.test == TOO_FEW:
        return (f"{row.run_a} vs {row.run_b}: {TOO_FEW} ({int(row.seeds_a)} and {int(row.seeds_b)} seeds; "
                f"a test across seeds needs at least {MIN_SEEDS} in each)")
    better, worse = (row.run_a, row.run_b) if row.score_a >= row.score_b else (row.run_b, row.run_a)
    if row.test.startswith("McNemar"):
        detail = f"McNemar, adjusted p={row.p_adjusted:.3g}"
    else:
        chance = row.p_a_better if better == row.run_a else 1 - row.p_a_better
        detail = (f"{row.test}, adjusted p={row.p_adjusted:.3g}, effect size d={abs(row.effect_size):.2f}, "
                  f"P({better} > {worse})={chance:.2f} over {'the shared seeds' if row.test.startswith('paired') else 'pairs of seeds'}")
    if row.p_adjusted < SIGNIFICANCE_LEVEL:
        return f"{better} beats {worse} ({detail})"
    return f"{row.run_a} vs {row.run_b}: no significant difference ({detail})"


def neighbour_verdicts(significance: pd.DataFrame, order: list[str]) -> list[str]:
    """The verdicts for runs next to each other in `order` (of those tested): is each step down the table real?"""
    verdicts = {frozenset(pair): summary for *pair, summary in
                significance[["run_a", "run_b", "summary"]].itertuples(index=False)}
    tested = [name for name in order if any(name in pair for pair in verdicts)]
    return [verdicts[frozenset(pair)] for pair in zip(tested, tested[1:]) if frozenset(pair) in verdicts]


def significance_text(significance: pd.DataFrame, order: list[str]) -> list[str]:
    """What compare says of significance: how the tests were made, then the verdicts for neighbouring rows."""
    if significance.empty:
        return []
    tested = significance[significance["p_value"].notna()]
    sizes = tested["data"].value_counts(sort=False)
    pairs = " and ".join(f"{n} pair{'s' * (n > 1)}" for n in sizes)
    family = (f"for the {pairs} tested" if len(sizes) <= 1
              else f"within each set of test images ({pairs} tested on {len(sizes)} sets)")
    kinds = [kind for kind in ("McNemar over test images", "paired t over seeds", "Welch t over seeds")
             if (significance["test"] == kind).any()]
    how = {"McNemar over test images": "McNemar's exact test on the same images for single runs",
           "paired t over seeds": "a paired t-test over seeds for groups that ran the same seeds",
           "Welch t over seeds": "Welch's t-test over seeds for groups that did not"}
    largest = int(significance.groupby("data")[["run_a", "run_b"]].apply(lambda t: len(set(t["run_a"]) | set(t["run_b"]))).max())
    which = ("every pair in significance.csv" if largest <= ALL_PAIRS_UP_TO else
             f"in significance.csv the pairs tested (over {ALL_PAIRS_UP_TO} rows, not every pair: each row against "
             "the next and against the best)")
    return [f"{'; '.join(how[k] for k in kinds) or 'no test'}; p adjusted by Holm's method {family}; "
            f"here rows next to each other in the table, {which}:",
            *neighbour_verdicts(significance, order)]


# The comparison table's columns as compare, comparison.md and the report show them: (key in the table, heading).
COLUMNS = (("rank", "#"), ("name", "run"), ("model", "model"), ("settings", "settings"), ("seeds", "seeds"),
           ("accuracy", "accuracy (95% CI)"), ("accuracy_sd", "acc. SD over seeds"), ("macro_f1", "macro-F1 (95% CI)"),
           ("balanced_accuracy", "balanced acc."), ("accuracy_no_duplicates", "acc. w/o duplicates"),
           ("parameters", "params"), ("training_seconds", "train time"), ("trained_on", "trained on"),
           ("epochs", "epochs"), ("data", "data"))
TEXT_COLUMNS = ("name", "model", "settings", "trained_on", "data")  # the rest are numbers


def ranks(table: pd.DataFrame) -> list[str]:
    """Each row's rank; rows scored on other images are not ranked among the rest ("-")."""
    numbers = iter(range(1, len(table) + 1))
    return ["-" if data == DATA_LABELS["different"] else str(next(numbers)) for data in table["data"]]


def cell_text(row: dict[str, Any], key: str) -> str:
    """One cell of the table as it is shown: scores to 4 places with their interval, params in millions, minutes."""
    value = row.get(key)
    missing = value is None or pd.isna(value)
    if key in ("accuracy", "macro_f1"):
        low, high = row.get(f"{key}_low", np.nan), row.get(f"{key}_high", np.nan)
        return f"{value:.4f}" + (f" ({low:.3f}-{high:.3f})" if not pd.isna(low) else "")
    if key in ("balanced_accuracy", "accuracy_no_duplicates"):
        return f"{value:.4f}"
    if missing:
        return "-"
    if key == "accuracy_sd":
        return f"{value:.4f}"
    if key == "seeds":
        return str(int(value))
    if key == "parameters":
        return f"{value / 1e6:.2f}M" if value else "-"
    if key == "training_seconds":
        return f"{value / 60:.1f} min" if value else "-"
    if key == "epochs":
        return (f"{value:.0f}" if value == int(value) else f"{value:.1f}") if value else "-"
    return str(value)


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    """The comparison as a Markdown table (also what the console shows)."""
    lines = ["| " + " | ".join(heading for _, heading in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for rank, row in zip(ranks(table), table.to_dict("records")):
        lines.append("| " + " | ".join(rank if key == "rank" else cell_text(row, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class Comparison:
    """Finished runs compared: tables, tests and figures as objects. `compare` writes it; a report can render it."""

    split: str
    metric: str
    runs: list[Run]
    groups: list[Group]  # in the order of `table`
    table: pd.DataFrame  # one row per group of seeds (or single run), in the order shown
    seeds: pd.DataFrame  # one row per run: what each group row summarises
    significance: pd.DataFrame  # every pair of rows on the same test images, with the test that fits it
    markdown: str  # the table as the console and comparison.md show it
    notes: list[str]
    significance_text: list[str]  # how the tests were made, then the verdicts for neighbouring rows
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure

    def console(self) -> list[str]:
        """What `compare` prints: the rows the charts draw (the rest are in comparison.md), the notes, and the
        verdicts between those rows."""
        drawn = rows_shown(self.table)
        shown, hidden = self.table.iloc[drawn], self.table.drop(index=self.table.index[drawn])
        lines = [markdown_table(shown, self.metric)]
        if len(hidden):
            other = int((hidden["data"] == DATA_LABELS["different"]).sum())
            ranked = len(hidden) - other  # the ranked rows shown are the first CHART_ROWS
            which = [f"ranks {CHART_ROWS + 1}-{CHART_ROWS + ranked}"] * bool(ranked) + \
                [f"{other} on other test images"] * bool(other)
            lines.append(f"... and {len(hidden)} more rows ({', '.join(which)}) in comparison.md and comparison.csv")
        lines += self.notes
        tests = self.significance_text
        if tests:
            names = set(shown["name"])
            verdicts = [v for v in tests[1:] if any(v.startswith(n + " ") for n in names)]
            lines += [tests[0], *verdicts[:len(shown) - 1]]
        return lines

    def document(self) -> str:
        """comparison.md: the table, the notes and the significance verdicts."""
        tests = self.significance_text
        return (f"# Comparison on the {self.split} split\n\n{self.markdown}\n" + "".join(f"{n}\n" for n in self.notes)
                + (f"\n## Significance\n\n{tests[0]}\n\n" + "".join(f"- {s}\n" for s in tests[1:]) if tests else ""))


def build_comparison(roots: Path | Sequence[Path], split: str = "test", metric: str = "accuracy",
                     sort: str | None = None) -> Comparison:
    """Compare every finished run under `roots` (recursively), seeds of one configuration as one row: nothing is written."""
    runs = find_runs(roots, split)
    groups = group_runs(runs)
    rows = run_rows(groups, split)
    table = comparison_table(groups, split, rows)
    sort = sort or metric
    table = table.sort_values(sort, ascending=sort in ("name", "training_seconds", "parameters"), kind="stable")
    # Rows scored on other images are not ranked among the rest: they follow them, in the same order.
    table = table.sort_values("data", key=lambda data: data == DATA_LABELS["different"], kind="stable")
    table = table.reset_index(drop=True)
    order = {name: i for i, name in enumerate(table["name"])}
    groups.sort(key=lambda g: order[g.name])
    significance = significance_table(groups, split, metric)
    notes = []
    if (table["seeds"] > 1).any():
        notes.append("A row with several seeds is a group: one configuration trained with each seed; its scores are "
                     "the mean over seeds and its 95% interval is Student's t over seeds (single runs: bootstrap over "
                     "the test images). Every seed is in seeds.csv.")
    if (table["data"] == DATA_LABELS["train"]).any():
        notes.append("Rows marked 'other train data' were scored on the same test images but trained on other "
                     "images (their data fingerprint differs): they are ranked and tested, and the mark says so.")
    if (table["data"] == DATA_LABELS["different"]).any():
        notes.append("Rows marked DIFFERENT were scored on other test images; their numbers are not comparable "
                     "with the rest.")
    figures = comparison_figures(table, groups, split)
    return Comparison(split, metric, runs, groups, table, seeds_table(groups, split, rows), significance,
                      markdown_table(table, metric), notes, significance_text(significance, list(table["name"])), figures)


CHART_ROWS = 30  # ranked rows drawn in a chart: beyond, bars and heatmap rows are too thin to read; the table has them all
OTHER_DATA_ROWS = 10  # rows on other test images drawn after them: a first small run beside many reference runs
CURVE_ROWS = 8  # lines in the curves chart, for the same reason


def rows_shown(table: pd.DataFrame) -> list[int]:
    """The positions of the rows that the console and the charts show: the first CHART_ROWS ranked rows, then
    the first OTHER_DATA_ROWS rows scored on other test images, which the table lists last."""
    different = (table["data"] == DATA_LABELS["different"]).to_numpy()
    return [int(i) for i in np.flatnonzero(~different)[:CHART_ROWS]] + \
        [int(i) for i in np.flatnonzero(different)[:OTHER_DATA_ROWS]]


def comparison_figures(table: pd.DataFrame, groups: list[Group], split: str) -> dict[str, Any]:
    """compare's charts, of the rows `rows_shown` picks (groups of seeds are one row each)."""
    from fer_bench.evaluation import charts

    drawn = rows_shown(table)
    different = (table["data"] == DATA_LABELS["different"]).to_numpy()
    shown = [groups[i] for i in drawn]
    total = len(groups) if len(groups) > len(shown) else None
    other = different[drawn].tolist()
    names = [g.name for g in shown]
    figures = {
        "comparison.png": charts.comparison_figure(table.iloc[drawn], split, seed_scores={
            g.name: {m: g.scores(split, m) for m in ("accuracy", "macro_f1")} for g in shown if not g.single}, total=total),
        "per_class_f1.png": charts.per_class_f1_figure(names, [_per_class_f1(g, split) for g in shown], split, other,
                                                       total=total),
        "confusion_matrices.png": charts.confusion_grid_figure(
            names[:charts.MAX_CONFUSION_PANELS],
            [sum(confusion_matrix(r, split) for r in g.runs) for g in shown[:charts.MAX_CONFUSION_PANELS]],
            [g.runs[0].classes for g in shown], split, other, total=len(groups)),
    }
    curves = [(g, o) for g, o in zip(shown, other)
              if all(r.history is not None and "val_accuracy" in r.history for r in g.runs)][:CURVE_ROWS]
    if curves:
        figures["training_curves.png"] = charts.validation_curves_figure(
            [(g.name, [r.history for r in g.runs]) for g, _ in curves], [o for _, o in curves])
    return figures


def _per_class_f1(group: Group, split: str) -> dict:
    """Per-class F1 of a run, or its mean over a group's seeds (with the SD beside it)."""
    scores = [r.metrics.get(split, {}).get("per_class", {}) for r in group.runs]
    if group.single:
        return scores[0]
    classes = list(dict.fromkeys(c for s in scores for c in s))
    merged = {}
    for c in classes:
        values = np.array([s.get(c, {}).get("f1", np.nan) for s in scores], dtype=float)
        merged[c] = {"f1": float(np.nanmean(values)), "f1_sd": float(np.nanstd(values, ddof=1))}
    return merged


def write_comparison(comparison: Comparison, out: Path) -> Path:
    """comparison.csv, seeds.csv, comparison.md, significance.csv and the figures, into `out` (each atomically)."""
    folder = RunDirectory(Path(out)).create()
    folder.write_table("comparison.csv", comparison.table)
    folder.write_table("seeds.csv", comparison.seeds)
    folder.write_text("comparison.md", comparison.document())
    folder.write_table("significance.csv", comparison.significance)
    for name, figure in comparison.figures.items():
        folder.write_figure(name, figure)
    return folder.path


def _labels(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's true and predicted classes as indices into the run's classes."""
    def compute() -> tuple[np.ndarray, np.ndarray]:
        predictions = run.split_predictions(split)
        # pd.Categorical, not Series.map: map costs 3 ms a column on pandas' string arrays, 6 s over 1,000 runs
        return tuple(pd.Categorical(predictions[c], categories=run.classes).codes.astype(int) for c in ("true", "predicted"))
    return run.memo(("labels", split), compute)


def confusion_matrix(run: Run, split: str) -> np.ndarray:
    y_true, y_pred = _labels(run, split)
    k = len(run.classes)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
