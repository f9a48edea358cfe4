"""The `fer-bench` command line. It parses, calls one function, and turns FerBenchError into one line + exit 1."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from fer_bench.errors import FerBenchError
from fer_bench.photos.detectors import DEFAULT_DETECTOR
from fer_bench.runs.artifacts import check_name

app = typer.Typer(help="Train, evaluate and compare facial-expression-recognition models on FER-2013.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Get and check the data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from fer_bench import __version__

        typer.echo(f"fer-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="print the version and exit")] = False) -> None:
    """Train, evaluate and compare facial-expression-recognition models on FER-2013."""


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def one_line_errors(command: Callable) -> Callable:
    """Print a FerBenchError as `error: ...` and exit 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FerBenchError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted; a run stopped this way resumes when the same command is run again", 130)

    return wrapper


DataDir = Annotated[Path | None, typer.Option("--data-dir", help="FER-2013 folder or fer2013.csv (overrides data.path)")]


@app.command()
@one_line_errors
def run(
    configs: Annotated[list[Path], typer.Argument(help="experiment YAML file(s), run one after another")],
    data_dir: DataDir = None,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="where run folders go")] = Path("results"),
    name: Annotated[str | None, typer.Option("--name", help="run name (one config only)")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set train.epochs=3")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="discard an existing run of the same name")] = False,
) -> None:
    """Train and evaluate each experiment; write its artifacts under RESULTS_DIR/<name>/."""
    from fer_bench.experiment import load_experiment
    from fer_bench.runs.runner import run_experiment

    if name and len(configs) > 1:
        fail("--name names one run; drop it to run several configs")
    if name is not None:
        check_name(name)
    # Validate every config before the first one trains: a typo in the fifth should not wait an hour.
    experiments = [load_experiment(path, overrides or []) for path in configs]
    failures = []
    for path, exp in zip(configs, experiments):
        try:
            run_experiment(exp, data_dir=data_dir, results_dir=results_dir, name=name, restart=restart)
        except FerBenchError as exc:
            if len(configs) == 1:
                raise
            typer.echo(f"error: {path}: {exc}", err=True)
            failures.append(str(path))
    if failures:
        fail(f"{len(failures)} of {len(configs)} runs failed: {', '.join(failures)}")


@app.command()
@one_line_errors
def sweep(
    configs: Annotated[list[Path], typer.Argument(help="experiment YAML files, or one sweep file (sweeps/NAME.yaml)")],
    seeds: Annotated[str | None, typer.Option("--seeds", help="5 = train.seed 0..4; or the seeds: 0,3,7")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", help="try every value: --grid train.learning_rate=[0.001,0.0003] (repeatable)")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a key in every trial")] = None,
    data_dir: DataDir = None,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="the sweep goes to RESULTS_DIR/NAME/")] = Path("results"),
    name: Annotated[str | None, typer.Option("--name", help="sweep name (default: the sweep file's, or the configs')")] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", help="trials at a time (local: one per GPU, else 1; ray: CPUs split between them)")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local or ray")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="ray: auto, or host:port of a running cluster")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="train every trial again, finished ones too")] = False,
) -> None:
    """Run configs x grid x seeds as trials, in parallel; the same command again skips finished trials."""
    from fer_bench.sweeps.driver import run_sweep, summary_table
    from fer_bench.sweeps.plan import SweepSpec, default_name, is_sweep_file, parse_grid, parse_seeds, read_sweep_file

    files = [path for path in configs if path.is_file() and is_sweep_file(path)]
    if files and len(configs) > 1:
        fail(f"{files[0]} is a sweep file: give it alone, or list experiment files instead")
    spec = read_sweep_file(files[0]) if files else SweepSpec(name=default_name(tuple(configs)), configs=tuple(configs))
    added = parse_grid(grid or [])
    clash = sorted(set(added) & set(spec.grid))
    if clash:
        fail(f"--grid {clash[0]}: the sweep file already sets that grid key")
    spec = SweepSpec(name=check_name(name) if name is not None else spec.name, configs=spec.configs,
                     seeds=parse_seeds(seeds) if seeds is not None else spec.seeds,
                     grid={**spec.grid, **added}, sets=(*spec.sets, *(overrides or [])))
    result = run_sweep(spec, executor, jobs, address, data_dir, results_dir, restart)
    typer.echo(summary_table(result))
    failed = result.failed
    typer.echo(f"{result.count('finished')} of {len(result.trials)} trials finished; manifest {result.folder / 'sweep.json'}")
    if failed:
        fail(f"{len(failed)} trial{'s' if len(failed) > 1 else ''} did not finish: "
             f"{', '.join(t['id'] for t in failed[:5])}{' ...' if len(failed) > 5 else ''}")


