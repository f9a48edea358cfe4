"""How often each face detector finds a face, and how to crop its box so the face looks like FER-2013's.

    python scripts/detectors.py --data-dir ../shared/fer2013 --out results/benchmark [--per-class 30]

FER-2013 PrivateTest faces (a seeded sample, the same number per class) are upscaled 4x to 192 px and
pasted at a seeded random place into a 480x360 photo of blurred noise, so the true face square is
known. For each detector this measures: how often it finds the face (a box covering at least half of
the true square, IoU >= 0.5), the seconds per photo, and the square crop, relative to its box, that
recovers the true square (medians of side / box height and of the centre's offset): the `Framing`
that fer_bench/faces.py uses. With --model it also scores that model on the sample three ways: on
the 48x48 faces as stored, on the detector's crops framed that way, and on its raw boxes.

Writes detectors.json and detectors.md. A pasted face is easier than a real photo (one face, plain
surroundings): read the detection rates as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCALE, CANVAS = 4, (480, 360)


def sample(data_dir: Path, per_class: int, seed: int):
    from fer_bench import EMOTIONS
    from fer_bench.config import DataConfig
    from fer_bench.data.dataset import load_data

    test = load_data(DataConfig(), EMOTIONS, data_dir, progress=False).test
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(test.labels == k))[:per_class]
                                     for k in range(len(EMOTIONS))]))
    return test.images[chosen], test.labels[chosen], [test.names[i] for i in chosen]


def photo(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An RGB photo holding the face, and the true square (left, top, side)."""
    from PIL import Image, ImageFilter

    side = face.shape[0] * SCALE
    noise = Image.fromarray(rng.integers(40, 220, size=(CANVAS[1], CANVAS[0]), dtype=np.uint8))
    canvas = noise.filter(ImageFilter.GaussianBlur(6)).convert("RGB")
    left, top = int(rng.integers(0, CANVAS[0] - side)), int(rng.integers(0, CANVAS[1] - side))
    canvas.paste(Image.fromarray(face).resize((side, side), Image.BICUBIC).convert("RGB"), (left, top))
    return np.asarray(canvas), (left, top, side)


def iou(box, square) -> float:
    x, y, w, h = box
    left, top, side = square
    across = max(0, min(x + w, left + side) - max(x, left))
    down = max(0, min(y + h, top + side) - max(y, top))
    overlap = across * down
    return overlap / (w * h + side * side - overlap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "fer2013")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmark")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--model", type=Path, help="a run folder (or the shipped model's folder) to score the crops with")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from fer_bench.backends import import_keras
    from fer_bench.photos.detectors import DETECTORS, Framing, crop_face, framing

    import_keras()
    faces, labels, names = sample(args.data_dir, args.per_class, args.seed)
    rng = np.random.default_rng(args.seed)
    photos = [photo(face, rng) for face in faces]
    predictor = None
    if args.model:
        from fer_bench.evaluation.predictors import load_predictor

        predictor = load_predictor(args.model)
    report = {"faces": len(faces), "per_class": args.per_class, "source": "FER-2013 PrivateTest, upscaled 4x and "
              "pasted into 480x360 blurred noise", "model": str(args.model) if args.model else None, "detectors": {}}
    if predictor is not None:
        report["accuracy_as_stored"] = float((predictor.predict_proba(faces).argmax(axis=1) == labels).mean())
    for name in sorted(DETECTORS):
        detect = DETECTORS[name]()
        detect(photos[0][0])  # warm-up: loading and the first call are not per-photo costs
        found, boxes, seconds = [], [], []
        for rgb, square in photos:
            tick = time.perf_counter()
            candidates = detect(rgb)
            seconds.append(time.perf_counter() - tick)
            best = max(candidates, key=lambda b: iou(b, square), default=None)
            found.append(best is not None and iou(best, square) >= 0.5)
            boxes.append(best)
        hits = [i for i, ok in enumerate(found) if ok]
        side = [photos[i][1][2] / boxes[i][3] for i in hits]
        shift_x = [(photos[i][1][0] + photos[i][1][2] / 2 - boxes[i][0] - boxes[i][2] / 2) / boxes[i][2] for i in hits]
        shift_y = [(photos[i][1][1] + photos[i][1][2] / 2 - boxes[i][1] - boxes[i][3] / 2) / boxes[i][3] for i in hits]
        measured = Framing(*(round(float(np.median(v)), 3) for v in (side, shift_x, shift_y)))
        entry = {"found": len(hits), "found_share": len(hits) / len(found),
                 "found_per_class": {int(k): int(sum(found[i] for i in np.flatnonzero(labels == k))) for k in np.unique(labels)},
                 "seconds_per_photo": round(float(np.median(seconds)), 4),
                 "framing": measured.__dict__, "framing_in_use": framing(name).__dict__}
        if predictor is not None and hits:
            grey = [np.asarray(photos[i][0].mean(axis=2).round().astype(np.uint8)) for i in hits]
            DETECTORS.facts[name]["framing"] = measured  # score the crop this run measured
            framed = np.stack([crop_face(g, boxes[i], name) for g, i in zip(grey, hits)])
            raw = np.stack([crop_face(g, boxes[i], None) for g, i in zip(grey, hits)])
            truth = labels[hits]
            entry["accuracy_framed"] = float((predictor.predict_proba(framed).argmax(axis=1) == truth).mean())
            entry["accuracy_raw_box"] = float((predictor.predict_proba(raw).argmax(axis=1) == truth).mean())
            entry["accuracy_as_stored_on_found"] = float(
                (predictor.predict_proba(faces[hits]).argmax(axis=1) == truth).mean())
        report["detectors"][name] = entry
        print(f"{name}: found {len(hits)}/{len(found)}, {entry['seconds_per_photo']}s per photo, framing {measured}",
              file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detectors.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "detectors.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    scored = report.get("model") is not None
    header = ["detector", "faces found", "s per photo", "framing (side/box h, dx/box w, dy/box h)"]
    if scored:
        header += ["accuracy: framed crop", "raw box", "48x48 as stored (same faces)"]
    lines = [f"Face detectors on {report['faces']} {report['source']} ({report['per_class']} per class).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in report["detectors"].items():
        f = entry["framing"]
        row = [name, f"{entry['found']}/{report['faces']} ({entry['found_share']:.1%})", f"{entry['seconds_per_photo']:.3f}",
               f"{f['scale']}, {f['shift_x']}, {f['shift_y']}"]
        if scored:
            row += [f"{entry.get('accuracy_framed', float('nan')):.4f}", f"{entry.get('accuracy_raw_box', float('nan')):.4f}",
                    f"{entry.get('accuracy_as_stored_on_found', float('nan')):.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    if scored:
        lines += ["", f"Model: {report['model']}; accuracy on all {report['faces']} faces as stored: "
                      f"{report['accuracy_as_stored']:.4f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
