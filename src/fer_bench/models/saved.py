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


def averaged_model(paths: list[Path]) -> Any:
    """One Keras model that averages the class probabilities of several saved models.

    An ensemble of Keras runs then has a `model.keras` of its own, which `predict`, `evaluate` and the
    shipped folder load like any run's: the members sit inside it, each seeing the same raw pixels.
    """
    from fer_bench.backends import import_keras
    from fer_bench.models.registry import INPUT_SHAPE

    keras = import_keras()
    members = [load_model(path) for path in paths]
    pixels = keras.Input(INPUT_SHAPE, name="pixels")
    # Each member keeps its own layers under a name of its own: saved models all share their family's name.
    outputs = [keras.Model(m.inputs[0], m.outputs[0], name=f"member_{i}")(pixels) for i, m in enumerate(members)]
    mean = keras.layers.Average(dtype="float32", name="mean_probabilities")(outputs)
    return keras.Model(pixels, mean, name="ensemble")
