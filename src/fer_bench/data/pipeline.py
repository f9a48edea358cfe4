"""tf.data input pipelines over the in-memory uint8 arrays.

The dataset stays uint8 at 48x48 in memory; the pipeline orders (shuffles or class-balances) image
*indices*, gathers each batch from the one in-memory copy, casts it to float32 and augments it.
Training batches are all full (the remainder of an epoch's order is left out of that epoch).
Resizing and grey-to-RGB happen inside the model, so no upscaled float copy of the data ever exists.
Augmentation is one fused affine transform per batch (flip, rotation, zoom and shift in a single
resampling), then optional random erasing and mixup. All randomness is stateless, seeded by (seed, epoch,
batch): reproducible without forcing tf.data to run one element at a time, and identical when a
run resumes mid-way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fer_bench.config import AugmentConfig

SAMPLING = ("none", "oversample", "undersample")

# Evaluation holds no gradients: bigger batches than training's cost little memory and cut per-batch overhead.
EVALUATION_BATCH = 256


def _tf():
    import tensorflow as tf  # here, not at top: keeps `fer-bench --help` and `compare` fast

    return tf


def affine_augment(images: Any, seed: Any, augment: AugmentConfig) -> Any:
    """Randomly flip, rotate, zoom and shift a float batch (B, H, W, C) with one resampling."""
    tf = _tf()
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    u = tf.random.stateless_uniform([batch, 5], seed=seed, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * (augment.rotation * math.pi / 180.0)
    scale = 1.0 + u[:, 1] * augment.zoom
    shift_x = u[:, 2] * augment.shift * width
    shift_y = u[:, 3] * augment.shift * height
    flip = tf.where(u[:, 4] < 0.0, -1.0, 1.0) if augment.flip else tf.ones([batch])
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # The transform maps each output pixel to the input pixel it samples, about the image centre.
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = cx - a0 * cx - a1 * cy + shift_x
    b2 = cy - b0 * cx - b1 * cy + shift_y
    zeros = tf.zeros([batch])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )


ERASED_AREA = (0.02, 0.25)  # fraction of the image one erased rectangle covers
ERASED_ASPECT = (0.3, 3.3)  # its height / width


def random_erasing(images: Any, seed: Any, probability: float) -> Any:
    """With the given probability, replace one random rectangle of each image (B, H, W, C) by noise.

    Random erasing (Zhong et al., 2020) hides part of the face, so the model cannot lean on one
    region (the mouth, say) alone. Sizes and aspect ratios follow the paper's defaults.
    """
    tf = _tf()
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    u = tf.random.stateless_uniform([shape[0], 5], seed=seed)
    area = (ERASED_AREA[0] + u[:, 0] * (ERASED_AREA[1] - ERASED_AREA[0])) * height * width
    log_low, log_high = math.log(ERASED_ASPECT[0]), math.log(ERASED_ASPECT[1])
    aspect = tf.exp(log_low + u[:, 1] * (log_high - log_low))
    rect_h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, height)
    rect_w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, width)
    top = tf.floor(u[:, 2] * (height - rect_h + 1.0))
    left = tf.floor(u[:, 3] * (width - rect_w + 1.0))
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None])
    erase = in_rows[:, :, None] & in_cols[:, None, :] & (u[:, 4] < probability)[:, None, None]
    noise = tf.random.stateless_uniform(shape, seed=tf.random.experimental.stateless_fold_in(seed, 1),
                                        maxval=255.0)
    return tf.where(erase[..., None], noise, images)


def mixup(images: Any, targets: Any, weights: Any | None, seed: Any, alpha: float) -> tuple[Any, Any, Any | None]:
    """Blend each image of a batch, its one-hot target and its loss weight with those of the image in the
    mirrored place (the batch is in shuffled order, so that is a random partner), by a weight drawn per image
    from Beta(alpha, alpha).

    Mixup (Zhang et al., 2018) trains on the lines between faces, which smooths the classifier between
    classes; a small alpha keeps most blends close to one face.
    """
    tf = _tf()
    batch = tf.shape(images)[0]
    # Beta(a, a) as g1 / (g1 + g2) for two Gamma(a) draws: TensorFlow has no stateless Beta.
    first = tf.random.stateless_gamma([batch], seed=seed, alpha=alpha)
    second = tf.random.stateless_gamma([batch], seed=tf.random.experimental.stateless_fold_in(seed, 1), alpha=alpha)
    share = first / tf.maximum(first + second, 1e-12)

    def blend(values):
        weight = tf.reshape(share, [-1] + [1] * (len(values.shape) - 1))
        return weight * values + (1.0 - weight) * tf.reverse(values, axis=[0])

    return blend(images), blend(targets), None if weights is None else blend(weights)


def epoch_class_counts(labels: np.ndarray, num_classes: int, sampling: str) -> np.ndarray:
    """How many images of each class one training epoch draws under the sampling strategy."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if sampling == "none":
        return counts
    target = present.max() if sampling == "oversample" else present.min()
    return np.where(counts > 0, target, 0)


def _permutation(n: Any, seed: Any) -> Any:
    tf = _tf()
    return tf.argsort(tf.random.stateless_uniform(tf.reshape(n, [1]), seed=seed))


