"""The model registry: one builder function per model name, each returning an uncompiled Keras model.

Every model takes the raw data as stored: (48, 48, 1) grey pixels in 0-255, and does its own
rescaling, resizing and grey-to-RGB inside, so a saved `model.keras` needs no outside preprocessing.
Backbones are called as a layer named `backbone`, and every model names its penultimate layer
`features`. Keras 3's `fit` overrides a `training=False` given when the model is built, so the
fine-tune phases keep pretrained BatchNorm statistics by freezing those layers (training.fit._set_trainable)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fer_bench.config import Experiment, Interval, check_arguments
from fer_bench.errors import ConfigError, FerBenchError
from fer_bench.files import MODEL_FILE
from fer_bench.registry import Registry

INPUT_SHAPE = (48, 48, 1)
BACKBONE_LAYER = "backbone"
FEATURE_LAYER = "features"
# Arguments every builder receives from the runner; the rest come from `model.params`.
COMMON_ARGS = ("num_classes", "input_size", "colour", "weights")  # always given: no builder has defaults for them
MODELS = Registry("model")


def register(name: str, preprocess: str | None = None, check: Callable[[Experiment], None] | None = None) -> Callable:
    """Add a model builder to MODELS, with its facts.

    `preprocess` marks an ImageNet backbone (two-phase fine-tune, RGB input) and names the
    `keras.applications` module whose `preprocess_input` its inputs go through; `check` is what the
    builder needs checked beyond its signature (which gives its parameters' names, types and ranges).
    """
    return MODELS.register(name, preprocess=preprocess, check=check)


def is_backbone(name: str) -> bool:
    return MODELS.fact(name, "preprocess") is not None


def backbone_preprocessor(name: str) -> Callable:
    """The backbone's own `preprocess_input`, from the module its registry entry names."""
    import importlib

    module = MODELS.fact(name, "preprocess")
    if module is None:
        raise ValueError(f"unknown backbone family {name!r}; choose from {MODELS.having('preprocess')}")
    return importlib.import_module(f"keras.applications.{module}").preprocess_input


def model_params(name: str) -> dict[str, Any]:
    """The builder's own parameters (beyond COMMON_ARGS) and their defaults."""
    signature = inspect.signature(MODELS[name])
    return {p.name: p.default for p in signature.parameters.values() if p.name not in COMMON_ARGS}


def check_model_config(exp: Experiment) -> None:
    """Config checks that need the registry: the name, its parameters and the weights."""
    cfg = exp.model
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: unknown {cfg.name!r}; choose from {sorted(MODELS)}")
    check_arguments("model.params", cfg.name, MODELS[cfg.name], cfg.params, COMMON_ARGS)
    check = MODELS.fact(cfg.name, "check")
    if check is not None:
        check(exp)
    if is_backbone(cfg.name):
        if exp.data.colour != "rgb":
            raise ConfigError(f"data.colour must be 'rgb' for {cfg.name} (an ImageNet backbone); got {exp.data.colour!r}")
    else:
        if cfg.weights == "imagenet":
            raise ConfigError(f"model.weights: {cfg.name} has no ImageNet weights; use null or a weights file")
        if cfg.fine_tune is not None:
            raise ConfigError(f"model.fine_tune applies to backbones {MODELS.having('preprocess')}, not {cfg.name}; "
                              "set it to null")
    if cfg.weights not in (None, "imagenet") and not Path(cfg.weights).is_file():
        hint = ("a run's model file: train that run first" if Path(cfg.weights).name == MODEL_FILE
                else "use imagenet, null or a weights file")
        raise ConfigError(f"model.weights: file not found: {cfg.weights} ({hint})")


def build_model(exp: Experiment) -> Any:
    """Build the configured model for `len(exp.classes)` classes."""
    check_model_config(exp)
    builder = MODELS[exp.model.name]
    try:
        return builder(num_classes=len(exp.classes), input_size=exp.data.input_size, colour=exp.data.colour,
                       weights=exp.model.weights, **exp.model.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params for {exp.model.name}: {str(exc).splitlines()[0]}") from None


def classifier_head(x: Any, num_classes: int, dense_units: int, dropout: float) -> Any:
    import keras

    x = keras.layers.Dropout(dropout)(x)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    # A named identity marks the feature vector that feature-based classifiers read.
    x = keras.layers.Identity(name=FEATURE_LAYER)(x)
    # float32 softmax: stable under mixed precision.
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


Rate = Annotated[float, Interval(0.0, 1.0, high_open=True)]  # a dropout rate: 1 would drop everything
Width = Annotated[int, Interval(1)]
Units = Annotated[int, Interval(0)]  # 0 = no hidden dense layer


def load_weights_file(model: Any, path: str, family: str) -> None:
    """Load a weights file, refusing one saved from another architecture.

    Keras loads a mismatched file with only a warning, leaving layers at their random start;
    here any such warning is an error.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except Exception as exc:  # noqa: BLE001 - shape and format errors come in many types
            raise FerBenchError(f"cannot load weights {path} into {family} ({exc.__class__.__name__})") from None
    skipped = [w for w in caught if "skipping" in str(w.message).lower() or "mismatch" in str(w.message).lower()]
    if skipped:
        raise FerBenchError(f"cannot load weights {path} into {family}: the file was saved from another model")
