"""Faces in ordinary photos: detectors, and the crop that makes a detection look like a FER-2013 face.

A detector is a registry entry: a function that loads it once and returns `detect(rgb) -> boxes`
(x, y, w, h). Detectors frame a face differently (MTCNN's box is tall and narrow, Haar's square),
and FER-2013 faces were cut with a margin of their own, so each detector carries the square
crop, relative to its box, that best recovers the FER-2013 framing. Those numbers were measured by
`scripts/detectors.py` (results/benchmark/detectors.md): the model sees faces framed as in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_bench import IMAGE_SIDE
from fer_bench.errors import FerBenchError
from fer_bench.registry import Registry

SMALL_IMAGE = 64  # an image this small is taken to be a face crop already
DEFAULT_DETECTOR = "mtcnn"
MTCNN_CONFIDENCE = 0.9  # no threshold found 2 more of 210 faces in scripts/detectors.py: not worth false faces
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Framing:
    """A square crop from a detector's box: side = scale * box height, centre moved by a fraction of the box."""

    scale: float
    shift_x: float
    shift_y: float

    def square(self, box: Box) -> tuple[float, float, float]:
        """(left, top, side) of the crop, in photo pixels; it may reach outside the photo."""
        x, y, w, h = box
        side = self.scale * h
        centre_x, centre_y = x + w / 2 + self.shift_x * w, y + h / 2 + self.shift_y * h
        return centre_x - side / 2, centre_y - side / 2, side


DETECTORS = Registry("face detector")  # name -> loader() -> detect(rgb) -> list[Box]


def register(name: str, framing: Framing) -> Callable:
    """Add a detector with its framing: the square crop of its box that looks like a FER-2013 face."""
    return DETECTORS.register(name, framing=framing)


def framing(detector: str) -> Framing:
    return DETECTORS.fact(detector, "framing")


# Measured on FER-2013 PrivateTest faces: see scripts/detectors.py and results/benchmark/detectors.md.
@register("mtcnn", Framing(scale=0.95, shift_x=0.01, shift_y=-0.009))
def mtcnn_detector() -> Callable[[np.ndarray], list[Box]]:
    """MTCNN (the `mtcnn` package, weights inside its wheel, on TensorFlow): finds more faces than Haar, slower."""
    from fer_bench.backends import import_keras

    import_keras()
    try:
        from mtcnn import MTCNN
    except ImportError as exc:
        raise FerBenchError(f"the mtcnn detector needs the mtcnn package and TensorFlow ({exc.name} is missing); "
                            "pip install mtcnn, or pass --detector haar") from None
    detector = MTCNN()
    if import_keras().backend.backend() != "tensorflow":
        for stage in detector.stages:
            stage._model = _TensorFlowOutputs(stage._model)

    def detect(rgb: np.ndarray) -> list[Box]:
        found = detector.detect_faces(rgb)
        return [tuple(int(v) for v in face["box"]) for face in found if face["confidence"] >= MTCNN_CONFIDENCE]

    return detect


class _TensorFlowOutputs:
    """An MTCNN network whose outputs are TensorFlow tensors, whatever backend Keras runs on.

    MTCNN's three networks are `tf.keras` models, which are Keras 3 models on Keras' active backend: on
    JAX they return JAX arrays, and MTCNN's post-processing calls `.numpy()` on them, as on tf tensors.
    """

    def __init__(self, model: Callable):
        self.model = model

    def __call__(self, *args: object, **kwargs: object) -> object:
        import tensorflow as tf

        outputs = self.model(*args, **kwargs)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(tf.convert_to_tensor(np.asarray(o)) for o in outputs)
        return tf.convert_to_tensor(np.asarray(outputs))


@register("haar", Framing(scale=1.052, shift_x=-0.003, shift_y=-0.003))
def haar_detector() -> Callable[[np.ndarray], list[Box]]:
    """OpenCV's frontal-face Haar cascade: fast, no TensorFlow, misses faces that are turned or covered."""
    import cv2  # here: only photos need OpenCV

    # The cascade ships inside opencv-python-headless: no download. Other OpenCV builds may lack it.
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:
        raise FerBenchError("this OpenCV build ships no Haar cascades (no cv2.data); pip install opencv-python-headless")
    cascade = cv2.CascadeClassifier(str(Path(folder) / "haarcascade_frontalface_default.xml"))
    if cascade.empty():
        raise FerBenchError(f"OpenCV's frontal-face Haar cascade could not be loaded from {folder}")

    def detect(rgb: np.ndarray) -> list[Box]:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return [tuple(int(v) for v in box) for box in cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                                                               minSize=(30, 30))]

    return detect


def load_detector(name: str) -> Callable[[np.ndarray], list[Box]]:
    if name not in DETECTORS:
        raise FerBenchError(f"--detector must be one of {sorted(DETECTORS)}; got {name!r}")
    return DETECTORS[name]()


def faces_in(rgb: np.ndarray, detect: Callable[[np.ndarray], list[Box]], detector: str) -> tuple[list[Box], np.ndarray]:
    """The face boxes (x, y, w, h) of a photo, largest first, and their 48x48 grey crops framed like FER-2013.

    A small image is one face filling the frame, taken as it is.
    """
    from PIL import Image

    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    height, width = grey.shape
    if max(height, width) <= SMALL_IMAGE:
        whole = (0, 0, width, height)
        return [whole], crop_face(grey, whole, None)[None]
    boxes = sorted(detect(rgb), key=lambda box: -box[2] * box[3])
    crops = [crop_face(grey, box, detector) for box in boxes]
    return boxes, np.stack(crops) if crops else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)


def crop_face(grey: np.ndarray, box: Box, detector: str | None) -> np.ndarray:
    """The face as a 48x48 uint8 crop, framed as FER-2013 frames faces (padded with edge pixels at the border).

    `detector` None takes the box as it is (a small image that is a face crop already).
    """
    from PIL import Image

    if detector is None:
        x, y, w, h = box
        face = Image.fromarray(grey[y:y + h, x:x + w])
        return np.asarray(face.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR), dtype=np.uint8)
    left, top, side = framing(detector).square(box)
    pad = int(np.ceil(max(side, 1)))
    padded = np.pad(grey, pad, mode="edge")
    face = Image.fromarray(padded).resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR,
                                          box=(left + pad, top + pad, left + pad + side, top + pad + side))
    return np.asarray(face, dtype=np.uint8)
