"""Keras callbacks fer-bench adds to `fit`. Imports Keras at the top: `train.py` imports it lazily."""

from __future__ import annotations

import sys
import time

import keras
import numpy as np


class BestWeights(keras.callbacks.Callback):
    """Remember the weights of the best epoch by validation accuracy, across fine-tune phases.

    Unlike EarlyStopping's `restore_best_weights`, one instance spans both phases, so a phase-2
    epoch never replaces a better phase-1 model.
    """

    def __init__(self, monitor: str = "val_accuracy"):
        super().__init__()
        self.monitor = monitor
        self.best = -np.inf
        self.best_epoch: int | None = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.best_weights = self.model.get_weights()

    def restore(self, model) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


class EpochRecorder(keras.callbacks.Callback):
    """Collect one row per epoch (metrics, learning rate, seconds) and print a compact line."""

    def __init__(self, phase: str, rows: list[dict]):
        super().__init__()
        self.phase = phase
        self.rows = rows
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        self.rows.append(row)
        print(f"epoch {row['epoch']:>3} [{self.phase}] loss {row.get('loss', float('nan')):.4f} "
              f"acc {row.get('accuracy', float('nan')):.4f} val_loss {row.get('val_loss', float('nan')):.4f} "
              f"val_acc {row.get('val_accuracy', float('nan')):.4f} lr {row['learning_rate']:.2e} "
              f"({row['seconds']:.0f}s)", file=sys.stderr, flush=True)
