"""Keras callbacks fer-bench adds to `fit`. Imports Keras at the top: `train.py` imports it lazily."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

from fer_bench.console import ProgressBar
from fer_bench.errors import RunError
from fer_bench.files import atomic_write


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


class ValidateAveragedWeights(keras.callbacks.Callback):
    """Validate the optimizer's moving average of the weights (`train.ema_momentum`), not the last step's.

    The average goes into the model as validation begins, so that the epoch's val_accuracy and the
    weights BestWeights keeps are the average's; the model's state as training left it comes back at
    the end of the epoch, after the callbacks before this one, and training goes on from it. Keras
    averages the trainable weights only: BatchNormalization's moving statistics belong to the raw
    weights (with them the average of the first epochs predicted one class), so they are measured
    again for the average, on `calibration` batches (training images, as the model takes them), as SWA does.
    """

    def __init__(self, calibration: list[np.ndarray]):
        super().__init__()
        self.calibration = calibration
        self._state: list | None = None

    def on_test_begin(self, logs=None):
        # The non-trainable variables hold the moving statistics and the dropout seeds: both go back afterwards.
        variables = self.model.trainable_variables + self.model.non_trainable_variables
        self._state = [keras.ops.convert_to_numpy(v.value) for v in variables]
        self.model.optimizer.finalize_variable_values(self.model.trainable_variables)
        for variable in self.model.trainable_variables:
            # On JAX that assignment shares the average's buffer, which the evaluation then frees: copy it.
            variable.assign(keras.ops.copy(variable.value))
        self._measure_batch_statistics()

    def _measure_batch_statistics(self) -> None:
        """Moving statistics = the mean of the calibration batches' statistics, as PyTorch's swa_utils.update_bn.

        In training mode a BatchNormalization layer moves its statistics by `momentum`; i / (i + 1) at
        the i-th batch (from 0) makes them the running mean over the batches.
        """
        norms = list(_batch_normalizations(self.model))
        momenta = [layer.momentum for layer in norms]
        try:
            for index, batch in enumerate(self.calibration):
                for layer in norms:
                    layer.momentum = index / (index + 1)
                self.model(batch, training=True)
        finally:
            for layer, momentum in zip(norms, momenta):
                layer.momentum = momentum

    def on_epoch_end(self, epoch, logs=None):
        if self._state is not None:
            variables = self.model.trainable_variables + self.model.non_trainable_variables
            for variable, value in zip(variables, self._state):
                variable.assign(value)
            self._state = None


def _batch_normalizations(layer):
    """The BatchNormalization layers that train, nested models (a backbone) searched too."""
    for sublayer in getattr(layer, "layers", []):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            if sublayer.trainable:
                yield sublayer
        else:
            yield from _batch_normalizations(sublayer)


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


class FeedEpoch(keras.callbacks.Callback):
    """Point the training feed at each epoch as it begins (first among the callbacks)."""

    def __init__(self, feed):
        super().__init__()
        self.feed = feed  # pipeline.EpochFeed

    def on_epoch_begin(self, epoch, logs=None):
        self.feed.set_epoch(epoch)


class BatchProgress(keras.callbacks.Callback):
    """A live bar through each epoch, on a terminal only: logs get EpochRecorder's one line per epoch."""

    def __init__(self, phase: str, steps: int, last_epoch: int):
        super().__init__()
        self.phase = phase
        self.steps = steps
        self.last_epoch = last_epoch
        self.bar: ProgressBar | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = ProgressBar(self.steps, f"epoch {epoch + 1}/{self.last_epoch} [{self.phase}]")

    def on_train_batch_end(self, batch, logs=None):
        # With several steps per execution Keras reports the last step of each; the final one may overshoot.
        done = min(batch + 1, self.steps)
        if not self.bar.due(done):
            return  # reading the loss waits for the device to finish: only when the bar is redrawn
        logs = logs or {}
        extra = "  ".join(f"{short} {float(logs[k]):.4f}" for k, short in (("loss", "loss"), ("accuracy", "acc"))
                          if k in logs)
        self.bar.update(done, extra)

    def on_test_begin(self, logs=None):
        if self.bar is not None:
            self.bar.update(self.steps, "validating")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


def _save_arrays(path: Path, arrays: list) -> None:
    atomic_write(path, lambda tmp: np.savez(tmp, *arrays))


