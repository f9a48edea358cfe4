import json

import numpy as np
import pytest
from conftest import REPO
from helpers import check_run
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.config import AugmentConfig, TrainConfig, from_dict
from fer_bench.data.pipeline import epoch_class_counts, training_dataset
from fer_bench.errors import ConfigError
from fer_bench.experiment import load_experiment
from fer_bench.models.features import CLASSIFIERS, FeatureModel, FeatureSpec, extract
from fer_bench.training.fit import make_loss

runner = CliRunner()
CLASSES = ("angry", "happy", "surprise")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("sampling, expected", [("none", [2, 9, 5]), ("oversample", [9, 9, 9]),
                                                ("undersample", [2, 2, 2])])
def test_sampler_gives_the_class_counts_it_promises(sampling, expected):
    labels = np.array([0] * 2 + [1] * 9 + [2] * 5)
    images = np.arange(16, dtype=np.uint8)[:, None, None] * np.ones((1, 48, 48), np.uint8)
    assert epoch_class_counts(labels, 3, sampling).tolist() == expected
    for epoch in range(2):  # every epoch, not only the first
        # batches of one, so that no image of the epoch is left over after the last whole batch
        ds, steps = training_dataset(images, labels, 3, 1, AugmentConfig(), seed=0, sampling=sampling, first_epoch=epoch)
        seen = np.concatenate([y.argmax(axis=1) for _, y in ds.as_numpy_iterator()])
        assert np.bincount(seen, minlength=3).tolist() == expected
        assert steps == sum(expected)
    # images travel with their labels: image i holds the value i
    for x, y in ds.as_numpy_iterator():
        values = x[:, 0, 0, 0].astype(int)
        assert (labels[values] == y.argmax(axis=1)).all()


def test_undersampling_draws_fresh_images_each_epoch():
    labels = np.array([0] * 2 + [1] * 30)
    images = np.arange(32, dtype=np.uint8)[:, None, None] * np.ones((1, 48, 48), np.uint8)
    ds, steps = training_dataset(images, labels, 2, 8, AugmentConfig(), seed=3, sampling="undersample", num_epochs=4)
    batches = [x[:, 0, 0, 0] for x, _ in ds.as_numpy_iterator()]
    epochs = [tuple(sorted(np.concatenate(batches[i:i + steps]).astype(int))) for i in range(0, len(batches), steps)]
    assert len(epochs) == 4 and all(len(e) == 4 for e in epochs)
    assert len(set(epochs)) > 1


def test_focal_loss_with_gamma_zero_equals_cross_entropy():
    rng = np.random.default_rng(0)
    y_true = np.eye(7)[rng.integers(0, 7, 32)].astype("float32")
    logits = rng.normal(size=(32, 7))
    y_pred = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype("float32")
    focal = make_loss(TrainConfig(loss="focal", focal_gamma=0.0, focal_alpha=1.0))
    plain = make_loss(TrainConfig())
    assert float(focal(y_true, y_pred)) == pytest.approx(float(plain(y_true, y_pred)), rel=1e-5)
    sharper = make_loss(TrainConfig(loss="focal", focal_gamma=2.0, focal_alpha=1.0))
    assert float(sharper(y_true, y_pred)) < float(plain(y_true, y_pred))


@pytest.mark.parametrize("classes", [CLASSES, ("happy", "sad")], ids=["3-classes", "2-classes"])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_classifier_fits_and_gives_probabilities(name, classes):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 48, 48), dtype=np.uint8)
    labels = np.arange(30) % len(classes)
    images[labels == 1, :10] = 255
    exp = from_dict({"data": {"classes": list(classes)}, "model": {"name": name},
                     "features": {"extractor": "hog"}})
    from fer_bench.models.features import make_pipeline

    spec = FeatureSpec("hog", {"hog_cell": 8, "hog_block": 2, "hog_orientations": 9})
    model = FeatureModel(classes, spec, make_pipeline(exp, 29).fit(extract(images, spec), labels))
    probabilities = model.predict_proba(images)
    assert probabilities.shape == (30, len(classes)) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # the most probable class is the classifier's own prediction (two classes: one score per image)
    assert (probabilities.argmax(axis=1) == model.pipeline.predict(extract(images, spec))).all()


def test_hog_svm_runs_on_a_two_class_subset(fer_folder, tmp_path):
    out = invoke("run", REPO / "configs" / "hog_svm.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path,
                 "--set", "data.classes=[happy, sad]", "--set", "search.grid={}")
    assert out.exit_code == 0, out.output
    check_run(tmp_path / "hog_svm", ("happy", "sad"), model_file="model.joblib")


