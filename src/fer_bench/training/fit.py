"""Training: compile, and the one- or two-phase fit, checkpointed every epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench.backends import Runtime
from fer_bench.config import Experiment, TrainConfig
from fer_bench.data.dataset import FerData
from fer_bench.data.pipeline import EVALUATION_BATCH, EpochFeed, epoch_class_counts, evaluation_dataset
from fer_bench.models.registry import BACKBONE_LAYER, build_model
from fer_bench.models.saved import for_inference


@dataclass
class TrainingResult:
    model: Any
    history: list[dict]
    best_epoch: int | None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    global_batch_size: int = 0
    imbalance: dict = field(default_factory=dict)


OPTIMIZERS = {
    "adam": lambda cfg, lr: ("Adam", {"weight_decay": cfg.weight_decay or None}),
    "adamw": lambda cfg, lr: ("AdamW", {"weight_decay": cfg.weight_decay}),
    "sgd": lambda cfg, lr: ("SGD", {"momentum": cfg.momentum, "nesterov": True, "weight_decay": cfg.weight_decay or None}),
    "rmsprop": lambda cfg, lr: ("RMSprop", {"momentum": cfg.momentum, "weight_decay": cfg.weight_decay or None}),
}


ONE_CYCLE_START_DIVISOR = 25  # fast.ai's and PyTorch OneCycleLR's div_factor


def make_optimizer(cfg: TrainConfig, learning_rate: float, steps: int) -> Any:
    """The configured optimizer; a cosine or one-cycle schedule spans the phase's `steps`; it may average the weights."""
    import keras

    rate: Any = learning_rate
    if cfg.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    elif cfg.schedule == "one_cycle":
        # Smith's one-cycle: a low start steadies the first steps, and the climb lets the peak sit above the
        # rate a plain decay could start from. Keras' warm-up is linear; decay_steps counts after it.
        warmup = max(round(steps * cfg.warmup_fraction), 1)
        rate = keras.optimizers.schedules.CosineDecay(learning_rate / ONE_CYCLE_START_DIVISOR,
                                                      decay_steps=max(steps - warmup, 1),
                                                      warmup_target=learning_rate, warmup_steps=warmup)
    class_name, kwargs = OPTIMIZERS[cfg.optimizer](cfg, learning_rate)
    if cfg.ema_momentum is not None:
        kwargs.update(use_ema=True, ema_momentum=cfg.ema_momentum)
    return getattr(keras.optimizers, class_name)(learning_rate=rate, **kwargs)


def ema_warning(momentum: float | None, steps: int) -> str | None:
    """A warning when the moving average spans more than half the phase: it would still hold much of the start."""
    if momentum is None or 1 / (1 - momentum) <= steps / 2:
        return None
    return (f"warning: train.ema_momentum {momentum} averages over about {1 / (1 - momentum):,.0f} steps, more than half "
            f"of this phase's {steps:,}: the averaged weights still hold much of the first ones (lower it for a run "
            "this short)")


def calibration_batches(images: np.ndarray, seed: int, batch_size: int, size: int = 2048) -> list[np.ndarray]:
    """Training images, drawn once, on which averaged weights measure their BatchNormalization statistics.

    Unaugmented, like the faces the model is validated and used on, and batched as validation is.
    """
    rng = np.random.default_rng(seed)
    drawn = images[np.sort(rng.choice(len(images), size=min(size, len(images)), replace=False))]
    return list(evaluation_dataset(drawn, labels=None, num_classes=0, batch_size=batch_size).as_numpy_iterator())


def class_weights(labels: np.ndarray, classes: tuple[str, ...], setting: str | dict[str, float]) -> np.ndarray | None:
    """Per-class loss weights: None, 'balanced' (n / (k * count)), its square root, or a mapping (others 1.0)."""
    if setting == "none":
        return None
    if setting in ("balanced", "sqrt_balanced"):
        counts = np.bincount(labels, minlength=len(classes)).astype(np.float64)
        balanced = np.where(counts > 0, len(labels) / (len(classes) * np.maximum(counts, 1)), 0.0)
        return np.sqrt(balanced) if setting == "sqrt_balanced" else balanced
    return np.array([float(setting.get(c, 1.0)) for c in classes])


def make_loss(cfg: TrainConfig) -> Any:
    """Cross-entropy, or Keras' own focal loss (alpha * (1 - p)^gamma * cross-entropy)."""
    import keras

    if cfg.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                                        label_smoothing=cfg.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)


