"""What a person sees while fer-bench works: a quiet start-up, live progress on a terminal, plain lines in logs.

Live displays (bars, timers) go to the terminal only, never into a run's log.txt or a CI log:
those get one line per epoch or per finished step, written through `sys.stderr` as usual.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TextIO

# Lines TensorFlow's native libraries print while they load, whatever TF_CPP_MIN_LOG_LEVEL says
# (once per library, so several times per process). None of them asks the user to do anything.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation_placer.cc",
    "TF-TRT Warning: Could not find TensorRT",
)


def terminal() -> TextIO | None:
    """The terminal, or None when stderr goes to a file or a pipe (a log, CI)."""
    stream = sys.__stderr__
    try:
        return stream if stream is not None and stream.isatty() else None
    except ValueError:  # closed
        return None


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple[str, ...] = STARTUP_NOISE) -> Iterator[None]:
    """Collect what native code writes to file descriptor 2, then pass on every line but the `noise`."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no real stderr to filter (an embedded interpreter): leave it as it is
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(n in line for n in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def duration(seconds: float) -> str:
    """`42s`, or `3m07s` from a minute on."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressBar:
    """`label [#####.....] done/total  extra  ETA` redrawn in place on a terminal; silent elsewhere."""

    WIDTH = 20
    MIN_WIDTH = 5
    REDRAW_SECONDS = 0.2

    def __init__(self, total: int, label: str):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = terminal()
        self.start = time.perf_counter()
        self._drawn = 0.0

    def due(self, done: int) -> bool:
        """Whether `update(done)` would redraw: on a terminal, at most every REDRAW_SECONDS, and at the end."""
        return self.stream is not None and (done >= self.total or time.perf_counter() - self._drawn >= self.REDRAW_SECONDS)

    def update(self, done: int, extra: str = "", now: bool = False) -> None:
        """Redraw when due, or at once with `now` (after a plain line has wiped the bar)."""
        if not (self.due(done) or (now and self.stream is not None)):
            return
        now = self._drawn = time.perf_counter()
        elapsed = now - self.start
        eta = f"  ETA {duration(elapsed / done * (self.total - done))}" if 0 < done < self.total else ""
        line = self.line(done, extra, eta, _columns() - 1)
        self.stream.write("\r" + line.ljust(_columns() - 1))
        self.stream.flush()

    def line(self, done: int, extra: str, eta: str, room: int) -> str:
        """The bar's text in at most `room` columns: the bar narrows first, then the extras go, never the ETA."""
        head, counts = f"  {self.label} ", f" {done}/{self.total}"
        for tail in (f"  {extra}{eta}" if extra else eta, eta):
            width = min(self.WIDTH, room - len(head) - len(counts) - len(tail) - 2)
            if width >= self.MIN_WIDTH or tail == eta:
                break
        bar = ""
        if width >= self.MIN_WIDTH:
            filled = int(width * min(done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        return (head + bar + counts + tail)[:room]

    def close(self) -> None:
        """Wipe the bar so that the next plain line starts clean."""
        if self.stream is not None:
            self.stream.write("\r" + " " * (_columns() - 1) + "\r")
            self.stream.flush()


def _columns() -> int:
    try:
        columns = os.get_terminal_size(sys.__stderr__.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100
    return columns if columns > 0 else 100  # a terminal that reports no size (a bare pty)


@contextlib.contextmanager
def working(label: str) -> Iterator[None]:
    """A step that reports no progress of its own (an SVM fit): a live timer on a terminal, and
    a line when it starts and one when it ends, in logs and on the console."""
    print(f"  {label} ...", file=sys.stderr, flush=True)
    stream = terminal()
    start = time.perf_counter()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            stream.write(f"\r  {label} ... {duration(time.perf_counter() - start)}")
            stream.flush()

    ticker = threading.Thread(target=tick, daemon=True) if stream is not None else None
    if ticker is not None:
        ticker.start()
    try:
        yield
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
            stream.write("\r" + " " * (_columns() - 1) + "\r")
            stream.flush()
    print(f"  {label}: done in {duration(time.perf_counter() - start)}", file=sys.stderr, flush=True)