def _load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays `_save_arrays` wrote, in their order."""
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


class Checkpoint(keras.callbacks.Callback):
    """After every epoch, save all that training needs to continue exactly where it stopped.

    Keras' BackupAndRestore saves the weights and optimizer, but not the dropout seed generators,
    the counters of EarlyStopping and ReduceLROnPlateau, nor our history and best weights; a run
    resumed with it drifts from an uninterrupted one. This saves them all, and writes `state.json`
    last (atomically), naming the files of its epoch: a kill at any moment leaves the previous
    complete state in force.
    """

    STATE = "state.json"
    COUNTERS = ("wait", "best", "stopped_epoch", "cooldown_counter")

    def __init__(self, directory: Path, phase: str, history: list[dict], best: BestWeights,
                 stateful: list[keras.callbacks.Callback], completed: list[str],
                 seconds: dict[str, float] | None = None, seconds_before: float = 0.0):
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.phase = phase
        self.history = history
        self.best = best
        self.stateful = stateful
        self.completed = completed
        self.seconds = seconds if seconds is not None else {}  # training seconds of the finished phases
        self.seconds_before = seconds_before  # of this phase, spent before it was last interrupted
        self._fit_start = time.perf_counter()

    @classmethod
    def read(cls, directory: Path) -> dict | None:
        path = Path(directory) / cls.STATE
        return json.loads(path.read_text()) if path.is_file() else None

    # -- saving --------------------------------------------------------------------------------

    def _seed_variables(self) -> list:
        return [v for v in self.model.non_trainable_variables if "seed_generator_state" in v.path]

    def _training_variables(self) -> list:
        """The model's variables, then the optimizer's (its step count, slots and loss scale), in a fixed order."""
        return [*self.model.variables, *self.model.optimizer.variables]

    def _write_state(self, state: dict) -> None:
        atomic_write(self.directory / self.STATE, lambda tmp: tmp.write_text(json.dumps(state)))
        keep = {state.get("weights"), state.get("seeds"), state.get("model_weights"), state["best"].get("file"), self.STATE}
        for path in self.directory.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def _common_state(self, tag: str) -> dict:
        best_file = None
        if self.best.best_weights is not None:
            best_file = f"best-{self.best.best_epoch}.npz"
            if not (self.directory / best_file).is_file():
                _save_arrays(self.directory / best_file, self.best.best_weights)
        seeds = f"{tag}-seeds.npy"
        values = np.array([np.asarray(v.numpy()) for v in self._seed_variables()])
        atomic_write(self.directory / seeds, lambda tmp: np.save(tmp, values))
        return {"completed": list(self.completed), "history": list(self.history), "seeds": seeds,
                "seconds": dict(self.seconds),
                "best": {"value": self.best.best, "epoch": self.best.best_epoch, "file": best_file}}

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        tag = f"{self.phase}-{epoch + 1}"
        weights = f"{tag}-training.npz"
        # The arrays themselves: Keras' save_weights walks every layer's saveable tree, which took a MobileNetV2
        # 0.5 CPU-s an epoch against 0.1 here (and loading 0.8 against 0.2).
        _save_arrays(self.directory / weights, [np.asarray(v.numpy()) for v in self._training_variables()])
        self._write_state({
            **self._common_state(tag), "phase": self.phase, "epoch": epoch + 1, "weights": weights,
            "stopped": bool(self.model.stop_training),
            "elapsed": round(self.seconds_before + time.perf_counter() - self._fit_start, 2),
            "callbacks": [{k: getattr(cb, k) for k in self.COUNTERS if hasattr(cb, k)} for cb in self.stateful],
        })

    def complete_phase(self) -> None:
        """Mark this phase done; keep the model's weights (not the optimizer's) for the next one."""
        self.completed.append(self.phase)
        weights = f"{self.phase}-end.npz"
        _save_arrays(self.directory / weights, self.model.get_weights())
        self._write_state({**self._common_state(f"{self.phase}-end"), "phase": None, "model_weights": weights})

    # -- restoring -----------------------------------------------------------------------------

    def restore_shared(self, state: dict) -> None:
        """History, best weights and seed states: whatever phase the state was written in."""
        self.history[:] = state["history"]
        best = state["best"]
        if best["file"]:
            self.best.best_weights = _load_arrays(self.directory / best["file"])
            self.best.best, self.best.best_epoch = best["value"], best["epoch"]
        seeds = np.load(self.directory / state["seeds"])
        for variable, value in zip(self._seed_variables(), seeds):
            variable.assign(value)

    def _restore_training_variables(self, path: Path) -> None:
        if path.name.endswith(".weights.h5"):  # an earlier fer-bench's checkpoint, in Keras' own format
            self.model.load_weights(path)
            return
        variables, values = self._training_variables(), _load_arrays(path)
        if len(values) != len(variables):
            raise RunError(f"{path} holds {len(values)} arrays for a model and optimizer of {len(variables)} "
                           "variables; pass --restart to train afresh")
        for variable, value in zip(variables, values):
            variable.assign(value)

    def restore_model_weights(self, state: dict) -> None:
        self.model.set_weights(_load_arrays(self.directory / state["model_weights"]))

    def on_train_begin(self, logs=None):
        self._fit_start = time.perf_counter()
        state = self.read(self.directory)
        if state is None or state.get("phase") != self.phase:
            return
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self._restore_training_variables(self.directory / state["weights"])
        self.restore_shared(state)
        for callback, counters in zip(self.stateful, state["callbacks"]):
            for key, value in counters.items():
                setattr(callback, key, value)
        self.model._initial_epoch = state["epoch"]  # as Keras' BackupAndRestore does
        print(f"resumed {self.phase} after epoch {state['epoch']}", file=sys.stderr, flush=True)

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None  # Keras never resets it: the next phase would start here too
