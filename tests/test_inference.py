import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_DATA, REPO, synthetic_face
from PIL import Image
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.evaluation.predictors import Predictor, load_predictor
from fer_bench.evaluation.tta import tta_scores, tta_views

runner = CliRunner()
CLASSES = ("angry", "happy", "surprise")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_tta_views():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 48, 48), dtype=np.uint8)
    assert len(tta_views(images, "none")) == 1
    plain, mirrored = tta_views(images, "flip")
    assert np.array_equal(mirrored, images[:, :, ::-1])
    crops = tta_views(images, "ten_crop")
    assert len(crops) == 10 and all(v.shape == (3, 48, 48) and v.dtype == np.uint8 for v in crops)
    assert np.array_equal(crops[1], crops[0][:, :, ::-1])
    flat = np.full((1, 48, 48), 77, np.uint8)
    assert all((v == 77).all() for v in tta_views(flat, "ten_crop"))


def test_tta_scores_average_each_face_with_its_mirror():
    # A predictor that sees only the left half: sure of class 0 when it is bright, of class 1 when dark. A face
    # bright on one side only is class 0 as it is and class 1 mirrored, so the flip average is a tie (argmax 0).
    def left_half(images):
        bright = images[:, :, :24].mean(axis=(1, 2)) > 127
        return np.stack([np.where(bright, 0.9, 0.1), np.where(bright, 0.1, 0.9), np.zeros(len(images))], axis=1)

    predictor = Predictor(CLASSES, left_half, "test")
    dark, left_bright, right_bright = np.zeros((3, 48, 48), np.uint8)
    left_bright[:, :24] = right_bright[:, 24:] = 255
    images = np.stack([dark, left_bright, right_bright])
    labels = np.array([1, 0, 0])
    assert tta_scores(predictor, images, labels, "none")["accuracy"] == pytest.approx(2 / 3)
    flipped = tta_scores(predictor, images, labels, "flip")
    assert flipped["mode"] == "flip" and flipped["accuracy"] == 1.0 and flipped["count"] == 3


@pytest.mark.slow
def test_predict_on_crops_photos_and_bad_files(trained_runs, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(synthetic_face(1, 0, np.random.default_rng(0))).save(photos / "crop.png")
    noise = np.random.default_rng(1).integers(0, 255, size=(300, 400), dtype=np.uint8)
    Image.fromarray(noise).save(photos / "noise.jpg")
    (photos / "notes.png").write_text("this is not an image")
    out = invoke("predict", trained_runs / "custom_cnn", photos, "--annotate", tmp_path / "annotated")
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert any(line.startswith(f"{photos / 'crop.png'}: face 1 at x=0 y=0 width=48 height=48: ") for line in lines)
    assert f"{photos / 'noise.jpg'}: no face found" in lines
    assert f"error: {photos / 'notes.png'}: not a readable image" in lines
    assert (tmp_path / "annotated" / "crop_annotated.png").is_file()

    as_json = invoke("predict", trained_runs / "custom_cnn", photos / "crop.png", "--json", "--tta", "flip")
    assert as_json.exit_code == 0, as_json.output
    (result,) = json.loads(as_json.stdout)
    face = result["faces"][0]
    assert face["emotion"] in CLASSES and len(face["top3"]) == 3
    assert sum(p for _, p in face["top3"]) == pytest.approx(1, abs=1e-3)


@pytest.mark.slow
def test_predict_needs_class_names_for_a_bare_model(trained_runs, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes((trained_runs / "custom_cnn" / "model.keras").read_bytes())
    out = invoke("predict", model, tmp_path)
    assert out.exit_code == 1 and "has 3 outputs; pass its run directory" in out.output
    assert load_predictor(trained_runs / "custom_cnn").classes == CLASSES
    out = invoke("predict", tmp_path / "missing-run", tmp_path)
    assert out.exit_code == 1 and out.output.strip() == f"error: no run directory or model file at {tmp_path / 'missing-run'}"


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "test").is_dir(), reason="needs ../shared/fer2013 for a real face")
@pytest.mark.parametrize("detector", ["mtcnn", "haar"])
def test_predict_finds_a_face_in_a_larger_photo_and_crops_it_as_in_training(trained_runs, tmp_path, detector):
    from fer_bench.photos.detectors import faces_in, framing, load_detector

    stored = Image.open(REAL_DATA / "test" / "happy" / "PrivateTest_10077120.jpg").convert("L")
    photo = Image.new("RGB", (480, 360), (128, 128, 128))
    photo.paste(stored.resize((192, 192), Image.BICUBIC), (140, 80))
    photo.save(tmp_path / "photo.png")
    out = invoke("predict", trained_runs / "custom_cnn", tmp_path / "photo.png", "--json", "--detector", detector)
    assert out.exit_code == 0, out.output
    (result,) = json.loads(out.stdout)
    assert len(result["faces"]) == 1
    box = result["faces"][0]["box"]
    assert list(box) == ["x", "y", "width", "height"]  # the JSON says what each number is
    x, y, w, h = box.values()
    assert 120 < x < 200 and 60 < y < 120 and 140 < w < 230
    # framed like FER-2013: the crop covers the pasted face square closely, more closely than the raw box
    boxes, crops = faces_in(np.asarray(photo), load_detector(detector), detector)
    assert crops.shape == (1, 48, 48) and crops.dtype == np.uint8
    left, top, side = framing(detector).square(boxes[0])
    framed = overlap((left, top, side, side), (140, 80, 192, 192))
    assert framed > 0.8 and framed >= overlap(boxes[0], (140, 80, 192, 192)), framed


