"""tf.data input pipelines over the in-memory uint8 arrays.

The dataset stays uint8 at 48x48 in memory; the pipeline shuffles (or class-balances) image
*indices*, gathers each batch from the one in-memory copy, casts it to float32 and augments it.
Resizing and grey-to-RGB happen inside the model, so no upscaled float copy of the data ever exists.
Augmentation is one fused affine transform per batch (flip, rotation, zoom and shift in a single
resampling), driven by stateless random ops whose seeds come from a seeded `Dataset.random`: the
result is reproducible without forcing tf.data to run one element at a time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fer_bench.config import AugmentConfig

SAMPLING = ("none", "oversample", "undersample")


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


def epoch_class_counts(labels: np.ndarray, num_classes: int, sampling: str) -> np.ndarray:
    """How many images of each class one training epoch draws under the sampling strategy."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if sampling == "none":
        return counts
    target = present.max() if sampling == "oversample" else present.min()
    return np.where(counts > 0, target, 0)


def _epoch_indices(labels: np.ndarray, num_classes: int, sampling: str, seed: int) -> Any:
    """A dataset of training-image indices for one epoch, reshuffled every epoch."""
    tf = _tf()
    if sampling == "none":
        return tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    # Exact per-class counts: a shuffled schedule of class ids picks from per-class streams of
    # indices, each reshuffled and cycled (oversampling) or cut short (undersampling) every epoch.
    counts = epoch_class_counts(labels, num_classes, sampling)
    classes = [c for c in range(num_classes) if counts[c] > 0]
    streams = [
        tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c).astype(np.int64))
        .shuffle(int((labels == c).sum()), seed=seed + 1 + c, reshuffle_each_iteration=True).repeat()
        for c in classes
    ]
    schedule = np.repeat(np.arange(len(classes), dtype=np.int64), [counts[c] for c in classes])
    choice = tf.data.Dataset.from_tensor_slices(schedule).shuffle(len(schedule), seed=seed,
                                                                   reshuffle_each_iteration=True)
    # The schedule fixes the epoch's length; saying so lets Keras count steps and end epochs cleanly.
    indices = tf.data.Dataset.choose_from_datasets(streams, choice)
    return indices.apply(tf.data.experimental.assert_cardinality(len(schedule)))


def training_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                     augment: AugmentConfig, seed: int, sample_weights: np.ndarray | None = None,
                     sampling: str = "none") -> Any:
    """Shuffled (or class-balanced), augmented batches of (x float32 (B,48,48,1), y one-hot[, weight])."""
    tf = _tf()
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}; got {sampling!r}")
    all_images = tf.constant(images)  # the one in-memory copy; batches are gathered from it
    all_labels = tf.constant(labels.astype(np.int64))
    weights = None if sample_weights is None else tf.constant(sample_weights.astype(np.float32))
    batches = _epoch_indices(labels, num_classes, sampling, seed).batch(batch_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def prepare(index, batch_seed):
        x = tf.cast(tf.gather(all_images, index), tf.float32)[..., None]
        if augment.enabled:
            x = affine_augment(x, batch_seed, augment)
        y = tf.one_hot(tf.gather(all_labels, index), num_classes)
        return (x, y) if weights is None else (x, y, tf.gather(weights, index))

    ds = tf.data.Dataset.zip((batches, seeds))
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(images: np.ndarray, labels: np.ndarray | None, num_classes: int, batch_size: int) -> Any:
    """Batches in order, no augmentation: for validation during training and for prediction."""
    tf = _tf()
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        return ds.map(lambda x: tf.cast(x, tf.float32)[..., None]).prefetch(tf.data.AUTOTUNE)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32)[..., None], tf.one_hot(y, num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)
