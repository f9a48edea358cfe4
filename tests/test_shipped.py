"""The shipped model: `predict` and `evaluate` work with no run folder, and give the committed answers."""

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from fer_bench import EMOTIONS
from fer_bench.cli import app
from fer_bench.inference import SHIPPED_MODEL
from conftest import REAL_DATA, REPO

runner = CliRunner()
METRICS = json.loads((SHIPPED_MODEL / "metrics.json").read_text())
REFERENCE_RUN = REPO / "results" / "reference" / METRICS["run"]
PER_CLASS = 3


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_the_shipped_model_is_a_committed_reference_run():
    assert json.loads((REFERENCE_RUN / "metrics.json").read_text()) == METRICS
    assert (SHIPPED_MODEL / "config.yaml").read_text() == (REFERENCE_RUN / "config.yaml").read_text()
    assert METRICS["classes"] == list(EMOTIONS)
    assert (SHIPPED_MODEL / "model.keras").stat().st_size < 25e6
    assert 'fer_bench = ["shipped/*"]' in (REPO / "pyproject.toml").read_text()  # installed with the package


@pytest.fixture(scope="module")
def test_photos(tmp_path_factory):
    """A few PrivateTest faces per class, with the shipped run's committed predictions for them."""
    if not (REAL_DATA / "test").is_dir():
        pytest.skip("needs ../shared/fer2013")
    committed = pd.read_csv(REFERENCE_RUN / "predictions.csv")
    committed = committed[committed["split"] == "test"]
    chosen = committed.groupby("true", sort=True).head(PER_CLASS)
    folder = tmp_path_factory.mktemp("photos")
    for file, emotion in zip(chosen["file"], chosen["true"]):
        (folder / emotion).mkdir(exist_ok=True)
        shutil.copyfile(REAL_DATA / file, folder / emotion / file.split("/")[-1])
    return folder, chosen.set_index(chosen["file"].str.split("/").str[-1])


@pytest.mark.slow
def test_predict_with_no_run_gives_the_committed_predictions(test_photos):
    folder, committed = test_photos
    photos = sorted(folder.rglob("*.jpg"))
    out = invoke("predict", *photos, "--json")
    assert out.exit_code == 0, out.output
    results = json.loads(out.stdout)
    assert len(results) == len(EMOTIONS) * PER_CLASS
    for result in results:
        row = committed.loc[result["image"].split("/")[-1]]
        (face,) = result["faces"]
        assert face["emotion"] == row["predicted"]
        for emotion, probability in face["top3"]:
            assert probability == pytest.approx(row[f"p_{emotion}"], abs=1e-3)


@pytest.mark.slow
def test_evaluate_with_no_run_scores_the_shipped_model(test_photos, tmp_path):
    folder, committed = test_photos
    out = invoke("evaluate", "--data-dir", folder, "--results-dir", tmp_path)
    assert out.exit_code == 0, out.output
    metrics = json.loads((tmp_path / "shipped" / "eval" / folder.name / "metrics.json").read_text())
    expected = (committed["true"] == committed["predicted"]).mean()
    assert metrics["test"]["count"] == len(EMOTIONS) * PER_CLASS
    assert metrics["test"]["accuracy"] == pytest.approx(expected)
