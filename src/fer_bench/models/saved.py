"""Saved models: a run's `model.keras` loaded safely, and a trained network made ready to save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fer_bench.errors import FerBenchError


def load_model(path: Path | str) -> Any:
    """Load a saved `model.keras` in Keras' safe mode (no arbitrary code), with a one-line error on failure."""
    from fer_bench.backends import import_keras
    from fer_bench.console import native_stderr_filtered

    keras = import_keras()  # here, not at top: keeps the CLI fast
    from fer_bench.models import layers  # noqa: F401 - registers the custom layers for deserialisation

    path = Path(path)
    if not path.is_file():
        raise FerBenchError(f"model file not found: {path}")
    try:
        # compile=False: inference needs no optimizer. Files written before runs were saved without one
        # still hold it, and restoring it under another precision policy only warns about skipped variables.
        # TensorFlow prints its banner when its devices start, which may be here rather than at import.
        with native_stderr_filtered():
            return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise FerBenchError(f"cannot load {path} as a Keras model ({exc.__class__.__name__})") from None


def for_inference(model: Any) -> Any:
    """The trained network as a new, uncompiled model over the same layers (nothing is copied).

    What a run keeps and predicts with needs no optimizer: saved with it, Adam's two moments would make
    `model.keras` three times the size of the weights, and a file written under mixed precision would
    warn about optimizer variables it skips wherever it is loaded in float32.
    """
    import keras

    return keras.Model(model.inputs, model.outputs, name=model.name)


def computes_in_float32(model: Any) -> bool:
    """Whether every layer of `model` (nested models included) computes in float32."""
    return all(layer.dtype_policy.compute_dtype == "float32" for layer in _all_layers(model))


def _all_layers(model: Any) -> list[Any]:
    return [inner for layer in model.layers for inner in [layer, *(_all_layers(layer) if hasattr(layer, "layers") else [])]]


def in_float32(model: Any) -> Any:
    """The same network computing in float32, with the same weights.

    A model trained under mixed precision is saved with its bfloat16 (or float16) layers, so it would predict
    in that precision wherever it is loaded: slowly on a CPU that emulates it, and with probabilities that
    differ between backends by more than a float32 model's. Its variables are float32 already, so only the
    layers' dtype policies change; a float32 model is returned as it is.
    """
    if computes_in_float32(model):
        return model
    config = _float32_policies(model.get_config())
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _float32_policies(node: Any) -> Any:
    """A layer config with every dtype policy in it (at any depth) replaced by float32."""
    if isinstance(node, list):
        return [_float32_policies(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return {**node, "config": {**node.get("config", {}), "name": "float32"}}
    return {key: _float32_policies(value) for key, value in node.items()}


def averaged_model(members: list[Any]) -> Any:
    """One Keras model that averages the class probabilities of several trained models, each in float32.

    An ensemble of Keras runs then has a `model.keras` of its own, which `predict`, `evaluate` and the
    shipped folder load like any run's: the members sit inside it, each seeing the same raw pixels.
    """
    from fer_bench.backends import import_keras
    from fer_bench.models.registry import INPUT_SHAPE

    keras = import_keras()
    members = [in_float32(m) for m in members]
    pixels = keras.Input(INPUT_SHAPE, name="pixels")
    # Each member keeps its own layers under a name of its own: saved models all share their family's name.
    outputs = [keras.Model(m.inputs[0], m.outputs[0], name=f"member_{i}")(pixels) for i, m in enumerate(members)]
    mean = keras.layers.Average(dtype="float32", name="mean_probabilities")(outputs)
    return keras.Model(pixels, mean, name="ensemble")