Results = Annotated[list[Path] | None, typer.Argument(help="folders of run folders, searched recursively (default: results)")]
Metric = Annotated[str, typer.Option("--metric", help="headline metric: accuracy, macro_f1, balanced_accuracy, weighted_f1")]
Split = Annotated[str, typer.Option("--split", help="validation or test")]
Sort = Annotated[str | None, typer.Option("--sort", help="column to sort by (default: the metric)")]


def _comparison(results: list[Path] | None, metric: str, split: str, sort: str | None) -> Any:
    """The comparison that compare writes and report renders, after checking the options."""
    from fer_bench.reporting.compare import METRICS, SORT_KEYS, build_comparison

    choices = {"--metric": (metric, METRICS), "--split": (split, ("validation", "test")),
               "--sort": (sort or metric, SORT_KEYS)}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            fail(f"{option} must be one of {list(allowed)}; got {value!r}")
    return build_comparison(results or [Path("results")], split=split, metric=metric, sort=sort)


@app.command()
@one_line_errors
def compare(
    results: Results = None,
    out: Annotated[Path | None, typer.Option("--out", help="where the table and charts go (default: RESULTS, if one)")] = None,
    metric: Metric = "accuracy", split: Split = "test", sort: Sort = None,
) -> None:
    """Compare finished runs: table, 95% intervals, significance tests and charts."""
    from fer_bench.reporting.compare import write_comparison

    if out is None and results and len(results) > 1:
        fail("several RESULTS folders: say where the comparison goes with --out")
    comparison = _comparison(results, metric, split, sort)
    folder = write_comparison(comparison, out if out is not None else (results or [Path("results")])[0])
    for line in comparison.console():
        typer.echo(line)
    typer.echo(f"wrote comparison.csv, seeds.csv, comparison.md, significance.csv and charts to {folder}")


@app.command()
@one_line_errors
def report(
    results: Results = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write")] = Path("report.html"),
    metric: Metric = "accuracy", split: Split = "test", sort: Sort = None,
) -> None:
    """One self-contained HTML page of the comparison: sortable table, tests, charts, a section per run."""
    from fer_bench.reporting.report import write_report

    if out.suffix.lower() not in (".html", ".htm"):
        fail(f"--out must be an .html file; got {out}")
    comparison = _comparison(results, metric, split, sort)
    path = write_report(comparison, [str(r) for r in results or [Path("results")]], out)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {len(comparison.table)} rows from "
               f"{len(comparison.runs)} runs; open it in a browser")


EXPORTERS = {"mlflow": "fer_bench.tracking.mlflow_export"}  # the trackers `export` hands runs to: a module with export_runs


@app.command()
@one_line_errors
def export(
    tracker: Annotated[str, typer.Argument(help=f"where to: {', '.join(EXPORTERS)}")],
    results: Results = None,
    tracking_uri: Annotated[str, typer.Option("--tracking-uri", help="MLflow tracking URI: a server (http://...) or a "
                                              "database (sqlite:///mlflow.db, the default)")] = "sqlite:///mlflow.db",
    experiment: Annotated[str, typer.Option("--experiment", help="experiment name (created if missing)")] = "fer-bench",
) -> None:
    """Hand finished runs to an experiment tracker: params, curves, scores, tags and artifacts; again = update."""
    import importlib

    if tracker not in EXPORTERS:
        fail(f"TRACKER must be one of {list(EXPORTERS)}; got {tracker!r}")
    exporter = importlib.import_module(EXPORTERS[tracker])
    summary = exporter.export_runs(results or [Path("results")], tracking_uri=tracking_uri, experiment=experiment)
    typer.echo(summary.line())


