import numpy as np
import pytest

from fer_bench.config import from_dict
from fer_bench.errors import FerBenchError
from fer_bench.models.registry import FEATURE_LAYER, MODELS, build_model, is_backbone
from fer_bench.models.saved import load_model


def experiment(name, **model):
    backbone = is_backbone(name)
    data = {"input_size": 32 if backbone else 48, "colour": "rgb" if backbone else "grayscale"}
    return from_dict({"data": {**data, "classes": ["angry", "happy", "sad"]},
                      "model": {"name": name, "weights": None, **model}})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_predicts_probabilities(name):
    model = build_model(experiment(name))
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 48, 48, 1)).astype("float32")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert model.get_layer(FEATURE_LAYER).output.shape[-1] > 0


def test_custom_cnn_parameters_come_from_the_config():
    small = build_model(experiment("custom_cnn", params={"filters": [8, 16], "dense_units": 0}))
    large = build_model(experiment("custom_cnn", params={"filters": [8, 16, 32], "dense_units": 64}))
    assert small.count_params() < large.count_params()
    assert sum("conv2d" in layer.name for layer in small.layers) == 4


def test_custom_cnn_takes_a_convolution_count_per_block():
    model = build_model(experiment("custom_cnn", params={"filters": [8, 16, 32], "convs_per_block": [1, 2, 3]}))
    widths = [layer.filters for layer in model.layers if "conv2d" in layer.name]
    assert widths == [8, 16, 16, 32, 32, 32]


def test_backbone_loads_a_local_weights_file(tmp_path):
    import keras

    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    path = tmp_path / "mobilenet_notop.weights.h5"
    source.save_weights(path)
    model = build_model(experiment("mobilenetv2", weights=str(path), params={"alpha": 0.35}))
    loaded = model.get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, source.get_weights()))


def test_custom_cnn_trains_on_from_a_runs_model_file_whatever_its_dropout(tmp_path):
    """configs/cpu/tuned_cnn_continued.yaml: stage 2 starts from stage 1's model.keras, with other dropout rates."""
    params = {"filters": [8, 16], "dense_units": 8}
    stage_one = build_model(experiment("custom_cnn", params={**params, "block_dropout": 0.1, "dropout": 0.4}))
    path = tmp_path / "model.keras"
    stage_one.save(path)
    stage_two = build_model(experiment("custom_cnn", weights=str(path), params={**params, "block_dropout": 0.05,
                                                                                 "dropout": 0.3}))
    assert all(np.array_equal(a, b) for a, b in zip(stage_two.get_weights(), stage_one.get_weights()))


def test_failed_imagenet_download_is_a_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(FerBenchError, match=r"could not download ImageNet weights for vgg16 .*model.weights"):
        build_model(experiment("vgg16", weights="imagenet"))


def test_saved_models_reload_in_safe_mode(tmp_path):
    model = build_model(experiment("mobilenetv2", params={"alpha": 0.35}))
    model.save(tmp_path / "model.keras")
    again = load_model(tmp_path / "model.keras")
    pixels = np.full((1, 48, 48, 1), 128, dtype="float32")
    assert np.allclose(model.predict(pixels, verbose=0), again.predict(pixels, verbose=0), atol=1e-6)
    (tmp_path / "junk.keras").write_bytes(b"junk")
    with pytest.raises(FerBenchError, match=r"cannot load .*junk.keras as a Keras model"):
        load_model(tmp_path / "junk.keras")


@pytest.mark.parametrize("phase", ["train", "fine_tune"])
def test_backbone_batchnorm_learns_from_scratch_and_stays_fixed_in_a_fine_tune(phase):
    import keras

    from fer_bench.training.fit import _set_trainable

    model = build_model(experiment("mobilenetv2", params={"alpha": 0.35}))
    _set_trainable(model, phase, unfreeze_top=1000)
    batchnorm = next(layer for layer in model.get_layer("backbone").layers
                     if isinstance(layer, keras.layers.BatchNormalization))
    head = model.get_layer("predictions")
    before_mean, before_bias = np.array(batchnorm.moving_mean), np.array(head.bias)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 48, 48, 1)).astype("float32")
    model.fit(pixels, np.eye(3)[[0, 1, 2, 0]], epochs=1, verbose=0)
    assert not np.allclose(before_bias, np.array(head.bias))
    assert np.allclose(before_mean, np.array(batchnorm.moving_mean)) == (phase == "fine_tune")


def test_class_weights_balanced_and_its_square_root():
    from fer_bench.training.fit import class_weights

    labels = np.array([0] * 8 + [1] * 2)  # n=10, k=2: balanced = 10/(2*8), 10/(2*2)
    classes = ("happy", "disgust")
    assert class_weights(labels, classes, "none") is None
    np.testing.assert_allclose(class_weights(labels, classes, "balanced"), [0.625, 2.5])
    np.testing.assert_allclose(class_weights(labels, classes, "sqrt_balanced"), [0.625 ** 0.5, 2.5 ** 0.5])
    np.testing.assert_allclose(class_weights(labels, classes, {"disgust": 3.0}), [1.0, 3.0])
