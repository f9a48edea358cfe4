import numpy as np

from fer_bench.config import AugmentConfig
from fer_bench.data.pipeline import affine_augment, evaluation_dataset, training_dataset


def batch(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


def test_training_batches_are_float_one_hot_and_weighted():
    images, labels = batch(10), np.arange(10) % 7
    ds, steps = training_dataset(images, labels, 7, 4, AugmentConfig(), seed=1, sample_weights=np.ones(10) * 2)
    batches = list(ds.as_numpy_iterator())
    assert steps == 2
    assert [len(b[0]) for b in batches] == [4, 4]  # whole batches only: the last 2 images sit this epoch out
    x, y, w = batches[0]
    assert x.dtype == np.float32 and x.shape == (4, 48, 48, 1) and y.shape == (4, 7)
    assert np.allclose(y.sum(axis=1), 1) and np.allclose(w, 2)
    # without augmentation, the batches hold exactly stored pixels, reshuffled, none twice
    seen = np.concatenate([b[0][..., 0] for b in batches]).astype(np.uint8)
    assert len(set(map(bytes, seen))) == 8 and set(map(bytes, seen)) <= set(map(bytes, images))


def test_batches_are_whole_and_the_images_left_out_change_every_epoch():
    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 48, 48), np.uint8)
    ds, steps = training_dataset(images, np.arange(10) % 7, 7, 4, AugmentConfig(), seed=0, num_epochs=6)
    batches = [x[:, 0, 0, 0].astype(int) for x, _ in ds.as_numpy_iterator()]
    assert steps == 2 and len(batches) == 12 and all(len(b) == 4 for b in batches)
    left_out = [frozenset(range(10)) - set(np.concatenate(batches[i:i + 2])) for i in range(0, 12, 2)]
    assert all(len(out) == 2 for out in left_out) and len(set(left_out)) > 1
    # an epoch smaller than one batch is that one batch
    small, steps = training_dataset(images[:3], np.arange(3), 7, 4, AugmentConfig(), seed=0)
    assert steps == 1 and [len(x) for x, _ in small.as_numpy_iterator()] == [3]


def epochs_of(dataset, steps):
    batches = [x for x, _ in dataset.as_numpy_iterator()]
    return [batches[i:i + steps] for i in range(0, len(batches), steps)]


def test_same_seed_same_batches_and_epochs_differ():
    images, labels = batch(16), np.arange(16) % 7
    aug = AugmentConfig(flip=True, rotation=15, zoom=0.1, shift=0.1)
    first, steps = training_dataset(images, labels, 7, 8, aug, seed=5, num_epochs=2)
    second, _ = training_dataset(images, labels, 7, 8, aug, seed=5, num_epochs=2)
    epoch_a, epoch_b = epochs_of(first, steps), epochs_of(second, steps)
    assert len(epoch_a) == 2 and all(len(e) == 2 for e in epoch_a)
    assert all(np.array_equal(a, b) for a, b in zip(sum(epoch_a, []), sum(epoch_b, [])))
    assert not np.array_equal(epoch_a[0][0], epoch_a[1][0])
    other_seed, _ = training_dataset(images, labels, 7, 8, aug, seed=6, num_epochs=1)
    assert not np.array_equal(epochs_of(other_seed, steps)[0][0], epoch_a[0][0])


def test_a_dataset_started_later_matches_the_uninterrupted_one():
    images, labels = batch(20), np.arange(20) % 4
    aug = AugmentConfig(flip=True, rotation=10)
    for sampling in ("none", "oversample"):
        whole, steps = training_dataset(images, labels, 4, 8, aug, seed=2, sampling=sampling, num_epochs=3)
        resumed, _ = training_dataset(images, labels, 4, 8, aug, seed=2, sampling=sampling, first_epoch=2, num_epochs=1)
        assert all(np.array_equal(a, b) for a, b in zip(epochs_of(whole, steps)[2], epochs_of(resumed, steps)[0]))


def test_flip_only_mirrors_or_keeps_each_image():
    import tensorflow as tf

    images = batch(32).astype(np.float32)[..., None]
    out = affine_augment(tf.constant(images), tf.constant([3, 4], dtype=tf.int64), AugmentConfig(flip=True)).numpy()
    kept = [np.allclose(o, i, atol=1e-3) for o, i in zip(out, images)]
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, images)]
    assert all(k or m for k, m in zip(kept, mirrored))
    assert 0 < sum(mirrored) < 32


