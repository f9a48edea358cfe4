"""Models trained from scratch: the VGG-style custom CNN."""

from __future__ import annotations

from typing import Annotated, Any

from fer_bench.config import Experiment, Interval
from fer_bench.errors import ConfigError
from fer_bench.models.registry import INPUT_SHAPE, Rate, Units, Width, classifier_head, load_weights_file, model_params, register


def _check_custom_cnn(exp: Experiment) -> None:
    """A list of convolution counts gives one per block; each block halves the side with max-pooling, and
    past 1 pixel there is nothing left to pool."""
    defaults = model_params("custom_cnn")
    blocks = len(exp.model.params.get("filters", defaults["filters"]))
    convs = exp.model.params.get("convs_per_block", defaults["convs_per_block"])
    if isinstance(convs, list) and len(convs) != blocks:
        raise ConfigError(f"model.params.convs_per_block: {len(convs)} counts for {blocks} blocks (model.params.filters); "
                          "give one count per block, or one number for all")
    side = exp.data.input_size
    if side >> blocks < 1:
        most = side.bit_length() - 1
        raise ConfigError(f"model.params.filters: {blocks} blocks halve {side} px to nothing; at most {most} blocks "
                          f"at data.input_size {side}")


@register("custom_cnn", check=_check_custom_cnn)
def custom_cnn(num_classes: int, input_size: int, colour: str, weights: str | None,
               filters: list[Width] = (32, 64, 128, 256), convs_per_block: Width | list[Width] = 2,
               batch_norm: bool = True, block_dropout: Rate = 0.25, dense_units: Units = 256, dropout: Rate = 0.5,
               l2: Annotated[float, Interval(0.0)] = 0.0) -> Any:
    """VGG-style blocks of 3x3 convolutions, each block ending in max-pooling and dropout.

    `convs_per_block` is one count for every block or a list, one per block: the first block works at
    the full input side, so one convolution fewer there saves the most arithmetic.
    """
    import keras

    from fer_bench.models.layers import GreyToRGB

    regulariser = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    if input_size != INPUT_SHAPE[0]:
        x = keras.layers.Resizing(input_size, input_size)(x)
    if colour == "rgb":
        x = GreyToRGB()(x)
    counts = convs_per_block if isinstance(convs_per_block, list) else [convs_per_block] * len(filters)
    for width, count in zip(filters, counts):
        for _ in range(int(count)):
            x = keras.layers.Conv2D(int(width), 3, padding="same", use_bias=not batch_norm,
                                    kernel_regularizer=regulariser)(x)
            if batch_norm:
                x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(block_dropout)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, classifier_head(x, num_classes, dense_units, dropout), name="custom_cnn")
    if weights is not None:
        load_weights_file(model, weights, "custom_cnn")
    return model
