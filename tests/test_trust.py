"""The trust issue: the protocol never changes silently, configs are checked before anything is made,
photos are read as phones store them, and what a person reads says what it means."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_DATA, REPO, make_fer_folder
from PIL import Image
from typer.testing import CliRunner

from fer_bench import EMOTIONS
from fer_bench.cli import app
from fer_bench.config import DataConfig, parse_override, read_config
from fer_bench.data.dataset import load_data
from fer_bench.data.decoding import open_image
from fer_bench.errors import ConfigError, DataError
from fer_bench.experiment import load_experiment

runner = CliRunner()
TINY = ["--set", "train.epochs=1", "--set", "model.params.filters=[8]", "--set", "train.batch_size=8",
        "--set", "data.classes=[happy, sad]"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# --- 1. the official split is kept, or the load is refused -----------------------------------------

def test_a_stray_file_in_the_kaggle_layout_is_an_error_that_names_it(tmp_path):
    root = make_fer_folder(tmp_path / "data", counts=(4, 2, 2), classes=("happy", "sad"))
    Image.fromarray(np.full((48, 48), 90, np.uint8)).save(root / "train" / "happy" / "my_face.jpg")
    with pytest.raises(DataError, match=r"1 of 17 images carry no FER-2013 split mark .* train/happy/my_face.jpg"):
        load_data(DataConfig(), ("happy", "sad"), root)
    line = one_error_line(invoke("data", "inspect", "--data-dir", root))
    assert "train/happy/my_face.jpg; rename or remove them, so that the official split holds" in line


def test_a_csv_row_of_another_usage_is_an_error_not_a_random_split(tmp_path):
    pixels = " ".join(["128"] * 2304)
    rows = [f"3,{pixels},Training", f"4,{pixels},Training", f"3,{pixels},PublicTest", f"4,{pixels},PublicTest",
            f"3,{pixels},PrivateTest", f"4,{pixels},PrivateTest", f"3,{pixels},Validation"]
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="1 of 7 images carry no FER-2013 split mark .*: row:8; rename"):
        load_data(DataConfig(cache=False), ("happy", "sad"), tmp_path / "fer2013.csv")


def test_a_split_without_any_marks_is_stratified_and_one_missing_official_part_is_refused(tmp_path):
    root = make_fer_folder(tmp_path / "data", counts=(6, 2, 2), classes=("happy", "sad"))
    pool = tmp_path / "pool"
    for path in (root / "train").rglob("*.png"):
        (pool / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, pool / path.parent.name / path.name.replace("Training_", "face_"))
    assert load_data(DataConfig(), ("happy", "sad"), pool).protocol == "stratified"
    for path in (root / "test").rglob("PublicTest_*"):
        path.unlink()
    with pytest.raises(DataError, match="the official split has no PublicTest images"):
        load_data(DataConfig(), ("happy", "sad"), root)


# --- 2. skipped items are printed and logged ----------------------------------------------------------

@pytest.mark.slow
def test_skipped_csv_rows_are_on_the_console_and_in_log_txt(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for usage, count in (("Training", 8), ("PublicTest", 3), ("PrivateTest", 3)):
        for i in range(count):
            for emotion in (3, 4):
                rows.append(f"{emotion},{' '.join(map(str, rng.integers(0, 255, 2304)))},{usage}")
    rows += ["9," + " ".join(["1"] * 2304) + ",Training", "3,1 2 3,Training"]
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    result = invoke("run", REPO / "configs" / "custom_cnn.yaml", "--data-dir", tmp_path / "fer2013.csv",
                    "--results-dir", tmp_path / "r", *TINY)
    assert result.exit_code == 0, result.output
    expected = ["warning: skipped 2 unreadable or malformed items (all listed in environment.json, data.skipped):",
                "  row:31: malformed row (3 pixels, expected 2304)", "  row:30: malformed row (emotion is not 0-6)"]
    for text in (result.output, (tmp_path / "r" / "custom_cnn" / "log.txt").read_text()):
        lines = text.splitlines()
        start = lines.index(expected[0])
        assert lines[start:start + 3] == expected


# --- 3. evaluate scores test/ of a train/test layout ----------------------------------------------------

@pytest.mark.slow
def test_evaluate_on_a_train_test_layout_scores_test_only_and_says_so(trained_runs, tmp_path):
    data = make_fer_folder(tmp_path / "data", counts=(5, 2, 2), classes=("angry", "happy", "surprise"))
    result = invoke("evaluate", trained_runs / "custom_cnn", "--data-dir", data, "--name", "layout")
    assert result.exit_code == 0, result.output
    assert f"scoring the 12 images under {data / 'test'} (its train/ folder is not scored)" in result.output
    metrics = json.loads((trained_runs / "custom_cnn" / "eval" / "layout" / "metrics.json").read_text())
    assert metrics["test"]["count"] == 12
    files = pd.read_csv(trained_runs / "custom_cnn" / "eval" / "layout" / "predictions.csv")["file"]
    assert all(name.startswith("test/") for name in files)


# --- 4.-7. configs: numbers, checks before any folder, paths, first-stage overrides ----------------------

def test_numbers_in_exponent_form_are_numbers(tmp_path):
    assert parse_override("train.learning_rate=1e-4") == (["train", "learning_rate"], 1e-4)
    (tmp_path / "lr.yaml").write_text("train:\n  learning_rate: 1e-3\n  weight_decay: 5E-4\n  optimizer: adamw\n")
    exp = read_config(tmp_path / "lr.yaml", ["model.fine_tune=null", "train.momentum=.5e0"])
    assert (exp.train.learning_rate, exp.train.weight_decay, exp.train.momentum) == (1e-3, 5e-4, 0.5)


@pytest.mark.parametrize("text, overrides, message", [
    ("data: {source: bogus}", [], "data.source must be one of ['auto', 'folder', 'csv', 'kaggle']; got 'bogus'"),
    ("model: {params: {filters: abc}}", [], "model.params.filters must be list; got 'abc'"),
    ("model: {params: {dropout: 1.5}}", [], "model.params.dropout must be in [0.0, 1.0); got 1.5"),
    ("model: {params: {filters: [8, 8, 8, 8, 8, 8, 8]}}", [],
     "model.params.filters: 7 blocks halve 48 px to nothing; at most 5 blocks at data.input_size 48"),
    ("model: {params: {convs_per_block: [1, 2]}}", [],
     "model.params.convs_per_block: 2 counts for 4 blocks (model.params.filters); give one count per block, or one number for all"),
    ("model: {params: {convs_per_block: [1, 0, 2, 2]}}", [], "model.params.convs_per_block[1] must be in [1, inf]; got 0"),
    ("model: {name: hog_svm}", [], "model.name: unknown 'hog_svm'"),
    ("model: {name: svm}\nfeatures: {extractor: hog}\nsearch: {n_jobs: 0}", [],
     "search.n_jobs must be -1 or a whole number >= 1; got 0"),
    ("model: {name: svm, params: {C: -1}}\nfeatures: {extractor: hog}", [],
     "model.params for svm: The 'C' parameter of SVC must be a float in the range (0.0, inf]. Got -1 instead."),
    ("train:\n  epochs: 3\n  epochs: 4\n", [], "not valid YAML at line 3: key 'epochs' is given twice (first at line 2)"),
    ("", [], "is empty; an experiment names at least its model"),
    ("# only a comment\n", [], "is empty; an experiment names at least its model"),
    ("name: ../escape", [], "name must be one folder name (no '/', no '..', not empty); got '../escape'"),
    ("train: {class_weight: {happy: -1}}", [], "train.class_weight.happy must be in (0.0, inf]; got -1.0"),
    ("model: {name: custom_cnn}", ["runtime.mixed_precision=maybe"],
     "runtime.mixed_precision must be one of ['auto', true, false]; got 'maybe'"),
])
def test_every_bad_config_is_one_line_before_any_folder_exists(tmp_path, text, overrides, message):
    (tmp_path / "bad.yaml").write_text(text)
    sets = [arg for o in overrides for arg in ("--set", o)]
    line = one_error_line(invoke("run", tmp_path / "bad.yaml", "--results-dir", tmp_path / "r", *sets))
    assert message in line
    assert not (tmp_path / "r").exists()


def test_paths_in_a_config_are_read_from_its_folder_and_set_paths_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the repository
    exp = load_experiment(REPO / "configs" / "svm_cnn_features.yaml")
    assert exp.features.cnn_config == str(REPO / "configs" / "custom_cnn_aug.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "exp.yaml").write_text("data: {path: ../data}\nmodel: {name: custom_cnn}\n")
    assert read_config(tmp_path / "sub" / "exp.yaml").data.path == str(tmp_path / "data")
    assert read_config("sub/exp.yaml", ["data.path=elsewhere"]).data.path == "elsewhere"
    assert read_config(REPO / "configs" / "vgg16.yaml").model.weights == "imagenet"


def test_set_on_a_feature_config_reaches_its_first_stage_cnn():
    exp = load_experiment(REPO / "configs" / "svm_cnn_features.yaml",
                          ["train.epochs=2", "augment.flip=false", "model.params.C=3.0"])
    assert exp.features.cnn_overrides == ["train.epochs=2", "augment.flip=false"]
    assert exp.model.params["C"] == 3.0  # the classifier's own keys stay with the classifier
    with pytest.raises(ConfigError, match=r"features.cnn_config .*custom_cnn_aug.yaml: model.params.dropout must be in"):
        load_experiment(REPO / "configs" / "svm_cnn_features.yaml", ["features.cnn_overrides=['model.params.dropout=3']"])
    assert load_experiment(REPO / "configs" / "svm_cnn_features.yaml", ["features.from_run=null"]).features.cnn_overrides == []


# --- 8. Ctrl-C is an interruption ------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_interrupted_run(tmp_path):
    data = make_fer_folder(tmp_path / "data", counts=(60, 6, 6), classes=("happy", "sad"))
    results = tmp_path / "results"
    args = [sys.executable, "-m", "fer_bench.cli", "run", str(REPO / "configs" / "custom_cnn.yaml"),
            "--data-dir", str(data), "--results-dir", str(results), "--name", "stopped", "--set", "train.epochs=6",
            "--set", "data.classes=[happy, sad]", "--set", "model.params.filters=[16, 32]",
            "--set", "train.batch_size=8", "--set", "train.early_stopping_patience=null"]
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache")}
    # As from a terminal: a shell without job control starts background jobs with SIGINT ignored (CI may run
    # so), and Python then never turns SIGINT into KeyboardInterrupt.
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state_file = results / "stopped" / "checkpoint" / "state.json"
    deadline = time.time() + 180
    while not (state_file.is_file() and json.loads(state_file.read_text() or "{}").get("epoch", 0) >= 1):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == \
        "error: interrupted; a run stopped this way resumes when the same command is run again"
    assert "Traceback" not in stderr
    status = json.loads((results / "stopped" / "status.json").read_text())
    assert status["state"] == "interrupted"
    listed = invoke("compare", results, "--out", tmp_path / "comparison")
    assert "skipping stopped: interrupted (its process ended or was stopped while training; run the same command " \
           "again to resume it)" in listed.output
    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed train after epoch" in again.stderr


# --- 9. a name is one folder --------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["run", REPO / "configs" / "custom_cnn.yaml", "--name"],
    ["ensemble", "a", "b", "--name"],
    ["evaluate", "--data-dir", ".", "--name"],
])
@pytest.mark.parametrize("name", ["../../escape", "a/b", ".."])
def test_a_name_is_one_folder(tmp_path, command, name):
    line = one_error_line(invoke(*command, name, "--results-dir", tmp_path / "r"))
    assert line == f"error: --name must be one folder name (no '/', no '..', not empty); got {name!r}"
    assert not (tmp_path / "r").exists() and not (tmp_path.parent / "escape").exists()


def test_bad_inputs_found_beyond_the_list(tmp_path):
    """Found while trying bad inputs as a new user would (the note lists them all)."""
    data = make_fer_folder(tmp_path / "nested" / "fer2013", counts=(2, 1, 1), classes=("happy", "sad"))
    config = REPO / "configs" / "custom_cnn.yaml"
    assert one_error_line(invoke("run", config, "--data-dir", tmp_path / "nested", "--results-dir", tmp_path / "r")) == \
        f"error: {data} holds the dataset's train/ and test/ folders: pass --data-dir {data}"
    image = next((data / "train" / "happy").iterdir())
    assert one_error_line(invoke("run", config, "--data-dir", image, "--results-dir", tmp_path / "r")) == \
        f"error: {image} is a file; give the data directory (train/ and test/) or a fer2013.csv"
    assert not (tmp_path / "r").exists()
    assert one_error_line(invoke("ensemble", tmp_path / "a", f"{tmp_path / 'a'}/", "--name", "x")) == \
        f"error: {tmp_path / 'a'} is given twice: an ensemble averages different runs"


# --- 11.-12. photos -------------------------------------------------------------------------------------------

def face_photo() -> Image.Image:
    """A real FER face (a synthetic one without the data) pasted into a larger grey photo."""
    if (REAL_DATA / "test").is_dir():
        face = Image.open(REAL_DATA / "test" / "happy" / "PrivateTest_10077120.jpg").convert("L")
    else:
        face = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8))
    photo = Image.new("RGB", (480, 360), (128, 128, 128))
    photo.paste(face.resize((192, 192), Image.BICUBIC), (140, 80))
    return photo


def sideways_with_exif(photo: Image.Image, path):
    """Stored as a phone held sideways stores it: the pixels turned, an Orientation tag saying how to turn them back."""
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns the pixels 90 degrees clockwise
    photo.rotate(90, expand=True).save(path, exif=exif, quality=95)
    return path


def test_photos_are_read_upright_and_16_bit_grey_keeps_its_range(tmp_path):
    photo = face_photo()
    upright = np.asarray(open_image(sideways_with_exif(photo, tmp_path / "phone.jpg"), "RGB"), dtype=float)
    assert upright.shape == (360, 480, 3)
    assert np.abs(upright - np.asarray(photo, dtype=float)).mean() < 3
    ramp = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)  # 0 .. 64,484
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    grey = np.asarray(open_image(tmp_path / "wide.png", "L"), dtype=int)
    assert np.abs(grey - ramp / 257.0).max() <= 1  # not clipped to white
    root = make_fer_folder(tmp_path / "data", counts=(2, 1, 1), classes=("happy", "sad"))
    Image.fromarray(ramp).save(root / "train" / "happy" / "Training_wide.png")
    data = load_data(DataConfig(cache=False), ("happy", "sad"), root)
    decoded = data.train.images[data.train.names.index("train/happy/Training_wide.png")]
    assert np.abs(decoded.astype(int) - ramp / 257.0).max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "test").is_dir(), reason="needs ../shared/fer2013 for a real face")
def test_a_sideways_phone_photo_gets_its_face_found_and_an_upright_annotation(tmp_path):
    path = sideways_with_exif(face_photo(), tmp_path / "phone.jpg")
    result = invoke("predict", path, "--detector", "haar", "--annotate", tmp_path / "out")
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"{path}: face 1 at x=") and " width=" in line and " height=" in line
    x = int(line.split(" at x=")[1].split()[0])
    assert 100 < x < 200  # where the face is in the upright photo
    assert Image.open(tmp_path / "out" / "phone_annotated.png").size == (480, 360)


# --- 13. what a person reads ---------------------------------------------------------------------------------------

def test_the_live_bar_fits_an_80_column_terminal_and_keeps_its_eta():
    from fer_bench.console import ProgressBar

    bar = ProgressBar(449, "epoch 12/30 [fine_tune]")
    line = bar.line(120, "loss 1.2345  acc 0.4567", "  ETA 47s", 79)
    assert len(line) <= 79 and line.endswith("ETA 47s") and "acc 0.4567" in line
    narrow = bar.line(120, "loss 1.2345  acc 0.4567", "  ETA 1m05s", 45)
    assert len(narrow) <= 45 and narrow.endswith("ETA 1m05s")
    assert bar.line(449, "validating", "", 79).endswith("449/449  validating")


def test_a_pca_pipeline_says_it_fits_the_components():
    from fer_bench.models.features import _fit_input, make_pipeline

    exp = load_experiment(REPO / "configs" / "pca_svm.yaml")
    assert _fit_input(make_pipeline(exp, 500), (1050, 2304)) == "1050 x 100 principal components (of 2304 features)"
    assert _fit_input(make_pipeline(load_experiment(REPO / "configs" / "hog_svm.yaml"), 500), (10, 900)) == \
        "10 x 900 features"


def test_a_model_that_predicts_one_class_is_warned_about():
    from fer_bench.evaluation.metrics import single_class_warning

    assert single_class_warning(np.full(30, 3), EMOTIONS, "test") == (
        "warning: the model predicts 'happy' for every one of the 30 test images: it has not learnt to tell the "
        "classes apart (see its training curves)")
    assert single_class_warning(np.array([3, 4, 3]), EMOTIONS, "test") is None


def test_version():
    from fer_bench import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"fer-bench {__version__}"


def test_two_runs_with_the_same_curve_are_both_visible():
    from fer_bench.evaluation.charts import validation_curves_figure

    history = pd.DataFrame({"epoch": np.arange(1, 31), "val_accuracy": np.linspace(0.3, 0.6, 30)})
    figure = validation_curves_figure([("first", history), ("second", history)])
    figure.legends.clear()
    axes = figure.axes[0]
    axes.get_legend().remove()
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)
    palette = (np.array([[31, 119, 180], [255, 127, 14]]))  # tab10's first two colours
    seen = [int((np.abs(pixels - colour).sum(axis=2) < 60).sum()) for colour in palette]
    assert min(seen) > 0.3 * max(seen), seen
    # A run of one epoch is one point: it still shows, as its marker, wherever it comes in the legend.
    single = pd.DataFrame({"epoch": [1], "val_accuracy": [0.5]})
    figure = validation_curves_figure([(f"run {i}", history) for i in range(7)] + [("one epoch", single)])
    assert list(figure.axes[0].lines[-1].get_markevery()) == [0, 2]


def test_confusion_grid_has_a_colour_scale_and_a_class_without_images_is_blank():
    from fer_bench.evaluation.charts import confusion_grid_figure

    matrix = np.array([[5, 1, 0], [0, 0, 0], [1, 0, 4]])
    figure = confusion_grid_figure(["run"], [matrix], [("angry", "disgust", "happy")], "test")
    scales = [ax for ax in figure.axes if ax.get_ylabel() == "fraction of the true class"]
    assert len(scales) == 1
    shown = figure.axes[0].get_images()[0].get_array()
    assert np.ma.getmaskarray(shown)[1].all() or np.isnan(np.asarray(shown, dtype=float)[1]).all()
    assert "no images" in [text.get_text() for text in figure.axes[0].texts]


@pytest.mark.slow
def test_no_tensorflow_banner_in_a_feature_run_from_a_finished_cnn_its_evaluation_or_an_ensemble(trained_runs,
                                                                                                   fer_folder, tmp_path):
    env = {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "fer_bench.cli", *map(str, args)], env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        for noise in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
            assert noise not in done.stderr, done.stderr

    cli("run", REPO / "configs" / "svm_cnn_features.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path / "r",
        "--name", "svm", "--set", "data.classes=[angry, happy, surprise]",
        "--set", f"features.from_run={trained_runs / 'custom_cnn'}", "--set", "features.cnn_config=null",
        "--set", "search.grid={}")
    cli("evaluate", tmp_path / "r" / "svm", "--data-dir", fer_folder / "test")
    cli("ensemble", trained_runs / "custom_cnn", trained_runs / "custom_cnn_aug", "--name", "pair", "--results-dir",
        tmp_path / "e")  # it builds one Keras model of its members