def overlap(a, b):
    """Intersection over union of two (x, y, w, h) boxes."""
    across = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    down = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return across * down / (a[2] * a[3] + b[2] * b[3] - across * down)


@pytest.mark.slow
def test_an_unknown_detector_is_one_line(trained_runs, tmp_path):
    out = invoke("predict", trained_runs / "custom_cnn", tmp_path, "--detector", "yolo")
    assert out.exit_code == 1 and out.output.strip() == "error: --detector must be one of ['haar', 'mtcnn']; got 'yolo'"


def test_a_crop_reaching_past_the_border_is_padded():
    from fer_bench.photos.detectors import crop_face

    grey = np.full((100, 100), 90, np.uint8)
    crop = crop_face(grey, (-10, 70, 60, 60), "mtcnn")
    assert crop.shape == (48, 48) and crop.dtype == np.uint8 and (crop == 90).all()


def test_the_framing_in_use_is_the_committed_measurement():
    from fer_bench.photos.detectors import DETECTORS, framing

    measured = json.loads((REPO / "results" / "benchmark" / "detectors.json").read_text())["detectors"]
    assert {name: framing(name).__dict__ for name in DETECTORS} == {
        name: entry["framing"] for name, entry in measured.items()}


@pytest.mark.slow
def test_evaluate_on_another_dataset_with_a_class_map(trained_runs, tmp_path):
    rng = np.random.default_rng(3)
    for folder, label in (("anger", 0), ("happiness", 3), ("contempt", 1)):
        (tmp_path / "other" / folder).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(synthetic_face(label, i, rng)).save(tmp_path / "other" / folder / f"{i}.png")
    out = invoke("evaluate", trained_runs / "custom_cnn", "--data-dir", tmp_path / "other",
                 "--map", "anger=angry,happiness=happy", "--tta", "ten_crop")
    assert out.exit_code == 0, out.output
    assert "ignored folders the model has no class for: contempt" in out.output
    result_dir = trained_runs / "custom_cnn" / "eval" / "other"
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["test"]["count"] == 8
    assert metrics["test"]["per_class"]["surprise"]["support"] == 0
    assert metrics["test_tta"]["mode"] == "ten_crop"
    assert (result_dir / "confusion_matrix.png").is_file() and (result_dir / "predictions.csv").is_file()
    assert f"accuracy {metrics['test']['accuracy']:.4f}" in out.output


@pytest.mark.slow
def test_evaluate_errors(trained_runs, tmp_path):
    (tmp_path / "other" / "anger").mkdir(parents=True)
    out = invoke("evaluate", trained_runs / "custom_cnn", "--data-dir", tmp_path / "other", "--map", "anger=rage")
    assert out.exit_code == 1
    assert out.output.strip() == ("error: --map anger=rage: unknown class 'rage'; the run's classes are "
                                  "['angry', 'happy', 'surprise']")
    out = invoke("evaluate", tmp_path, "--data-dir", tmp_path / "other")
    assert out.exit_code == 1 and "is not a finished run" in out.output
    out = invoke("evaluate", trained_runs / "custom_cnn", "--data-dir", tmp_path / "other")
    assert out.exit_code == 1 and "no images of the classes" in out.output