def imbalance_record(cfg: TrainConfig, labels: np.ndarray, classes: tuple[str, ...]) -> dict:
    """The class-imbalance strategy and the per-class images one training epoch sees."""
    counts = epoch_class_counts(labels, len(classes), cfg.sampling)
    weights = class_weights(labels, classes, cfg.class_weight)
    return {
        "class_weight": cfg.class_weight, "loss": cfg.loss, "sampling": cfg.sampling,
        **({"focal_gamma": cfg.focal_gamma, "focal_alpha": cfg.focal_alpha} if cfg.loss == "focal" else {}),
        "train_counts": {c: int(n) for c, n in zip(classes, np.bincount(labels, minlength=len(classes)))},
        "epoch_counts": {c: int(n) for c, n in zip(classes, counts)},
        "loss_weights": None if weights is None else {c: round(float(w), 4) for c, w in zip(classes, weights)},
    }


def compile_for_training(model: Any, cfg: TrainConfig, learning_rate: float, steps: int, runtime: Runtime) -> None:
    """Compile with the configured optimizer (a schedule over `steps`) and loss, and the runtime's switches."""
    model.compile(optimizer=make_optimizer(cfg, learning_rate, steps), loss=make_loss(cfg), metrics=["accuracy"],
                  jit_compile=runtime.jit_compile, steps_per_execution=runtime.steps_per_execution)


def build_training_state(model: Any, batch_spec: Any) -> None:
    """Create the optimizer's slots and the metrics' totals now, from the shapes of a batch.

    Keras on TensorFlow without a distribution strategy leaves them to the first trace of the train step,
    and TensorFlow traces a function a second time when its first trace created variables: built here,
    each fit traces its train step once (on this project's CPU a second trace cost seconds per phase).
    """
    model._symbolic_build(data_batch=tuple(batch_spec))  # what Keras itself calls under a strategy


def _phases(exp: Experiment) -> list[tuple[str, int, float]]:
    """(phase name, epochs, learning rate): one phase, or head-then-fine-tune for a backbone."""
    plan = exp.model.fine_tune
    if plan is None:
        return [("train", exp.train.epochs, exp.train.learning_rate)]
    phases = [("head", plan.head_epochs, exp.train.learning_rate)] if plan.head_epochs else []
    return phases + [("fine_tune", exp.train.epochs, plan.learning_rate)]


def _set_trainable(model: Any, phase: str, unfreeze_top: int) -> None:
    """Freeze the backbone for the head phase; then open its top layers, BatchNorm excepted."""
    if phase == "train":
        return
    backbone = model.get_layer(BACKBONE_LAYER)
    backbone.trainable = phase == "fine_tune"
    if phase == "fine_tune":
        import keras

        cut = max(len(backbone.layers) - unfreeze_top, 0)
        for index, layer in enumerate(backbone.layers):
            layer.trainable = index >= cut and not isinstance(layer, keras.layers.BatchNormalization)


@dataclass
class _Progress:
    """What training has done so far: restored from a checkpoint, or empty for a fresh run."""

    best: Any  # callbacks.BestWeights
    history: list[dict] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)  # phases that finished
    seconds: dict[str, float] = field(default_factory=dict)  # training seconds per phase, before interruptions too
    state: dict | None = None  # the checkpoint's state.json, until its phase resumes


def _restore(model: Any, checkpoint_dir: Path | None) -> _Progress:
    """History, best model, dropout seeds and finished phases from the last checkpoint, if there is one."""
    from fer_bench.training.callbacks import BestWeights, Checkpoint

    state = Checkpoint.read(checkpoint_dir) if checkpoint_dir is not None else None
    progress = _Progress(best=BestWeights())
    if state is None:
        return progress
    progress.completed = list(state["completed"])
    progress.seconds = dict(state.get("seconds", {}))
    progress.state = state
    restorer = Checkpoint(checkpoint_dir, "", progress.history, progress.best, [], progress.completed)
    restorer.set_model(model)
    restorer.restore_shared(state)
    if state["phase"] is None:
        restorer.restore_model_weights(state)  # the last phase that finished
    return progress


def _stateful_callbacks(cfg: TrainConfig, learning_rate: float) -> list[Any]:
    """Early stopping and the plateau schedule: callbacks whose counters a checkpoint must keep."""
    import keras

    stateful: list[Any] = []
    if cfg.early_stopping_patience:
        stateful.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.early_stopping_patience))
    if cfg.schedule == "plateau":
        stateful.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            min_lr=learning_rate * 1e-3, verbose=0))
    return stateful


