"""Preprocessing layers saved inside `model.keras`, so a saved model takes raw 48x48 grey pixels (0-255).

Registered with Keras' serialisation so `keras.saving.load_model(..., safe_mode=True)` can rebuild
them without Lambda layers (which safe mode refuses). Imports Keras at the top: only `models.py`
imports this module, and only inside the functions that build or load a model.
"""

from __future__ import annotations

import keras
from keras import ops

# Each backbone's own `preprocess_input`, by registry name of the model family.
PREPROCESSORS = {
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
}


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
        if family not in PREPROCESSORS:
            raise ValueError(f"unknown backbone family {family!r}; choose from {sorted(PREPROCESSORS)}")
        self.family = family

    def call(self, inputs):
        return PREPROCESSORS[self.family](inputs)

    def get_config(self):
        return {**super().get_config(), "family": self.family}