def fresh_copy(run, target):
    """A run folder without the evaluations other tests wrote into it."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("eval"))
    return target


def labelled_folder(root, folders, count=4, seed=3):
    rng = np.random.default_rng(seed)
    for folder, label in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(synthetic_face(label, i, rng)).save(root / folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_evaluate_merges_repeated_maps_and_rejects_folders_that_do_not_exist(trained_runs, tmp_path):
    run = fresh_copy(trained_runs / "custom_cnn", tmp_path / "run")
    other = labelled_folder(tmp_path / "other", {"anger": 0, "happiness": 3, "surprised": 5})
    out = invoke("evaluate", run, "--data-dir", other, "--map", "anger=angry", "--map", "happiness=happy,surprised=surprise")
    assert out.exit_code == 0, out.output
    metrics = json.loads((run / "eval" / "other" / "metrics.json").read_text())
    assert {c: metrics["test"]["per_class"][c]["support"] for c in CLASSES} == {"angry": 4, "happy": 4, "surprise": 4}

    out = invoke("evaluate", run, "--data-dir", other, "--map", "anger=angry", "--map", "rage=angry")
    assert out.exit_code == 1
    assert out.output.strip() == (f"error: --map rage=angry: no folder of images named 'rage' under {other} "
                                  "(folders found: ['anger', 'happiness', 'surprised'])")
    out = invoke("evaluate", run, "--data-dir", other, "--map", "anger=angry", "--map", "anger=happy")
    assert out.exit_code == 1
    assert out.output.strip() == "error: --map maps folder 'anger' twice: to 'angry' and to 'happy'"


@pytest.mark.slow
def test_evaluating_again_never_replaces_an_earlier_evaluation_silently(trained_runs, tmp_path):
    run = fresh_copy(trained_runs / "custom_cnn", tmp_path / "run")
    other = labelled_folder(tmp_path / "other", {"angry": 0, "happy": 3})
    first = invoke("evaluate", run, "--data-dir", other)
    assert first.exit_code == 0, first.output
    written = (run / "eval" / "other" / "predictions.csv").read_text()
    again = invoke("evaluate", run, "--data-dir", other, "--tta", "flip")
    assert again.exit_code == 0 and f"wrote {run / 'eval' / 'other-2'}" in again.output.splitlines()
    assert (run / "eval" / "other" / "predictions.csv").read_text() == written
    assert "test_tta" in json.loads((run / "eval" / "other-2" / "metrics.json").read_text())

    named = invoke("evaluate", run, "--data-dir", other, "--name", "other")
    assert named.exit_code == 1
    assert named.output.strip() == (f"error: {run / 'eval' / 'other'} already holds an evaluation; pass --overwrite "
                                    "to replace it, or another --name")
    replaced = invoke("evaluate", run, "--data-dir", other, "--name", "other-2", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "test_tta" not in json.loads((run / "eval" / "other-2" / "metrics.json").read_text())


@pytest.mark.slow
def test_macro_f1_leaves_out_classes_with_no_images_as_balanced_accuracy_does(trained_runs, tmp_path):
    from sklearn.metrics import f1_score

    run = fresh_copy(trained_runs / "custom_cnn", tmp_path / "run")
    other = labelled_folder(tmp_path / "other", {"angry": 0, "happy": 3})  # no surprise images
    assert invoke("evaluate", run, "--data-dir", other).exit_code == 0
    metrics = json.loads((run / "eval" / "other" / "metrics.json").read_text())["test"]
    predictions = pd.read_csv(run / "eval" / "other" / "predictions.csv")
    expected = f1_score(predictions["true"], predictions["predicted"], labels=["angry", "happy"], average="macro",
                        zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(expected)
    assert metrics["per_class"]["surprise"]["support"] == 0
    report = (run / "eval" / "other" / "classification_report.txt").read_text()
    assert "no true images of surprise: left out of the averages above" in report


@pytest.mark.slow
def test_loading_a_mixed_precision_run_prints_no_keras_warning(fer_folder, tmp_path):
    import keras

    out = invoke("run", REPO / "configs" / "custom_cnn.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path,
                 "--set", "data.classes=[angry, happy, surprise]", "--set", "train.epochs=1",
                 "--set", "model.params.filters=[8]", "--set", "runtime.mixed_precision=true")
    assert out.exit_code == 0, out.output
    # The run trained in bfloat16 and left this process's policy as it found it.
    assert json.loads((tmp_path / "custom_cnn" / "environment.json").read_text())["runtime"]["precision"] == "mixed_bfloat16"
    assert keras.mixed_precision.dtype_policy().name == "float32"
    code = ("import warnings; warnings.simplefilter('always'); from fer_bench.evaluation.predictors import load_predictor; "
            f"load_predictor({str(tmp_path / 'custom_cnn')!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Skipping variable loading" not in done.stderr and "Warning" not in done.stderr, done.stderr


@pytest.mark.slow
def test_annotations_scale_with_the_photo_and_say_when_no_face_was_found(trained_runs, tmp_path):
    from fer_bench.photos.predict import _annotate

    big = Image.new("RGB", (4000, 3000), (128, 128, 128))
    face = {"box": {"x": 1000, "y": 1000, "width": 800, "height": 800}, "emotion": "happy",
            "top3": [["happy", 0.9], ["angry", 0.05], ["surprise", 0.05]]}
    labelled = np.asarray(Image.open(_annotate(big, [face], Path("big.png"), tmp_path)))
    label_rows = np.flatnonzero(((labelled[:1000, 1000:1400] == (255, 64, 64)).all(axis=2)).any(axis=1))
    assert label_rows.max() - label_rows.min() >= 4000 // 40  # the label box: 2.5% of the photo, not 10 px

    noise = np.random.default_rng(1).integers(0, 255, size=(300, 400), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.jpg")
    out = invoke("predict", trained_runs / "custom_cnn", tmp_path / "noise.jpg", "--annotate", tmp_path / "out")
    assert out.exit_code == 0 and "no face found" in out.output
    annotated = np.asarray(Image.open(tmp_path / "out" / "noise_annotated.png"))
    assert ((annotated == (255, 64, 64)).all(axis=2)).sum() > 500  # a "no face found" banner, not a bare photo
