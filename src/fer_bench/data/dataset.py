"""A dataset in memory: load, decode (or read the cache), subset and split it by the FER-2013 protocol.

Everything here is numpy; the tf.data pipeline lives in `pipeline`."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_bench.config import DataConfig
from fer_bench.data.decoding import load_or_decode
from fer_bench.data.sources import OFFICIAL_SPLITS, SOURCES, Item
from fer_bench.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")


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
              progress: bool = True) -> FerData:
    """Load, decode (or read the cache), subset and split a dataset as the config says (seeded by `cfg.seed`)."""
    source, root = resolve_source(cfg, data_dir)
    items = SOURCES[source](root)
    bad_rows = [(item.name, "malformed row (emotion is not 0-6)") for item in items if item.group == "bad"]
    items = [item for item in items if item.group != "bad" and item.emotion in classes]
    if cfg.max_per_class is not None:
        items = _cap_per_class(items, cfg.max_per_class, cfg.seed)
    if not items:
        raise DataError(f"no images of the classes {list(classes)} under {root}")
    images, kept, skipped, resized = load_or_decode(source, root, items, cfg.cache, progress)
    items = [item for item, keep in zip(items, kept) if keep]
    images = images[kept]
    if not items:
        raise DataError(f"none of the images under {root} could be read")
    labels = np.array([classes.index(item.emotion) for item in items], dtype=np.int64)
    splits, protocol = _split_assignments(items, labels, cfg.validation_fraction, cfg.seed)
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
