"""The `fer-bench` command line. It parses, calls one function, and turns FerBenchError into one line + exit 1."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fer_bench.errors import FerBenchError

app = typer.Typer(help="Train, evaluate and compare facial-expression-recognition models on FER-2013.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Get and check the data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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
            fail("interrupted", 130)

    return wrapper


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter is noise on the console; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="FER-2013 folder or fer2013.csv (overrides data.path)")]


@app.command()
@one_line_errors
def run(
    configs: Annotated[list[Path], typer.Argument(help="experiment YAML file(s), run one after another")],
    data_dir: DataDir = None,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="where run folders go")] = Path("results"),
    name: Annotated[Optional[str], typer.Option("--name", help="run name (one config only)")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set train.epochs=3")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="discard an existing run of the same name")] = False,
) -> None:
    """Train and evaluate each experiment; write its artifacts under RESULTS_DIR/<name>/."""
    from fer_bench.runner import load_experiment, run_experiment

    _quiet_tensorflow()
    if name and len(configs) > 1:
        fail("--name names one run; drop it to run several configs")
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
def models() -> None:
    """List the registered models and their parameters."""
    from fer_bench.models import BACKBONES, MODELS, model_params

    for name in sorted(MODELS):
        kind = "ImageNet backbone" if name in BACKBONES else "trained from scratch"
        params = ", ".join(f"{k}={v!r}" for k, v in model_params(name).items())
        typer.echo(f"{name:<14} {kind:<22} {params}")


@data_app.command("download")
@one_line_errors
def data_download() -> None:
    """Fetch FER-2013 (msambare/fer2013) through kagglehub and print where it is."""
    from fer_bench.data import download_fer2013

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
    from fer_bench.data import SPLITS, inspect_data, load_data

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
