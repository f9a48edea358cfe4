import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.inference import load_predictor, tta_views
from conftest import REAL_DATA, synthetic_face

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
    assert any(line.startswith(f"{photos / 'crop.png'}: face 1 at (0, 0, 48, 48): ") for line in lines)
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
def test_predict_finds_a_face_in_a_larger_photo(trained_runs, tmp_path):
    face = Image.open(REAL_DATA / "test" / "happy" / "PrivateTest_10077120.jpg").convert("L").resize((192, 192))
    photo = Image.new("RGB", (480, 360), (128, 128, 128))
    photo.paste(face, (140, 80))
    photo.save(tmp_path / "photo.jpg")
    out = invoke("predict", trained_runs / "custom_cnn", tmp_path / "photo.jpg", "--json")
    assert out.exit_code == 0, out.output
    (result,) = json.loads(out.stdout)
    assert len(result["faces"]) == 1
    x, y, w, h = result["faces"][0]["box"]
    assert 120 < x < 180 and 60 < y < 120 and 140 < w < 230


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
