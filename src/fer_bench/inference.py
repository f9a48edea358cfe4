"""Using a trained model: predictors for saved runs, test-time augmentation, faces in ordinary photos,
and evaluation of a run on another labelled dataset."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench import EMOTIONS
from fer_bench.config import TTA_MODES
from fer_bench.artifacts import (METRICS_FILE, RunDirectory, environment_record, now, numbered_siblings,
                                 write_evaluation)
from fer_bench.data import (IMAGE_SIDE, IMAGE_SUFFIXES, data_notices, fingerprint_of, load_labelled_folder,
                            open_image, parse_class_map, scored_folder)
from fer_bench.errors import FerBenchError, RunError
from fer_bench.evaluate import SplitPredictions, single_class_warning
from fer_bench.faces import DEFAULT_DETECTOR, faces_in, load_detector

BOX_KEYS = ("x", "y", "width", "height")  # a face's box: its top-left corner and its size, in photo pixels
CROP_SIDE = 42  # ten-crop takes 42x42 of the 48x48 face, about 88% of its side
# The model that ships inside the package, laid out as a run folder (model.keras, metrics.json,
# config.yaml): `predict` and `evaluate` use it when no run is given. README says how it was trained.
SHIPPED_MODEL = Path(__file__).resolve().parent / "shipped"


@dataclass
class Predictor:
    """A trained model behind one surface: uint8 faces (n, 48, 48) in, class probabilities (n, k) out."""

    classes: tuple[str, ...]
    predict_proba: Callable[[np.ndarray], np.ndarray]
    source: str


def keras_predictor(model: Any, classes: tuple[str, ...], source: str = "in memory") -> Predictor:
    from fer_bench.train import predict_probabilities

    return Predictor(classes, lambda images: predict_probabilities(model, images), source)


def _load_keras(path: Path, classes: tuple[str, ...] | None) -> Predictor:
    from fer_bench.models import load_model

    model = load_model(path)
    outputs = int(model.output_shape[-1])
    if classes is None:
        if outputs != len(EMOTIONS):
            raise RunError(f"{path} has {outputs} outputs; pass its run directory so the class names are known")
        classes = EMOTIONS
    return keras_predictor(model, classes, str(path))


def _load_joblib(path: Path, classes: tuple[str, ...] | None) -> Predictor:
    from fer_bench.classical import load_feature_model

    model = load_feature_model(path)
    return Predictor(model.classes, model.predict_proba, str(path))


# Model files a run may hold, and how to load each.
PREDICTOR_LOADERS: dict[str, Callable[[Path, tuple[str, ...] | None], Predictor]] = {
    "model.keras": _load_keras,
    "model.joblib": _load_joblib,
}


def is_model_source(path: Path) -> bool:
    """Whether a path names a model (a run folder or a model file) rather than photos.

    A path that does not exist counts as a model unless it looks like an image, so that a mistyped
    run folder is reported as such instead of as a missing photo.
    """
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in PREDICTOR_LOADERS) or (path / METRICS_FILE).is_file()
    if path.is_file():
        return path.suffix in {Path(name).suffix for name in PREDICTOR_LOADERS}
    return path.suffix.lower() not in IMAGE_SUFFIXES


def load_predictor(run_or_model: Path | str) -> Predictor:
    """A predictor from a run directory (its model file and class names) or from a model file."""
    path = Path(run_or_model)
    if path.is_dir():
        model_file = next((path / name for name in PREDICTOR_LOADERS if (path / name).is_file()), None)
        if model_file is None:
            raise RunError(f"{path} holds no model file ({' or '.join(PREDICTOR_LOADERS)})")
    elif path.is_file():
        model_file = path
    else:
        raise RunError(f"no run directory or model file at {path}")
    loader = PREDICTOR_LOADERS.get(model_file.name) or PREDICTOR_LOADERS.get("model" + model_file.suffix)
    if loader is None:
        raise RunError(f"{model_file}: unknown model file type; expected {' or '.join(PREDICTOR_LOADERS)}")
    metrics_file = model_file.parent / METRICS_FILE
    classes = tuple(json.loads(metrics_file.read_text())["classes"]) if metrics_file.is_file() else None
    return loader(model_file, classes)


# --- test-time augmentation ------------------------------------------------------------------

def tta_views(images: np.ndarray, mode: str) -> list[np.ndarray]:
    """The views of each face averaged by test-time augmentation (each still uint8 48x48)."""
    if mode not in TTA_MODES:
        raise FerBenchError(f"--tta must be one of {list(TTA_MODES)}; got {mode!r}")
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images[:, :, ::-1]]
    from scipy.ndimage import zoom

    margin = IMAGE_SIDE - CROP_SIDE
    offsets = [(0, 0), (0, margin), (margin, 0), (margin, margin), (margin // 2, margin // 2)]
    views = []
    for top, left in offsets:
        crop = images[:, top:top + CROP_SIDE, left:left + CROP_SIDE].astype(np.float32)
        resized = zoom(crop, (1, IMAGE_SIDE / CROP_SIDE, IMAGE_SIDE / CROP_SIDE), order=1)
        view = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
        views.extend([view, view[:, :, ::-1]])
    return views


def predict_with_tta(predictor: Predictor, images: np.ndarray, mode: str) -> np.ndarray:
    """Class probabilities averaged over the test-time views."""
    return np.mean([predictor.predict_proba(view) for view in tta_views(images, mode)], axis=0)


# --- faces in photos -------------------------------------------------------------------------

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


# --- cross-dataset evaluation ----------------------------------------------------------------

def evaluation_directory(base: Path, name: str | None, default: str, overwrite: bool) -> RunDirectory:
    """`<base>/<name>/`: an earlier evaluation of that name is kept, never silently replaced.

    A default name that is taken gets a numbered sibling; an explicit one is an error unless `overwrite`.
    """
    wanted = RunDirectory(base / (name or default))
    if overwrite or not wanted.path.exists():
        return wanted
    if name is not None:
        raise RunError(f"{wanted.path} already holds an evaluation; pass --overwrite to replace it, or another --name")
    return RunDirectory(next(path for path in numbered_siblings(base, default) if not path.exists()))


def evaluate_on_dataset(run_path: Path, data_dir: Path, mapping: list[str] | str | None = None, tta: str = "none",
                        name: str | None = None, overwrite: bool = False,
                        eval_root: Path | None = None) -> tuple[Path, dict]:
    """Score a trained run on another class-per-folder dataset; write `<eval_root>/<name>/`.

    `eval_root` defaults to `<run>/eval`; the shipped model, which lives inside the installed
    package, is evaluated into a folder of the caller's choosing.
    """
    run_path = Path(run_path)
    if not (run_path / METRICS_FILE).is_file():
        raise RunError(f"{run_path} is not a finished run (no {METRICS_FILE})")
    # Where it goes is settled first: a name that is taken is refused before any image is read.
    out = evaluation_directory(Path(eval_root) if eval_root else run_path / "eval", name, Path(data_dir).resolve().name,
                               overwrite)
    predictor = load_predictor(run_path)
    classes = predictor.classes
    split, ignored, skipped = load_labelled_folder(Path(data_dir), classes, parse_class_map(mapping, classes))
    scored = scored_folder(Path(data_dir))
    print(f"scoring the {len(split)} images under {scored}"
          + (" (its train/ folder is not scored)" if scored != Path(data_dir) else ""), file=sys.stderr)
    if ignored:
        print(f"notice: ignored folders the model has no class for: {', '.join(ignored)}", file=sys.stderr)
    for line in data_notices(skipped):
        print(line, file=sys.stderr)
    name = out.path.name
    if out.path.exists():
        out.clear()  # --overwrite: nothing of the earlier evaluation stays to be mistaken for this one
    out.create()
    out.set_status("running", started=now())
    predictions = {"test": SplitPredictions(split.names, split.labels, predictor.predict_proba(split.images), None)}
    metrics = write_evaluation(out, classes, predictions, f"{run_path.name} on {name}")
    collapsed = single_class_warning(predictions["test"].predicted, classes, "scored")
    if collapsed:
        print(collapsed, file=sys.stderr)
    if tta != "none":
        tta_probs = predict_with_tta(predictor, split.images, tta)
        metrics["test_tta"] = {"mode": tta, **_scores(split.labels, tta_probs, classes)}
    record = {"run": f"{run_path.name} on {name}", "model": _run_model(run_path), "kind": "evaluation",
              "classes": list(classes), "data_fingerprint": fingerprint_of(split.images, split.labels, np.array(["test"] * len(split)), classes),
              "dataset": str(data_dir), "scored_folder": str(scored),
              "ignored_folders": ignored, "skipped": [{"item": i, "reason": r} for i, r in skipped], **metrics}
    out.write_json("environment.json", {**environment_record(), "finished": now()})
    out.write_json(METRICS_FILE, record)
    out.set_status("finished", finished=now())
    return out.path, record


def _scores(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict:
    from fer_bench.evaluate import classification_metrics

    return classification_metrics(labels, probabilities.argmax(axis=1), classes)


def _run_model(run_path: Path) -> str:
    try:
        return json.loads((run_path / METRICS_FILE).read_text()).get("model", "?")
    except (OSError, ValueError):
        return "?"
