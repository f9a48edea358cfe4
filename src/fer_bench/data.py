"""The data layer: find FER images, decode them once to uint8 48x48, split them by the FER-2013 protocol.

Everything here is numpy; the tf.data pipeline lives in `pipeline.py`. A source is a function in
`SOURCES` that lists labelled items (a file, or a CSV row) with the split its origin marks; decoding,
caching, class subsets and the split protocol are shared by all sources.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench import EMOTIONS
from fer_bench.config import DataConfig
from fer_bench.console import ProgressBar
from fer_bench.errors import ConfigError, DataError
from fer_bench.registry import Registry

IMAGE_SIDE = 48
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "validation", "test")
# The file-name prefix (image folders) or Usage value (CSV) that marks each official split.
OFFICIAL_SPLITS = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
CACHE_VERSION = 2  # 2: EXIF orientation applied, 16-bit grey scaled instead of clipped


@dataclass(frozen=True)
class Item:
    """One labelled image before decoding: a file, or the pixels of a CSV row."""

    name: str  # path relative to the source, or "row:<n>" for CSV
    emotion: str
    split: str | None  # "train" / "validation" / "test" where the source marks it, else None
    group: str  # "train" or "test": which part of the source it came from
    path: Path | None = None
    pixels: str | None = None


@dataclass
class Split:
    """One split held in memory: images (n, 48, 48) uint8, labels (n,) int indices into the classes."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FerData:
    """A decoded dataset: the three splits, their classes, and the record of how they were made."""

    classes: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    fingerprint: str
    source: str
    protocol: str  # "official" (FER-2013 marks) or "stratified" (seeded split of train)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resized: int = 0

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    @functools.cached_property
    def train_hashes(self) -> set[bytes]:
        """Pixel hashes of the training images, computed once for every split that asks."""
        return set(image_hashes(self.train.images))

    def unique_mask(self, split_name: str) -> np.ndarray:
        """True for the images of `split_name` that have no pixel-identical copy in train."""
        return np.array([h not in self.train_hashes for h in image_hashes(self.split(split_name).images)], dtype=bool)

    def record(self) -> dict:
        """What a run stores about its data."""
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "protocol": self.protocol,
            "classes": list(self.classes),
            "split_sizes": {s: len(self.split(s)) for s in SPLITS},
            "class_counts": {s: class_counts(self.split(s).labels, self.classes) for s in SPLITS},
            "skipped": [{"item": n, "reason": r} for n, r in self.skipped],
            "resized_on_load": self.resized,
        }


def class_counts(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


def image_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]


# --- sources ----------------------------------------------------------------------------------

SOURCES = Registry("data source")  # name -> function(path) -> list[Item]


def _emotion_of_folder(folder: Path) -> str:
    name = folder.name.lower()
    if name not in EMOTIONS:
        if (folder / "train").is_dir() or (folder / "test").is_dir():
            raise DataError(f"{folder} holds the dataset's train/ and test/ folders: pass --data-dir {folder}")
        raise DataError(f"{folder}: unknown class folder {folder.name!r}; expected folders named {list(EMOTIONS)}")
    return name


