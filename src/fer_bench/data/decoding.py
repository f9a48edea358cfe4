"""Decoding: image files and CSV pixels to uint8 48x48 grey, once, with an on-disk cache keyed by the file list."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench import IMAGE_SIDE
from fer_bench.console import ProgressBar
from fer_bench.data.sources import Item
from fer_bench.errors import FerBenchError
from fer_bench.files import atomic_write, cache_dir

CACHE_VERSION = 2  # 2: EXIF orientation applied, 16-bit grey scaled instead of clipped
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


def load_or_decode(source: str, root: Path | None, items: list[Item], use_cache: bool, progress: bool):
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
            atomic_write(path, lambda tmp: np.savez(tmp, images=images, kept=kept,
                                                    skipped=np.array(json.dumps(skipped)), resized=resized))
        except (OSError, FerBenchError) as exc:
            print(f"warning: could not write the data cache ({exc}); continuing", file=sys.stderr)
    return images, kept, skipped, resized