def write_config(tmp_path, text, name="exp"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_feature_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model svm classifies features: add a `features` section"):
        load_experiment(write_config(tmp_path, "model: {name: svm}"))
    with pytest.raises(ConfigError, match=r"unknown key 'model.params.depth' for svm"):
        load_experiment(write_config(tmp_path, "model: {name: svm, params: {depth: 2}}\nfeatures: {extractor: hog}"))
    with pytest.raises(ConfigError, match=r"unknown key 'search.grid.Cee' for svm"):
        load_experiment(write_config(tmp_path, "model: {name: svm}\nfeatures: {extractor: hog}\nsearch: {grid: {Cee: [1]}}"))
    with pytest.raises(ConfigError, match=r"the cnn extractor needs exactly one of from_run"):
        load_experiment(write_config(tmp_path, "model: {name: svm}\nfeatures: {extractor: cnn}"))
    with pytest.raises(ConfigError, match=r"features applies to feature classifiers, not to custom_cnn"):
        load_experiment(write_config(tmp_path, "model: {name: custom_cnn}\nfeatures: {extractor: hog}"))
    with pytest.raises(ConfigError, match=r"model.name: unknown 'knn'; choose from \[.*'logistic_regression'"):
        load_experiment(write_config(tmp_path, "model: {name: knn}"))


@pytest.mark.slow
def test_from_run_must_be_a_finished_cnn_run(trained_runs, fer_folder, tmp_path):
    config = write_config(tmp_path, "data: {classes: [angry, happy, surprise]}\nmodel: {name: svm}\n"
                                    "features: {extractor: cnn, from_run: RUN}")
    out = invoke("run", config, "--data-dir", fer_folder, "--results-dir", tmp_path / "r",
                 "--set", f"features.from_run={tmp_path / 'missing'}")
    assert out.exit_code == 1
    assert out.output.strip().splitlines()[-1] == f"error: features.from_run: {tmp_path / 'missing'} is not a finished run (no metrics.json)"
    hog = write_config(tmp_path, "data: {classes: [angry, happy, surprise]}\nmodel: {name: logistic_regression}\n"
                                 "features: {extractor: hog}", name="hog")
    assert invoke("run", hog, "--data-dir", fer_folder, "--results-dir", tmp_path / "r", "--name", "hog").exit_code == 0
    out = invoke("run", config, "--data-dir", fer_folder, "--results-dir", tmp_path / "r",
                 "--set", f"features.from_run={tmp_path / 'r' / 'hog'}")
    assert out.exit_code == 1 and "is not a CNN run (no model.keras)" in out.output


@pytest.mark.slow
def test_cnn_features_are_cached_and_the_run_predicts(trained_runs, fer_folder, tmp_path):
    source = trained_runs / "custom_cnn"
    outputs = []
    for name in ("svm", "random_forest"):
        config = write_config(tmp_path, f"data: {{classes: [angry, happy, surprise]}}\nmodel: {{name: {name}}}\n"
                                        f"features: {{extractor: cnn, from_run: {source}}}\n"
                                        + ("search: {grid: {C: [0.1, 1.0]}, selection: cv, folds: 2}" if name == "svm" else ""))
        out = invoke("run", config, "--data-dir", fer_folder, "--results-dir", tmp_path / "r", "--name", name)
        assert out.exit_code == 0, out.output
        outputs.append(out.output)
        metrics = check_run(tmp_path / "r" / name, CLASSES, model_file="model.joblib")
        assert metrics["kind"] == "features" and metrics["features"]["feature_dim"] == 16
    assert "features from the cache" not in outputs[0] and "train: cnn features from the cache" in outputs[1]
    search = (tmp_path / "r" / "svm" / "search.csv").read_text()
    assert "param_classifier__C" in search and "split1_test_score" in search
    assert json.loads((tmp_path / "r" / "svm" / "metrics.json").read_text())["features"]["best_params"]["C"] in (0.1, 1.0)
    photo = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.full((48, 48), 120, np.uint8)).save(photo)
    out = invoke("predict", tmp_path / "r" / "svm", photo, "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)[0]["faces"][0]["emotion"] in CLASSES


@pytest.mark.slow
def test_imbalance_strategy_and_counts_are_recorded(fer_folder, tmp_path):
    out = invoke("run", REPO / "configs" / "custom_cnn_oversample.yaml", "--data-dir", fer_folder,
                 "--results-dir", tmp_path, "--set", "data.classes=[angry, happy, surprise]",
                 "--set", "data.max_per_class=5", "--set", "train.epochs=1", "--set", "model.params.filters=[8]")
    assert out.exit_code == 0, out.output
    imbalance = json.loads((tmp_path / "custom_cnn_oversample" / "metrics.json").read_text())["imbalance"]
    assert imbalance["sampling"] == "oversample"
    assert imbalance["epoch_counts"] == {c: 5 for c in CLASSES}