def fit_phase(model: Any, cfg: TrainConfig, runtime: Runtime, feed: EpochFeed, validation: Any, learning_rate: float,
              epochs: int, callbacks: Sequence[Any], initial_epoch: int = 0, last_epoch: int | None = None,
              dataset: Any = None) -> float:
    """Compile for one phase and fit it; return its seconds. The benchmark times training through this too.

    `feed` gives each epoch its batches (`dataset` replaces them, for a synthetic ceiling); the
    learning-rate schedule spans the phase's `epochs`, fitted from `initial_epoch` to `last_epoch`.
    """
    from fer_bench.training.callbacks import FeedEpoch

    start = time.perf_counter()
    batches = feed.dataset if dataset is None else dataset
    with runtime.scope():
        compile_for_training(model, cfg, learning_rate, epochs * feed.steps, runtime)
        build_training_state(model, batches.element_spec)
        model.fit(batches, validation_data=validation, initial_epoch=initial_epoch,
                  epochs=initial_epoch + epochs if last_epoch is None else last_epoch,
                  callbacks=[FeedEpoch(feed), *callbacks], shuffle=False, verbose=0)
    return time.perf_counter() - start


def train_model(exp: Experiment, data: FerData, runtime: Runtime, checkpoint_dir: Path | None = None,
                callbacks: Sequence[Any] = ()) -> TrainingResult:
    """Build, compile and fit the configured model; return it, uncompiled, with the best validation weights.

    With `checkpoint_dir`, every epoch is checkpointed there and a later call with the same
    arguments continues from the last completed epoch, ending exactly as an uninterrupted run.
    `callbacks` are more Keras callbacks for every phase (a tracker, TensorBoard): they run after
    fer-bench's own and before the checkpoint, which saves what the others have updated.
    """
    from fer_bench.console import terminal
    from fer_bench.training.callbacks import BatchProgress, Checkpoint, EpochRecorder, ValidateAveragedWeights

    cfg = exp.train
    num_classes = len(data.classes)
    global_batch = cfg.batch_size * runtime.replicas
    weights = class_weights(data.train.labels, data.classes, cfg.class_weight)
    sample_weights = None if weights is None else weights[data.train.labels]
    # Evaluation holds no gradients: bigger batches cost little memory and cut per-batch overhead.
    val_ds = evaluation_dataset(data.validation.images, data.validation.labels, num_classes,
                                max(global_batch, EVALUATION_BATCH))
    # The averaged weights' statistics are measured on these (train.ema_momentum), in every phase.
    calibration = calibration_batches(data.train.images, cfg.seed, global_batch) if cfg.ema_momentum else None
    with runtime.scope():
        model = build_model(exp)
    progress = _restore(model, checkpoint_dir)
    for phase, epochs, learning_rate in _phases(exp):
        if phase in progress.completed:
            continue
        _set_trainable(model, phase, exp.model.fine_tune.unfreeze_top if exp.model.fine_tune else 0)
        phase_start = sum(row["phase"] != phase for row in progress.history)
        state, progress.state = progress.state, None
        resuming = state is not None and state["phase"] == phase
        seconds_before = float(state.get("elapsed", 0.0)) if resuming else 0.0
        # A phase that early stopping had ended runs no further epoch.
        phase_end = state["epoch"] if resuming and state["stopped"] else phase_start + epochs
        stateful = _stateful_callbacks(cfg, learning_rate)
        feed = EpochFeed(data.train.images, data.train.labels, num_classes, global_batch, exp.augment, cfg.seed,
                         sample_weights, cfg.sampling)
        warning = ema_warning(cfg.ema_momentum, epochs * feed.steps)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        # The live bar only where someone watches: per-batch callbacks cost a little speed.
        live = [BatchProgress(phase, feed.steps, phase_end)] if terminal() else []
        phase_callbacks: list[Any] = [progress.best, *live, EpochRecorder(phase, progress.history), *stateful,
                                      *callbacks]
        if calibration is not None:
            # After BestWeights has kept the average and before the checkpoint saves the weights training goes on from.
            phase_callbacks.append(ValidateAveragedWeights(calibration))
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = Checkpoint(checkpoint_dir, phase, progress.history, progress.best, stateful,
                                    progress.completed, progress.seconds, seconds_before)
            phase_callbacks.append(checkpoint)  # last: it saves what the others have just updated
        seconds = fit_phase(model, cfg, runtime, feed, val_ds, learning_rate, epochs, phase_callbacks,
                            initial_epoch=phase_start, last_epoch=phase_end)
        progress.seconds[phase] = round(seconds_before + seconds, 2)
        if checkpoint is not None:
            checkpoint.complete_phase()
    progress.best.restore(model)
    return TrainingResult(model=for_inference(model), history=progress.history, best_epoch=progress.best.best_epoch,
                          phase_seconds=progress.seconds, runtime=runtime.record(), global_batch_size=global_batch,
                          imbalance=imbalance_record(cfg, data.train.labels, data.classes))