@app.command()
@one_line_errors
def predict(
    arguments: Annotated[list[Path], typer.Argument(
        metavar="[RUN] PHOTOS...", help="a run folder or model file (default: the shipped model), then photos or folders")],
    annotate: Annotated[Path | None, typer.Option("--annotate", help="save each photo with boxes and labels here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    tta: Annotated[str, typer.Option("--tta", help="test-time augmentation: none, flip, ten_crop")] = "none",
    detector: Annotated[str, typer.Option(
        "--detector", help="mtcnn (finds more faces) or haar (about 4x faster)")] = DEFAULT_DETECTOR,
) -> None:
    """Find the faces in ordinary photos and say which emotion each shows."""
    from fer_bench.evaluation.predictors import SHIPPED_MODEL, is_model_source, load_predictor
    from fer_bench.evaluation.tta import tta_views
    from fer_bench.photos.detectors import DETECTORS
    from fer_bench.photos.predict import predict_photos
    from fer_bench.runs.artifacts import RunDirectory

    model, images = (arguments[0], arguments[1:]) if is_model_source(arguments[0]) else (SHIPPED_MODEL, arguments)
    if not images:
        fail(f"no photos given after the model {model}")
    tta_views(np.zeros((0, 48, 48), np.uint8), tta)  # checks the mode before the model loads
    if detector not in DETECTORS:
        fail(f"--detector must be one of {sorted(DETECTORS)}; got {detector!r}")
    if annotate is not None:
        RunDirectory(annotate).create()  # a bad --annotate fails now, not after the first photo
    results = predict_photos(load_predictor(model), images, annotate, tta, detector)
    errors = [r for r in results if "error" in r]
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for result in results:
            if "error" in result:
                continue
            if not result["faces"]:
                typer.echo(f"{result['image']}: no face found")
            for number, face in enumerate(result["faces"], start=1):
                top = ", ".join(f"{c} {p:.2f}" for c, p in face["top3"])
                box = " ".join(f"{key}={value}" for key, value in face["box"].items())
                typer.echo(f"{result['image']}: face {number} at {box}: {face['emotion']} ({top})")
    for result in errors:
        typer.echo(f"error: {result['image']}: {result['error']}", err=True)
    if errors:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def evaluate(
    run_dir: Annotated[Path | None, typer.Argument(
        metavar="[RUN]", help="a finished run folder (default: the shipped model)")] = None,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="labelled class-per-folder dataset")] = ...,
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", help="folder names to classes: anger=angry,sadness=sad (repeatable)")] = None,
    tta: Annotated[str, typer.Option("--tta", help="also score with test-time augmentation: flip, ten_crop")] = "none",
    name: Annotated[str | None, typer.Option("--name", help="name of the evaluation (default: the folder's name)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier evaluation of the same --name")] = False,
    results_dir: Annotated[Path, typer.Option(
        "--results-dir", help="without RUN: the shipped model's evaluations go to RESULTS_DIR/shipped/eval/")] = Path("results"),
) -> None:
    """Score a trained run on another labelled dataset (a cross-dataset test); writes RUN/eval/NAME/.

    An earlier evaluation is never replaced silently: a default name that is taken gets a numbered
    sibling (NAME-2), an explicit --name that is taken is an error unless --overwrite.
    """
    from fer_bench.evaluation.predictors import SHIPPED_MODEL
    from fer_bench.evaluation.tta import tta_views
    from fer_bench.runs.crossdata import evaluate_on_dataset

    tta_views(np.zeros((0, 48, 48), np.uint8), tta)
    if name is not None:
        check_name(name)
    eval_root = results_dir / "shipped" / "eval" if run_dir is None else None
    path, record = evaluate_on_dataset(run_dir or SHIPPED_MODEL, data_dir, mapping, tta, name, overwrite, eval_root)
    test = record["test"]
    typer.echo(f"{record['run']}: {test['count']} images, accuracy {test['accuracy']:.4f}, "
               f"macro-F1 {test['macro_f1']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f}")
    if "test_tta" in record:
        typer.echo(f"with {tta} test-time augmentation: accuracy {record['test_tta']['accuracy']:.4f}")
    typer.echo(f"wrote {path}")


