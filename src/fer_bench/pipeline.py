"""tf.data input pipelines over the in-memory uint8 arrays.

The dataset stays uint8 at 48x48 in memory; each batch is cast to float32 and augmented on the fly,
and resizing / grey-to-RGB happen inside the model, so no upscaled float copy of the data ever exists.
Augmentation is one fused affine transform per batch (flip, rotation, zoom and shift in a single
resampling), driven by stateless random ops whose seeds come from a seeded `Dataset.random`: the
result is reproducible without forcing tf.data to run one element at a time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fer_bench.config import AugmentConfig


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


def training_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                     augment: AugmentConfig, seed: int, sample_weights: np.ndarray | None = None) -> Any:
    """Shuffled, augmented batches of (x float32 (B,48,48,1), y one-hot[, per-image weight])."""
    tf = _tf()
    columns = [images, labels] if sample_weights is None else [images, labels, sample_weights.astype(np.float32)]
    ds = tf.data.Dataset.from_tensor_slices(tuple(columns))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def prepare(columns, batch_seed):
        x = tf.cast(columns[0], tf.float32)[..., None]
        if augment.enabled:
            x = affine_augment(x, batch_seed, augment)
        y = tf.one_hot(columns[1], num_classes)
        return (x, y) if len(columns) == 2 else (x, y, columns[2])

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
