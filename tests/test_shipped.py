"""The shipped model: `predict` and `evaluate` work with no run folder, and give the committed answers."""

import json

import pytest
from conftest import REPO, SHIPPED_PER_CLASS
from typer.testing import CliRunner

from fer_bench import EMOTIONS
from fer_bench.cli import app
from fer_bench.evaluation.predictors import SHIPPED_MODEL

runner = CliRunner()
METRICS = json.loads((SHIPPED_MODEL / "metrics.json").read_text())
REFERENCE_RUN = REPO / "results" / "reference" / METRICS["run"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_the_shipped_model_is_a_committed_reference_run():
    assert json.loads((REFERENCE_RUN / "metrics.json").read_text()) == METRICS
    assert (SHIPPED_MODEL / "config.yaml").read_text() == (REFERENCE_RUN / "config.yaml").read_text()
    assert METRICS["classes"] == list(EMOTIONS)
    assert (SHIPPED_MODEL / "model.keras").stat().st_size < 25e6
    assert 'fer_bench = ["shipped/*"]' in (REPO / "pyproject.toml").read_text()  # installed with the package


def assert_committed_predictions(predict_json: str, committed) -> None:
    """`predict --json` output agrees with the shipped run's committed predictions for those photos."""
    results = json.loads(predict_json)
    assert len(results) == len(EMOTIONS) * SHIPPED_PER_CLASS
    for result in results:
        row = committed.loc[result["image"].split("/")[-1]]
        (face,) = result["faces"]
        assert face["emotion"] == row["predicted"]
        for emotion, probability in face["top3"]:
            assert probability == pytest.approx(row[f"p_{emotion}"], abs=1e-3)


def assert_committed_score(metrics: dict, committed) -> None:
    assert metrics["test"]["count"] == len(EMOTIONS) * SHIPPED_PER_CLASS
    assert metrics["test"]["accuracy"] == pytest.approx((committed["true"] == committed["predicted"]).mean())


@pytest.mark.slow
def test_predict_with_no_run_gives_the_committed_predictions(shipped_photos):
    folder, committed = shipped_photos
    out = invoke("predict", *sorted(folder.rglob("*.jpg")), "--json")
    assert out.exit_code == 0, out.output
    assert_committed_predictions(out.stdout, committed)


@pytest.mark.slow
def test_evaluate_with_no_run_scores_the_shipped_model(shipped_photos, tmp_path):
    folder, committed = shipped_photos
    out = invoke("evaluate", "--data-dir", folder, "--results-dir", tmp_path)
    assert out.exit_code == 0, out.output
    assert_committed_score(json.loads((tmp_path / "shipped" / "eval" / folder.name / "metrics.json").read_text()),
                           committed)
