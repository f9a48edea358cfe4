"""Emotions of the faces in ordinary photos: detect, crop as FER-2013 frames faces, predict, annotate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fer_bench.data.decoding import open_image
from fer_bench.data.sources import IMAGE_SUFFIXES
from fer_bench.evaluation.predictors import Predictor
from fer_bench.evaluation.tta import predict_with_tta
from fer_bench.photos.detectors import DEFAULT_DETECTOR, faces_in, load_detector
from fer_bench.runs.artifacts import RunDirectory

BOX_KEYS = ("x", "y", "width", "height")  # a face's box: its top-left corner and its size, in photo pixels


def image_files(paths: list[Path]) -> list[Path]:
    """The given files, and the image files directly inside the given directories."""
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def predict_photos(predictor: Predictor, paths: list[Path], annotate_dir: Path | None = None,
                   tta: str = "none", detector: str = DEFAULT_DETECTOR) -> list[dict]:
    """Per image: its faces with emotion and top-3 probabilities, or the error that stopped it."""
    from PIL import UnidentifiedImageError

    detect = load_detector(detector)
    results = []
    for path in image_files(paths):
        try:
            photo = open_image(path, "RGB")
        except FileNotFoundError:
            results.append({"image": str(path), "error": "file not found"})
            continue
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            results.append({"image": str(path), "error": "not a readable image"})
            continue
        boxes, crops = faces_in(np.asarray(photo), detect, detector)
        faces = []
        if boxes:
            probabilities = predict_with_tta(predictor, crops, tta)
            for box, probs in zip(boxes, probabilities):
                top = np.argsort(probs)[::-1][:3]
                faces.append({"box": dict(zip(BOX_KEYS, map(int, box))), "emotion": predictor.classes[top[0]],
                              "top3": [[predictor.classes[i], round(float(probs[i]), 4)] for i in top]})
        result = {"image": str(path), "faces": faces}
        if annotate_dir is not None:
            result["annotated"] = str(_annotate(photo, faces, path, annotate_dir))
        results.append(result)
    return results


def _annotate(photo: Any, faces: list[dict], path: Path, out_dir: Path) -> Path:
    """Boxes and labels drawn to scale with the photo; a photo with no face says so on it."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(photo)
    side = max(photo.width, photo.height)
    line = max(2, side // 300)
    font = ImageFont.load_default(size=max(12, side // 40))  # about 2.5% of the photo, readable at any size
    red = (255, 64, 64)

    def label(x: int, y: int, text: str) -> None:
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        pad = max(2, (bottom - top) // 6)
        y = max(y - (bottom - top) - 2 * pad, 0)  # above the box, inside the photo
        box = draw.textbbox((x + pad, y + pad), text, font=font)
        draw.rectangle([box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad], fill=red)
        draw.text((x + pad, y + pad), text, fill=(255, 255, 255), font=font)

    for face in faces:
        x, y, w, h = (face["box"][key] for key in BOX_KEYS)
        draw.rectangle([x, y, x + w, y + h], outline=red, width=line)
        label(x, y, f"{face['emotion']} {face['top3'][0][1]:.0%}")
    if not faces:
        label(0, photo.height, "no face found")  # drawn at the bottom left
    target = out_dir / f"{path.stem}_annotated.png"
    RunDirectory(out_dir).create().write_image(target.name, photo)
    return target