def _official_split(file_name: str) -> str | None:
    for prefix, split in OFFICIAL_SPLITS.items():
        if file_name.startswith(prefix):
            return split
    return None


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(folder: Path, root: Path, group: str) -> list[Item]:
    emotion = _emotion_of_folder(folder)
    return [
        Item(name=str(p.relative_to(root)), emotion=emotion, split=_official_split(p.name), group=group, path=p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]


@SOURCES.register("folder")
def folder_source(root: Path) -> list[Item]:
    """Kaggle layout (`train/<class>/`, `test/<class>/`) or one folder per class (no test part)."""
    if root.is_file():
        raise DataError(f"{root} is a file; give the data directory (train/ and test/) or a fer2013.csv")
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    groups = {g: root / g for g in ("train", "test") if (root / g).is_dir()}
    if not groups:
        groups = {"train": root}
    items: list[Item] = []
    for group, folder in groups.items():
        for class_folder in _class_folders(folder):
            items.extend(_list_images(class_folder, root, group))
    if not items:
        raise DataError(f"no images found under {root} (expected train/<class>/*.jpg and test/<class>/*.jpg)")
    return items


@SOURCES.register("csv")
def csv_source(path: Path) -> list[Item]:
    """The original `fer2013.csv`: columns emotion (0-6), pixels (2304 integers), Usage."""
    if path.is_dir():
        path = path / "fer2013.csv"
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    items = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"emotion", "pixels"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected emotion,pixels,Usage")
        for row_number, row in enumerate(reader, start=2):
            emotion = (row.get("emotion") or "").strip()
            if not emotion.isdigit() or int(emotion) >= len(EMOTIONS):
                items.append(Item(name=f"row:{row_number}", emotion="", split=None, group="bad", pixels=None))
                continue
            usage = (row.get("Usage") or "").strip()
            split = OFFICIAL_SPLITS.get(usage)
            group = "test" if split in ("validation", "test") else "train"
            items.append(Item(name=f"row:{row_number}", emotion=EMOTIONS[int(emotion)], split=split,
                              group=group, pixels=row.get("pixels") or ""))
    if not items:
        raise DataError(f"{path}: no rows")
    return items


@SOURCES.register("kaggle")
def kaggle_source(root: Path | None = None) -> list[Item]:
    """Download `msambare/fer2013` with kagglehub (cached by kagglehub) and read it as a folder."""
    return folder_source(download_fer2013())


def download_fer2013() -> Path:
    """Fetch FER-2013 through kagglehub; on any failure say how to pass the data instead."""
    try:
        import kagglehub  # here, not at top: only this path needs it

        return Path(kagglehub.dataset_download("msambare/fer2013"))
    except Exception as exc:  # noqa: BLE001 - network, auth and API errors all end the same way
        # Only the exception's class: its message can carry URLs or account details.
        raise DataError(
            f"could not download FER-2013 with kagglehub ({exc.__class__.__name__}); download it and pass "
            "--data-dir DIR (the train/ and test/ folders, or fer2013.csv)"
        ) from None


def check_data_config(cfg: DataConfig) -> None:
    """What the schema cannot know: the data sources are this module's registry."""
    if cfg.source not in ("auto", *SOURCES):
        raise ConfigError(f"data.source must be one of {['auto', *SOURCES]}; got {cfg.source!r}")


def resolve_source(cfg: DataConfig, data_dir: str | Path | None = None) -> tuple[str, Path | None]:
    """Pick the source name and path from the config and the command line (which wins)."""
    path = Path(data_dir) if data_dir is not None else (Path(cfg.path) if cfg.path else None)
    check_data_config(cfg)
    source = cfg.source
    if source == "auto":
        if path is None:
            source = "kaggle"
        elif path.suffix.lower() == ".csv" or (path.is_dir() and (path / "fer2013.csv").is_file()
                                               and not (path / "train").is_dir()):
            source = "csv"
        else:
            source = "folder"
    if path is not None and not path.exists():
        raise DataError(f"data path not found: {path}")
    if source != "kaggle" and path is None:
        raise ConfigError(f"data.source {source!r} needs a path: set data.path or pass --data-dir")
    return source, path


# --- decoding and caching --------------------------------------------------------------------

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's modes for 16- and 32-bit grey pixels


def open_image(path: Path, mode: str) -> Any:
    """An image file as a PIL image in `mode` ("L" or "RGB"), upright and with its full range of grey.

    A phone stores a photo taken sideways as it was shot, with an EXIF Orientation tag saying how to turn
    it; Pillow ignores the tag unless asked. A 16-bit PNG converted straight to 8 bits clips at 255 and
    reads as white, so wide grey pixels are scaled to 0-255 first.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        img = ImageOps.exif_transpose(opened)
        img.load()
    if img.mode in WIDE_MODES:
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode != "I" or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 65535 -> 255
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    return img.convert(mode)


def _decode_file(path: Path) -> tuple[np.ndarray | None, bool, str]:
    """(image, was_resized, error): grey 48x48 uint8, or None with the reason."""
    from PIL import Image, UnidentifiedImageError  # here: Pillow is only needed when decoding

    try:
        img = open_image(path, "L")
        resized = img.size != (IMAGE_SIDE, IMAGE_SIDE)
        if resized:
            img = img.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8), resized, ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "empty file" if path.stat().st_size == 0 else f"unreadable image ({exc.__class__.__name__})"
        return None, False, reason


def _decode_pixels(pixels: str | None) -> tuple[np.ndarray | None, str]:
    if pixels is None:
        return None, "malformed row (emotion is not 0-6)"
    try:
        values = np.array(pixels.split(), dtype=np.int64)
    except ValueError:
        return None, "malformed row (pixels are not integers)"
    if values.size != IMAGE_SIDE * IMAGE_SIDE:
        return None, f"malformed row ({values.size} pixels, expected {IMAGE_SIDE * IMAGE_SIDE})"
    if values.min() < 0 or values.max() > 255:
        return None, "malformed row (pixels outside 0-255)"
    return values.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE), ""


def decode_items(items: list[Item], progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], int]:
    """Decode items into (images, kept_mask, skipped, resized_count); skipped items are listed, never dropped silently."""
    images = np.zeros((len(items), IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    kept = np.zeros(len(items), dtype=bool)
    skipped: list[tuple[str, str]] = []
    resized = 0
    bar = ProgressBar(len(items), "decoding") if progress else None
    for i, item in enumerate(items):
        if item.path is not None:
            image, was_resized, reason = _decode_file(item.path)
            resized += was_resized
        else:
            image, reason = _decode_pixels(item.pixels)
        if image is None:
            skipped.append((item.name, reason))
            continue
        images[i] = image
        kept[i] = True
        if bar is not None:
            bar.update(i + 1)
            if bar.stream is None and (i + 1) % 5000 == 0:
                print(f"  decoded {i + 1}/{len(items)} images", file=sys.stderr, flush=True)
    if bar is not None:
        bar.close()
    return images, kept, skipped, resized


def cache_dir() -> Path:
    return Path(os.environ.get("FER_BENCH_CACHE", Path.home() / ".cache" / "fer-bench"))


def _listing_key(source: str, root: Path | None, items: list[Item]) -> str:
    """A cheap key for the cache: the item list with file sizes and modification times."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{source}|{root}".encode())
    for item in items:
        if item.path is not None:
            stat = item.path.stat()
            digest.update(f"{item.name}|{item.emotion}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        else:
            digest.update(f"{item.name}|{item.emotion}|{item.split}|{hash_text(item.pixels)}\n".encode())
    return digest.hexdigest()[:24]


def hash_text(text: str | None) -> str:
    return hashlib.blake2b((text or "").encode(), digest_size=8).hexdigest()


def _load_or_decode(source: str, root: Path | None, items: list[Item], use_cache: bool, progress: bool):
    key = _listing_key(source, root, items)
    path = cache_dir() / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                skipped = json.loads(str(cached["skipped"]))
                return cached["images"], cached["kept"], [tuple(s) for s in skipped], int(cached["resized"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    if progress:
        print(f"decoding {len(items)} images (cached afterwards in {cache_dir()})", file=sys.stderr, flush=True)
    images, kept, skipped, resized = decode_items(items, progress)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, images=images, kept=kept, skipped=np.array(json.dumps(skipped)), resized=resized)
            os.replace(tmp, path)
        except OSError as exc:
            print(f"warning: could not write the data cache ({exc.strerror}); continuing", file=sys.stderr)
    return images, kept, skipped, resized


# --- splitting -------------------------------------------------------------------------------

def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, stratified `fraction` of `labels` (at least one per class that has two)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(len(members) * fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def _cap_per_class(items: list[Item], max_per_class: int, seed: int) -> list[Item]:
    """A seeded, stratified subset: at most `max_per_class` items per (part of the source, official split, class)."""
    rng = np.random.default_rng(seed)
    by_cell: dict[tuple, list[Item]] = {}
    for item in items:
        by_cell.setdefault((item.group, item.split, item.emotion), []).append(item)
    kept: list[Item] = []
    for cell in sorted(by_cell, key=str):
        members = by_cell[cell]
        order = rng.permutation(len(members))[:max_per_class]
        kept.extend(members[i] for i in sorted(order))
    return kept


SPLIT_MARKS = "file names that start Training_, PublicTest_ or PrivateTest_ (a CSV's Usage column alike)"


def _split_assignments(items: list[Item], labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, str]:
    """Each item's split: the source's official marks, or a seeded, stratified split where it has none.

    A source that marks the official split keeps it: an item without a mark beside marked ones is an
    error that names it, never a silent switch to a random split (one stray photo would change the protocol).
    """
    marked = [item.split for item in items]
    if any(m is not None for m in marked):
        unmarked = [item.name for item in items if item.split is None]
        if unmarked:
            shown = ", ".join(unmarked[:3]) + (f" and {len(unmarked) - 3} more" if len(unmarked) > 3 else "")
            raise DataError(f"{len(unmarked)} of {len(items)} images carry no FER-2013 split mark ({SPLIT_MARKS}) "
                            f"beside images that do: {shown}; rename or remove them, so that the official split holds")
        missing = [name for name, split in OFFICIAL_SPLITS.items() if split not in marked]
        if missing:
            raise DataError(f"the official split has no {' or '.join(missing)} images; the FER-2013 protocol needs "
                            f"all three of {list(OFFICIAL_SPLITS)}")
        return np.array(marked), "official"
    groups = np.array([item.group for item in items])
    assignment = np.where(groups == "test", "test", "train").astype(object)
    train_idx = np.flatnonzero(assignment == "train")
    if "test" not in set(groups):
        # A single class-per-folder pool: hold out a stratified test part first.
        held = train_idx[stratified_indices(labels[train_idx], fraction, seed + 1)]
        assignment[held] = "test"
        train_idx = np.flatnonzero(assignment == "train")
    val = train_idx[stratified_indices(labels[train_idx], fraction, seed)]
    assignment[val] = "validation"
    return assignment.astype(str), "stratified"


def fingerprint_of(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, classes: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    digest.update(",".join(classes).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    digest.update("".join(s[0] for s in splits).encode())
    return digest.hexdigest()[:16]


def load_data(cfg: DataConfig, classes: tuple[str, ...], data_dir: str | Path | None = None,
              seed: int = 42, progress: bool = True) -> FerData:
    """Load, decode (or read the cache), subset and split a dataset as the config says."""
    source, root = resolve_source(cfg, data_dir)
    items = SOURCES[source](root)
    bad_rows = [(item.name, "malformed row (emotion is not 0-6)") for item in items if item.group == "bad"]
    items = [item for item in items if item.group != "bad" and item.emotion in classes]
    if cfg.max_per_class is not None:
        items = _cap_per_class(items, cfg.max_per_class, seed)
    if not items:
        raise DataError(f"no images of the classes {list(classes)} under {root}")
    images, kept, skipped, resized = _load_or_decode(source, root, items, cfg.cache, progress)
    items = [item for item, keep in zip(items, kept) if keep]
    images = images[kept]
    if not items:
        raise DataError(f"none of the images under {root} could be read")
    labels = np.array([classes.index(item.emotion) for item in items], dtype=np.int64)
    splits, protocol = _split_assignments(items, labels, cfg.validation_fraction, seed)
    parts = {}
    for split in SPLITS:
        idx = np.flatnonzero(splits == split)
        if len(idx) == 0:
            raise DataError(f"the {split} split is empty after loading {root}; it needs images of {list(classes)}")
        parts[split] = Split(images[idx], labels[idx], [items[i].name for i in idx])
    return FerData(
        classes=classes, fingerprint=fingerprint_of(images, labels, splits, classes),
        source=f"{source}:{root}" if root else source, protocol=protocol,
        skipped=skipped + bad_rows, resized=resized, **parts,
    )


SHOWN_SKIPPED = 5


def data_notices(skipped: list[tuple[str, str]], resized: int = 0) -> list[str]:
    """What a person should know about a load: images converted, and items skipped (a count and the first few)."""
    lines = [f"notice: {resized} images were not 48x48 grey and were converted on load"] if resized else []
    if skipped:
        lines.append(f"warning: skipped {len(skipped)} unreadable or malformed item{'s' * (len(skipped) > 1)} "
                     "(all listed in environment.json, data.skipped):")
        lines += [f"  {name}: {reason}" for name, reason in skipped[:SHOWN_SKIPPED]]
        if len(skipped) > SHOWN_SKIPPED:
            lines.append(f"  ... and {len(skipped) - SHOWN_SKIPPED} more")
    return lines


# --- inspection ------------------------------------------------------------------------------

def inspect_data(data: FerData) -> dict:
    """Split sizes, class counts, and the images worth a look: blank ones and duplicates across splits."""
    report = data.record()
    hashes = {s: image_hashes(data.split(s).images) for s in SPLITS}
    report["duplicates_of_train"] = {s: int((~data.unique_mask(s)).sum()) for s in ("validation", "test")}
    report["duplicates_within"] = {s: len(hashes[s]) - len(set(hashes[s])) for s in SPLITS}
    report["blank_images"] = {
        s: [data.split(s).names[i] for i in _blank_indices(data.split(s).images)] for s in SPLITS
    }
    return report


def _blank_indices(images: np.ndarray) -> Iterable[int]:
    """Images with (almost) no variation: all-black, all-white or flat frames in FER-2013."""
    spread = images.reshape(len(images), -1).std(axis=1)
    return np.flatnonzero(spread < 1.0).tolist()



def parse_class_map(texts: list[str] | str | None, classes: tuple[str, ...]) -> dict[str, str]:
    """Parse `--map` values (`anger=angry,sadness=sad`, as often as given) into {folder name: class}.

    Every target must be one of `classes`; a folder mapped to two different classes is an error.
    """
    if isinstance(texts, str):
        texts = [texts]
    mapping: dict[str, str] = {}
    pairs = [p.strip() for text in texts or [] for p in text.split(",")]
    for pair in filter(None, pairs):
        source, sep, target = pair.partition("=")
        source, target = source.strip().lower(), target.strip().lower()
        if not sep or not source or not target:
            raise ConfigError(f"--map expects FOLDER=CLASS pairs separated by commas; got {pair!r}")
        if target not in classes:
            raise ConfigError(f"--map {pair}: unknown class {target!r}; the run's classes are {list(classes)}")
        if mapping.get(source, target) != target:
            raise ConfigError(f"--map maps folder {source!r} twice: to {mapping[source]!r} and to {target!r}")
        mapping[source] = target
    return mapping


def scored_folder(root: Path) -> Path:
    """The part of a dataset a cross-dataset test scores: its test/ folder where it has train/ and test/, else all."""
    return root / "test" if (root / "test").is_dir() and (root / "train").is_dir() else root


def load_labelled_folder(root: Path, classes: tuple[str, ...], mapping: dict[str, str],
                         progress: bool = False) -> tuple[Split, list[str], list[tuple[str, str]]]:
    """All images under `root` whose folder name (mapped) is one of `classes`, for a cross-dataset test.

    Returns the split, the folder names ignored (classes the model does not know), and skipped files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    files = sorted(p for p in scored_folder(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    folders = {path.parent.name.lower() for path in files}
    unmatched = sorted(set(mapping) - folders)
    if unmatched:
        raise DataError(f"--map {unmatched[0]}={mapping[unmatched[0]]}: no folder of images named {unmatched[0]!r} "
                        f"under {root} (folders found: {sorted(folders) or 'none'})")
    items, ignored = [], set()
    for path in files:
        folder = path.parent.name.lower()
        emotion = mapping.get(folder, folder)
        if emotion in classes:
            items.append(Item(name=str(path.relative_to(root)), emotion=emotion, split="test", group="test", path=path))
        else:
            ignored.add(path.parent.name)
    if not items:
        raise DataError(f"no images of the classes {list(classes)} under {root} "
                        f"(folders found: {sorted(ignored) or 'none'}; map them with --map FOLDER=CLASS)")
    images, kept, skipped, _ = decode_items(items, progress)
    items = [item for item, keep in zip(items, kept) if keep]
    labels = np.array([classes.index(item.emotion) for item in items], dtype=np.int64)
    return Split(images[kept], labels, [item.name for item in items]), sorted(ignored), skipped
