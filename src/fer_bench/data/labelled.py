"""Another labelled dataset for a cross-dataset test: class folders, mapped to a run's classes by `--map`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_bench.data.dataset import Split
from fer_bench.data.decoding import decode_items
from fer_bench.data.sources import IMAGE_SUFFIXES, Item
from fer_bench.errors import ConfigError, DataError


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
