"""Preprocessing layers saved inside `model.keras`, so a saved model takes raw 48x48 grey pixels (0-255).

Registered with Keras' serialisation so `keras.saving.load_model(..., safe_mode=True)` can rebuild
them without Lambda layers (which safe mode refuses). Imports Keras at the top: only the model
registry and builders import this module, and only inside the functions that build or load a model.
"""

from __future__ import annotations

import keras
from keras import ops

from fer_bench.models.registry import backbone_preprocessor


@keras.saving.register_keras_serializable(package="fer_bench")
class GreyToRGB(keras.layers.Layer):
    """Repeat a single grey channel three times, for networks that expect colour."""

    def call(self, inputs):
        return ops.repeat(inputs, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="fer_bench")
class BackbonePreprocess(keras.layers.Layer):
    """Apply the named backbone's `preprocess_input` to RGB pixels in 0-255."""

    def __init__(self, family: str, **kwargs):
        super().__init__(**kwargs)
        self.preprocess = backbone_preprocessor(family)  # the model's registry entry names it
        self.family = family

    def call(self, inputs):
        return self.preprocess(inputs)

    def get_config(self):
        return {**super().get_config(), "family": self.family}
