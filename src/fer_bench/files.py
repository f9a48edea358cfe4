"""Files: where fer-bench caches, and the one way it puts a finished file in place.

Every file a reader may see is written to a temporary name beside it and renamed into place
(`os.replace` is atomic on one file system), so no reader ever sees half a file. The temporary
name is unique to the process and the call: two processes filling the same cache, or two runs
writing side by side, never write into each other's temporary file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fer_bench.errors import FerBenchError

# A run folder's files that more than its writer reads: its state, its metrics (written last), and its Keras model.
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"


FOLDER_NAME_RULE = "one folder name (no '/', no '..', not empty)"


def is_folder_name(name: str) -> bool:
    """A run or evaluation name is one folder name: it never reaches outside the results folder."""
    return bool(name) and name not in (".", "..") and not any(sep in name for sep in "/\\") and name == name.strip()


def cache_dir() -> Path:
    """Decoded datasets, extracted features and compiled programs: `$FER_BENCH_CACHE` or ~/.cache/fer-bench."""
    return Path(os.environ.get("FER_BENCH_CACHE", Path.home() / ".cache" / "fer-bench"))


# Suffixes that libraries check in the file name they write to: Keras insists on `.keras` and `.weights.h5`.
KEPT_SUFFIXES = (".weights.h5",)


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other writer uses, with its suffix (Keras and numpy insist on theirs)."""
    path = Path(path)
    suffix = next((s for s in KEPT_SUFFIXES if path.name.endswith(s)), path.suffix)
    return path.with_name(f".{path.name[:-len(suffix) or None]}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` to fill a temporary file, then move it to `path` in one step.

    On failure the temporary file is removed and a FerBenchError names the file and the reason.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise FerBenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def put_folder(fill: Callable[[Path], Any], folder: Path) -> None:
    """Call `fill(staging)` to fill a new folder beside `folder`, then move it to `folder`, replacing what was there.

    A reader finds the old folder or the new one, whole: never a half-filled one. (Linux cannot swap two
    folders in one step, so for a moment neither name is taken; the old one is removed only after.)
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(folder).with_suffix(".staging")
    superseded = staging.with_suffix(".superseded")
    try:
        fill(staging)
        if folder.exists():
            os.replace(folder, superseded)
        os.replace(staging, folder)
    except OSError as exc:
        raise FerBenchError(f"cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        for leftover in (staging, superseded):
            shutil.rmtree(leftover, ignore_errors=True)
