"""Each bad input of README's table: a one-line error, a non-zero exit, and nothing half-written."""

import errno
import os

import numpy as np
import pytest
from conftest import REPO, make_fer_folder
from PIL import Image
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.runs import artifacts

runner = CliRunner()
TINY = ["--set", "train.epochs=1", "--set", "model.params.filters=[8]", "--set", "train.batch_size=8"]


def run(*args):
    return runner.invoke(app, ["run", *[str(a) for a in args]])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def write(tmp_path, text, name="bad.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


@pytest.mark.parametrize("text, message", [
    ("train: {epochs: 0}", "error: train.epochs must be in [1, inf]; got 0"),
    ("train: {batch_size: -8}", "error: train.batch_size must be in [1, inf]; got -8"),
    ("train: {epochs: ten}", "error: train.epochs must be int; got 'ten'"),
    ("train: {optimizer: adagrad}", "error: train.optimizer must be one of ['adam', 'adamw', 'sgd', 'rmsprop']; got 'adagrad'"),
    ("data: {colour: rgb}\nmodel: {name: vgg16, weights: /no/weights.h5}",
     "error: model.weights: file not found: /no/weights.h5 (use imagenet, null or a weights file)"),
])
def test_config_errors(tmp_path, text, message):
    result = run(write(tmp_path, text), "--results-dir", tmp_path / "r")
    assert one_error_line(result) == message
    assert not (tmp_path / "r").exists()


def test_missing_and_empty_data_directories(tmp_path):
    config = REPO / "configs" / "custom_cnn.yaml"
    assert one_error_line(run(config, "--data-dir", tmp_path / "nope", "--results-dir", tmp_path / "r")) == \
        f"error: data path not found: {tmp_path / 'nope'}"
    (tmp_path / "empty").mkdir()
    assert one_error_line(run(config, "--data-dir", tmp_path / "empty", "--results-dir", tmp_path / "r")).startswith(
        f"error: no images found under {tmp_path / 'empty'}")
    assert not (tmp_path / "r").exists()


def test_unknown_class_folder(tmp_path):
    root = make_fer_folder(tmp_path / "data", counts=(2, 1, 1), classes=("happy", "sad"))
    (root / "train" / "joy").mkdir()
    line = one_error_line(run(REPO / "configs" / "custom_cnn.yaml", "--data-dir", root, "--results-dir", tmp_path / "r"))
    assert line == (f"error: {root / 'train' / 'joy'}: unknown class folder 'joy'; expected folders named "
                    "['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral']")


@pytest.mark.slow
def test_corrupt_resized_and_csv_rows_are_listed_and_the_run_goes_on(tmp_path):
    root = make_fer_folder(tmp_path / "data", counts=(4, 2, 2), classes=("happy", "sad"))
    (root / "train" / "happy" / "Training_zero.jpg").write_bytes(b"")
    (root / "train" / "sad" / "Training_junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("RGBA", (64, 30)).save(root / "train" / "sad" / "Training_big.png")
    result = run(REPO / "configs" / "custom_cnn.yaml", "--data-dir", root, "--results-dir", tmp_path / "r",
                 "--set", "data.classes=[happy, sad]", *TINY)
    assert result.exit_code == 0, result.output
    assert "warning: skipped 2 unreadable or malformed items (all listed in environment.json, data.skipped):" in result.output
    assert "\n  train/happy/Training_zero.jpg: empty file\n" in result.output
    assert "\n  train/sad/Training_junk.jpg: unreadable image" in result.output
    assert "notice: 1 images were not 48x48 grey and were converted on load" in result.output
    import json

    record = json.loads((tmp_path / "r" / "custom_cnn" / "environment.json").read_text())["data"]
    assert {s["item"] for s in record["skipped"]} == {"train/happy/Training_zero.jpg", "train/sad/Training_junk.jpg"}
    assert record["resized_on_load"] == 1


def test_results_directory_that_cannot_be_written(tmp_path, fer_folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_error_line(run(REPO / "configs" / "custom_cnn.yaml", "--data-dir", fer_folder,
                              "--results-dir", blocker, *TINY))
    assert line.startswith(f"error: cannot create folder {blocker / 'custom_cnn'}: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: a read-only folder only stops other users")
def test_read_only_results_directory(tmp_path, fer_folder):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    line = one_error_line(run(REPO / "configs" / "custom_cnn.yaml", "--data-dir", fer_folder,
                              "--results-dir", locked, *TINY))
    assert "cannot create folder" in line


@pytest.mark.slow
def test_disk_full_while_writing(tmp_path, fer_folder, monkeypatch):
    real_atomic = artifacts.atomic_write

    def full_disk(path, write):
        if path.name == "metrics.json":
            def fail(tmp):
                tmp.write_text("{")  # half a file, as a filling disk leaves it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_atomic(path, fail)
        return real_atomic(path, write)

    monkeypatch.setattr(artifacts, "atomic_write", full_disk)
    result = run(REPO / "configs" / "custom_cnn.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path, *TINY)
    run_dir = tmp_path / "custom_cnn"
    assert one_error_line(result) == f"error: cannot write {run_dir / 'metrics.json'}: No space left on device"
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob(".*.tmp*"))
    import json

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "No space left on device" in status["error"]
    assert (run_dir / "model.keras").is_file()  # what was written before stays


@pytest.mark.slow
def test_weights_file_from_another_model_family(tmp_path, fer_folder):
    import keras

    other = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    other.save_weights(tmp_path / "mobilenet.weights.h5")
    result = run(REPO / "configs" / "resnet50.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path / "r",
                 "--set", f"model.weights={tmp_path / 'mobilenet.weights.h5'}", "--set", "data.input_size=32", *TINY[:2])
    assert one_error_line(result).startswith(f"error: cannot load weights {tmp_path / 'mobilenet.weights.h5'} into resnet50")


@pytest.mark.slow
def test_a_model_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_bytes(np.random.default_rng(0).bytes(100))
    Image.new("L", (48, 48)).save(tmp_path / "face.png")
    result = runner.invoke(app, ["predict", str(fake), str(tmp_path / "face.png")])
    assert one_error_line(result) == f"error: cannot load {fake} as a Keras model (ValueError)"


@pytest.mark.parametrize("text, message", [
    ('name: "tiny\nmodel: {name: custom_cnn}\ntrain: {epochs: 1}\n',
     "not valid YAML at line 1: a quoted string opened here is not closed (found unexpected end of stream at line 4)"),
    ("model:\n  name: [custom_cnn\ntrain:\n  epochs: 1\n",
     "not valid YAML at line 2: a [ list opened here is not closed (expected ',' or ']', but got ':' at line 3)"),
    ("model:\n  name: custom_cnn\n train:\n  epochs: 1\n",
     "not valid YAML at line 3: expected <block end>, but found '<block mapping start>'"),
])
def test_a_yaml_error_names_the_line_to_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    assert one_error_line(run(path, "--results-dir", tmp_path / "r")) == f"error: {path}: {message}"


@pytest.mark.slow
def test_annotate_pointed_at_a_file(trained_runs, tmp_path):
    from conftest import synthetic_face

    Image.fromarray(synthetic_face(1, 0, np.random.default_rng(0))).save(tmp_path / "face.png")
    target = tmp_path / "annotated.png"
    target.write_text("not a folder")
    result = runner.invoke(app, ["predict", str(trained_runs / "custom_cnn"), str(tmp_path / "face.png"),
                                 "--annotate", str(target)])
    assert one_error_line(result) == f"error: {target} is a file; give a folder"
    assert target.read_text() == "not a folder"