@app.command()
@one_line_errors
def ensemble(
    runs: Annotated[list[Path] | None, typer.Argument(help="finished run folders (two or more)")] = None,
    name: Annotated[str, typer.Option("--name", help="name of the ensemble run")] = ...,
    group: Annotated[Path | None, typer.Option(
        "--group", help="a folder of runs (a sweep's group: every seed of one configuration) to average")] = None,
    results_dir: Annotated[Path | None, typer.Option(
        "--results-dir", help="default: beside the first run (beside the group's folder, for --group)")] = None,
    tta: Annotated[str, typer.Option(
        "--tta", help="also score the averaged model with test-time augmentation: flip, ten_crop")] = "none",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="where the averaged model's images are read again (--tta, or a member trained under mixed "
                           "precision): the FER-2013 folder (default: as the first member's config says)")] = None,
) -> None:
    """Average the test probabilities of several runs into a new run that `compare` ranks beside them."""
    from fer_bench.evaluation.tta import tta_views
    from fer_bench.runs.ensemble import ensemble_runs, group_members

    check_name(name)
    tta_views(np.zeros((0, 48, 48), np.uint8), tta)
    members = list(runs or [])
    if group is not None:
        members += group_members(group)
        results_dir = results_dir if results_dir is not None else group.parent
    path, record = ensemble_runs(members, name, results_dir, tta, data_dir)
    typer.echo(f"{name}: test accuracy {record['test']['accuracy']:.4f}, macro-F1 {record['test']['macro_f1']:.4f} "
               f"from {len(members)} runs -> {path}")
    if "test_tta" in record:
        typer.echo(f"with {tta} test-time augmentation: accuracy {record['test_tta']['accuracy']:.4f}")


@app.command()
def models() -> None:
    """List what `model.name` can be: deep models, and classifiers on features (with `features.extractor`)."""
    from fer_bench.models.features import CLASSIFIERS, EXTRACTORS, classifier_params
    from fer_bench.models.registry import MODELS, is_backbone, model_params

    def show(name: str, kind: str, params: dict) -> None:
        typer.echo(f"{name:<20} {kind:<24} {', '.join(f'{k}={v!r}' for k, v in params.items())}")

    typer.echo("deep models (Keras):")
    for name in sorted(MODELS):
        show(name, "ImageNet backbone" if is_backbone(name) else "trained from scratch", model_params(name))
    typer.echo(f"classifiers on features (features.extractor: {' | '.join(EXTRACTORS)}):")
    for name in sorted(CLASSIFIERS):
        show(name, "scikit-learn", classifier_params(name))


@data_app.command("download")
@one_line_errors
def data_download() -> None:
    """Fetch FER-2013 (msambare/fer2013) through kagglehub and print where it is."""
    from fer_bench.data.sources import download_fer2013

    typer.echo(str(download_fer2013()))


@data_app.command("inspect")
@one_line_errors
def data_inspect(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Splits, class counts, and the unreadable, duplicate and blank images."""
    from fer_bench import EMOTIONS
    from fer_bench.config import DataConfig
    from fer_bench.data.dataset import SPLITS, inspect_data, load_data

    report = inspect_data(load_data(DataConfig(), EMOTIONS, data_dir))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"source       {report['source']}  ({report['protocol']} split, fingerprint {report['fingerprint']})")
    header = "".join(f"{c:>9}" for c in report["classes"])
    typer.echo(f"{'split':<12}{'total':>7}{header}")
    for split in SPLITS:
        counts = report["class_counts"][split]
        typer.echo(f"{split:<12}{report['split_sizes'][split]:>7}" + "".join(f"{counts[c]:>9}" for c in report["classes"]))
    for split, count in report["duplicates_of_train"].items():
        share = count / max(report["split_sizes"][split], 1)
        typer.echo(f"{split} images that duplicate a train image pixel for pixel: {count} ({share:.1%})")
    typer.echo(f"duplicates within a split: {report['duplicates_within']}")
    typer.echo(f"blank images: { {s: len(v) for s, v in report['blank_images'].items()} }")
    typer.echo(f"unreadable or malformed: {len(report['skipped'])}")
    for item in report["skipped"]:
        typer.echo(f"  {item['item']}: {item['reason']}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
