import json
import subprocess
import sys

import pytest
from conftest import REPO, make_fer_folder
from helpers import check_run
from typer.testing import CliRunner

from fer_bench.cli import app

runner = CliRunner()
TINY = ["--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "model.params.filters=[8, 16]",
        "--set", "model.params.dense_units=16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_does_not_import_tensorflow():
    code = "import sys; from fer_bench.cli import app; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "fer_bench.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout and "Traceback" not in out.stderr


def test_bad_config_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {optimizer: adamax}\n")
    result = invoke("run", bad, "--results-dir", tmp_path / "r")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: train.optimizer must be one of ['adam', 'adamw', 'sgd', 'rmsprop']; got 'adamax'"]
    assert not (tmp_path / "r").exists()


def test_missing_data_dir_is_one_line(tmp_path):
    result = invoke("run", REPO / "configs/custom_cnn.yaml", "--data-dir", tmp_path / "nowhere",
                    "--results-dir", tmp_path / "r")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: data path not found: {tmp_path / 'nowhere'}"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_run_writes_every_artifact_and_learns(tmp_path):
    data = make_fer_folder(tmp_path / "data", counts=(20, 4, 4), classes=("angry", "happy", "surprise"))
    result = invoke("run", REPO / "configs/custom_cnn.yaml", "--data-dir", data, "--results-dir", tmp_path / "r",
                    "--name", "tiny", "--set", "data.classes=[angry, happy, surprise]",
                    "--set", "train.epochs=8", "--set", "model.params.filters=[16, 32]",
                    "--set", "model.params.dense_units=32", "--set", "train.batch_size=16",
                    "--set", "model.params.dropout=0.1")
    assert result.exit_code == 0, result.output
    metrics = check_run(tmp_path / "r/tiny", ("angry", "happy", "surprise"))
    assert "test      accuracy" in result.output
    # the synthetic classes differ by a bright band: a working pipeline learns them
    assert metrics["validation"]["accuracy"] > 0.6
    # the same name again is refused rather than overwritten
    again = invoke("run", REPO / "configs/custom_cnn.yaml", "--data-dir", data, "--results-dir", tmp_path / "r",
                   "--name", "tiny")
    assert again.exit_code == 1 and "already finished; pass --restart" in again.output


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(fer_folder, tmp_path):
    results = []
    for name in ("a", "b"):
        out = invoke("run", REPO / "configs/custom_cnn_aug.yaml", "--data-dir", fer_folder,
                     "--results-dir", tmp_path, "--name", name, *TINY)
        assert out.exit_code == 0, out.output
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    for split in ("validation", "test"):
        assert results[0][split] == results[1][split]
    first = (tmp_path / "a/predictions.csv").read_text()
    assert first == (tmp_path / "b/predictions.csv").read_text()


@pytest.mark.slow
def test_several_configs_one_failing_does_not_stop_the_rest(fer_folder, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {path: /no/such/dir}\nmodel: {name: custom_cnn}\n")
    good = tmp_path / "good.yaml"
    good.write_text(f"data: {{path: {fer_folder}}}\nmodel: {{name: custom_cnn, params: {{filters: [8]}}}}\n")
    result = invoke("run", broken, good, "--results-dir", tmp_path / "r", "--set", "train.epochs=1")
    assert result.exit_code == 1
    assert "error: 1 of 2 runs failed: " in result.output and "broken.yaml" in result.output
    assert not (tmp_path / "r/broken").exists()  # its data never loaded: nothing was written
    assert json.loads((tmp_path / "r/good/status.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_a_finished_default_name_gets_a_numbered_sibling(fer_folder, tmp_path):
    """The runner names every kind of run alike: a classical one, trained in a second, stands for them all."""
    for _ in range(2):
        out = invoke("run", REPO / "configs/hog_svm.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path,
                     "--set", "search.max_samples=null")
        assert out.exit_code == 0, out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hog_svm", "hog_svm-2"]


def test_data_inspect_reports_splits_and_duplicates(tmp_path):
    root = make_fer_folder(tmp_path, counts=(3, 2, 2), classes=("happy", "sad"))
    copy = next((root / "train" / "sad").iterdir())
    (root / "test" / "sad" / "PublicTest_dup.png").write_bytes(copy.read_bytes())
    result = invoke("data", "inspect", "--data-dir", root)
    assert result.exit_code == 0, result.output
    assert "validation images that duplicate a train image pixel for pixel: 1" in result.output
    report = json.loads(invoke("data", "inspect", "--data-dir", root, "--json").stdout)
    assert report["split_sizes"] == {"train": 6, "validation": 5, "test": 4}


def test_models_lists_deep_models_and_classifiers():
    result = invoke("models")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines() if not line.endswith(":") and "(" not in line[:20]]
    assert names == ["custom_cnn", "mobilenetv2", "resnet50", "vgg16",
                     "linear_svm", "logistic_regression", "random_forest", "svm"]
    assert "features.extractor: cnn | hog | pixels" in result.output