def _epoch_order(labels: np.ndarray, num_classes: int, sampling: str, seed: int, epoch: Any) -> Any:
    """Training-image indices for one epoch, a pure function of (seed, epoch).

    Nothing depends on how often the pipeline was iterated before, so a run resumed at epoch k
    sees exactly the batches an uninterrupted run sees at epoch k.
    """
    tf = _tf()
    epoch = tf.cast(epoch, tf.int64)
    if sampling == "none":
        return _permutation(len(labels), tf.stack([tf.constant(seed, tf.int64), epoch]))
    counts = epoch_class_counts(labels, num_classes, sampling)
    parts = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if counts[label] == 0:
            continue
        # Each class contributes exactly counts[label] images: whole reshuffled passes over its
        # members (oversampling), or the first part of one (undersampling).
        passes = int(np.ceil(counts[label] / len(members)))
        noise = tf.random.stateless_uniform([passes, len(members)],
                                            seed=tf.stack([tf.constant(seed + 1 + label, tf.int64), epoch]))
        order = tf.gather(tf.constant(members, tf.int64), tf.argsort(noise, axis=1))
        parts.append(tf.reshape(order, [-1])[: counts[label]])
    chosen = tf.concat(parts, axis=0)
    return tf.gather(chosen, _permutation(int(counts.sum()), tf.stack([tf.constant(seed - 1, tf.int64), epoch])))


def _epoch_batches(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                   augment: AugmentConfig, seed: int, sample_weights: np.ndarray | None, sampling: str) -> tuple[Any, int]:
    """A function epoch -> that epoch's batches, and the number of batches in an epoch."""
    tf = _tf()
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}; got {sampling!r}")
    all_images = tf.constant(images)  # the one in-memory copy; batches are gathered from it
    all_labels = tf.constant(labels.astype(np.int64))
    weights = None if sample_weights is None else tf.constant(sample_weights.astype(np.float32))
    drawn = int(epoch_class_counts(labels, num_classes, sampling).sum())
    # Whole batches only: a smaller last batch is a new input shape, for which XLA compiles the whole
    # training step once more, and which mirrored devices may not split evenly. Every epoch reshuffles,
    # so the few images left over change from epoch to epoch. An epoch that does not fill one batch is
    # that one smaller batch.
    whole = drawn >= batch_size
    steps = drawn // batch_size if whole else 1

    def prepare(epoch, step, index):
        x = tf.cast(tf.gather(all_images, index), tf.float32)[..., None]
        batch_seed = tf.stack([epoch + seed * 100_003, step])
        if augment.affine:
            x = affine_augment(x, batch_seed, augment)
        if augment.erasing > 0:
            x = random_erasing(x, tf.random.experimental.stateless_fold_in(batch_seed, 1), augment.erasing)
        y = tf.one_hot(tf.gather(all_labels, index), num_classes)
        w = None if weights is None else tf.gather(weights, index)
        if augment.mixup > 0:
            x, y, w = mixup(x, y, w, tf.random.experimental.stateless_fold_in(batch_seed, 2), augment.mixup)
        return (x, y) if w is None else (x, y, w)

    def epoch_batches(epoch):
        order = _epoch_order(labels, num_classes, sampling, seed, epoch)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=whole).enumerate()
        return batches.map(lambda step, index: prepare(epoch, step, index),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return epoch_batches, steps


def training_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                     augment: AugmentConfig, seed: int, sample_weights: np.ndarray | None = None,
                     sampling: str = "none", first_epoch: int = 0, num_epochs: int = 1) -> tuple[Any, int]:
    """Batches of (x float32 (B,48,48,1), y one-hot[, weight]) for epochs first_epoch.. first_epoch+num_epochs-1.

    Returns the dataset and its steps per epoch. Each epoch's order (shuffled or class-balanced)
    and augmentation are pure functions of (seed, epoch, batch).
    """
    tf = _tf()
    epoch_batches, steps = _epoch_batches(images, labels, num_classes, batch_size, augment, seed, sample_weights,
                                          sampling)
    epochs = tf.data.Dataset.range(first_epoch, first_epoch + num_epochs)
    return epochs.flat_map(epoch_batches).prefetch(tf.data.AUTOTUNE), steps


class EpochFeed:
    """Training batches for `fit`: each pass over `dataset` is one epoch, the one `epoch` holds.

    Keras starts a new pass every epoch when `fit` gets no steps_per_epoch, so an epoch ends with
    its own data even where steps_per_execution does not divide it (with steps_per_epoch, Keras
    would run whole executions and eat into the next epoch). The trainer sets `epoch` as each
    epoch begins; the batches are those of `training_dataset` for that epoch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                 augment: AugmentConfig, seed: int, sample_weights: np.ndarray | None = None, sampling: str = "none"):
        tf = _tf()
        epoch_batches, self.steps = _epoch_batches(images, labels, num_classes, batch_size, augment, seed,
                                                   sample_weights, sampling)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="feed_epoch")
        # Read when a pass starts, not when the dataset is built.
        current = tf.data.Dataset.from_tensors(0).map(lambda _: self.epoch.read_value())
        self.dataset = (current.flat_map(epoch_batches)
                        .apply(tf.data.experimental.assert_cardinality(self.steps))
                        .prefetch(tf.data.AUTOTUNE))

    def set_epoch(self, epoch: int) -> None:
        self.epoch.assign(epoch)


def evaluation_dataset(images: np.ndarray, labels: np.ndarray | None, num_classes: int, batch_size: int) -> Any:
    """Batches in order, no augmentation: for validation during training and for prediction."""
    tf = _tf()
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        return ds.map(lambda x: tf.cast(x, tf.float32)[..., None]).prefetch(tf.data.AUTOTUNE)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32)[..., None], tf.one_hot(y, num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)