def test_rotation_changes_pixels_but_keeps_the_shape():
    import tensorflow as tf

    images = batch(4).astype(np.float32)[..., None]
    out = affine_augment(tf.constant(images), tf.constant([1, 2], dtype=tf.int64), AugmentConfig(rotation=30)).numpy()
    assert out.shape == images.shape and not np.allclose(out, images)
    assert out.min() >= 0 and out.max() <= 255


def test_evaluation_dataset_keeps_order():
    images, labels = batch(5), np.array([0, 1, 2, 3, 4])
    xs, ys = zip(*evaluation_dataset(images, labels, 5, 2).as_numpy_iterator())
    assert np.array_equal(np.concatenate(xs)[..., 0].astype(np.uint8), images)
    assert np.concatenate(ys).argmax(axis=1).tolist() == [0, 1, 2, 3, 4]


def test_random_erasing_replaces_one_rectangle_of_the_chosen_images():
    import tensorflow as tf

    from fer_bench.data.pipeline import ERASED_AREA, random_erasing

    images = np.full((64, 48, 48, 1), 7.0, dtype=np.float32)
    seed = tf.constant([5, 6], dtype=tf.int64)
    out = random_erasing(tf.constant(images), seed, probability=0.5).numpy()
    assert np.array_equal(out, random_erasing(tf.constant(images), seed, probability=0.5).numpy())
    changed = out[..., 0] != 7.0
    erased = changed.any(axis=(1, 2))
    assert 16 < erased.sum() < 48  # about half of 64
    for mask in changed[erased]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        # noise can hit 7.0 itself only with negligible odds: the changed pixels fill their bounding box
        assert box.mean() > 0.99
        assert ERASED_AREA[0] * 0.5 < box.size / mask.size < ERASED_AREA[1] * 1.5
    assert out.min() >= 0 and out.max() <= 255
    never = random_erasing(tf.constant(images), seed, probability=0.0).numpy()
    assert np.array_equal(never, images)


def test_mixup_blends_each_face_its_target_and_its_weight_with_its_mirror_in_the_batch():
    import tensorflow as tf

    from fer_bench.data.pipeline import mixup

    faces = np.arange(8, dtype=np.float32) * 30
    images = faces[:, None, None, None] * np.ones((8, 4, 4, 1), np.float32)
    weights = np.arange(1, 9, dtype=np.float32)
    seed = tf.constant([3, 4], tf.int64)
    x, y, w = (t.numpy() for t in mixup(tf.constant(images), tf.constant(np.eye(8, dtype=np.float32)),
                                        tf.constant(weights), seed, 0.4))
    share = y[np.arange(8), np.arange(8)]  # each face's own part of its target
    assert np.allclose(y.sum(axis=1), 1) and np.allclose(y[np.arange(8), np.arange(8)[::-1]], 1 - share)
    assert np.allclose(x, (share * faces + (1 - share) * faces[::-1])[:, None, None, None] * np.ones((1, 4, 4, 1)))
    assert np.allclose(w, share * weights + (1 - share) * weights[::-1])
    assert 0 < share.min() and share.max() < 1 and share.std() > 0.1  # drawn per face, not once per batch
    again = mixup(tf.constant(images), tf.constant(np.eye(8, dtype=np.float32)), None, seed, 0.4)
    assert np.array_equal(again[0].numpy(), x) and again[2] is None


def test_mixup_in_the_training_batches_gives_soft_targets_and_none_without_it():
    images = np.zeros((16, 48, 48), np.uint8)
    labels = np.arange(16) % 7
    (_, mixed), = training_dataset(images, labels, 7, 16, AugmentConfig(mixup=0.2), seed=1, num_epochs=1)[0].as_numpy_iterator()
    (_, plain), = training_dataset(images, labels, 7, 16, AugmentConfig(), seed=1, num_epochs=1)[0].as_numpy_iterator()
    assert np.allclose(mixed.sum(axis=1), 1) and (mixed.max(axis=1) < 1).any()
    assert set(np.unique(plain)) == {0.0, 1.0}


def test_erasing_alone_leaves_the_rest_of_each_image_untouched():
    images = (np.arange(8, dtype=np.uint8)[:, None, None] * 20 + 10).repeat(48, 1).repeat(48, 2)
    ds, _ = training_dataset(images, np.arange(8) % 7, 7, 8, AugmentConfig(erasing=1.0), seed=1, num_epochs=1)
    ((x, _),) = ds.as_numpy_iterator()
    for face in x[..., 0]:
        values, counts = np.unique(face, return_counts=True)
        original = values[counts.argmax()]
        assert original in images[:, 0, 0]
        # no resampling: every pixel outside the erased rectangle is the stored one, exactly
        assert 0.7 < counts.max() / face.size < 1.0
