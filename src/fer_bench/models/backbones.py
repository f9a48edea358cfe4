"""ImageNet backbones (keras.applications) behind in-model resize, grey-to-RGB and their own preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fer_bench.config import Interval
from fer_bench.errors import FerBenchError
from fer_bench.models.registry import BACKBONE_LAYER, INPUT_SHAPE, Rate, Units, classifier_head, load_weights_file, register


def _backbone_model(family: str, application: Callable, num_classes: int, input_size: int,
                    weights: str | None, dense_units: int, dropout: float, **application_args: Any) -> Any:
    """ImageNet backbone without its top, behind in-model resize, grey-to-RGB and its own preprocessing."""
    import keras

    from fer_bench.models.layers import BackbonePreprocess, GreyToRGB

    # A local file is loaded here, not by keras.applications, so that a mismatch is caught.
    try:
        base = application(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                           input_shape=(input_size, input_size, 3), name=BACKBONE_LAYER, **application_args)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras turns a failed download into a bare Exception
        raise FerBenchError(
            f"could not download ImageNet weights for {family} ({exc.__class__.__name__}); without a network "
            "set model.weights to a local 'notop' weights file, or to null to train from scratch"
        ) from None
    if weights not in (None, "imagenet"):
        load_weights_file(base, weights, family)
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    x = inputs
    if input_size != INPUT_SHAPE[0]:
        x = keras.layers.Resizing(input_size, input_size)(x)
    x = GreyToRGB()(x)
    x = BackbonePreprocess(family)(x)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, classifier_head(x, num_classes, dense_units, dropout), name=family)


@register("mobilenetv2", preprocess="mobilenet_v2")
def mobilenetv2(num_classes: int, input_size: int, colour: str, weights: str | None,
                alpha: Annotated[float, Interval(0.0, low_open=True)] = 1.0, dense_units: Units = 0,
                dropout: Rate = 0.3) -> Any:
    """MobileNetV2 fine-tune; `alpha` scales its width (ImageNet weights exist for 0.35-1.4)."""
    import keras

    return _backbone_model("mobilenetv2", keras.applications.MobileNetV2, num_classes, input_size, weights,
                           dense_units, dropout, alpha=alpha)


@register("vgg16", preprocess="vgg16")
def vgg16(num_classes: int, input_size: int, colour: str, weights: str | None,
          dense_units: Units = 256, dropout: Rate = 0.5) -> Any:
    """VGG16 fine-tune."""
    import keras

    return _backbone_model("vgg16", keras.applications.VGG16, num_classes, input_size, weights, dense_units, dropout)


@register("resnet50", preprocess="resnet50")
def resnet50(num_classes: int, input_size: int, colour: str, weights: str | None,
             dense_units: Units = 0, dropout: Rate = 0.3) -> Any:
    """ResNet50 fine-tune."""
    import keras

    return _backbone_model("resnet50", keras.applications.ResNet50, num_classes, input_size, weights,
                           dense_units, dropout)
