"""Training switches whose effect is on the weights: the moving average of train.ema_momentum."""

import dataclasses

import keras
import numpy as np
import pytest

from fer_bench.config import TrainConfig
from fer_bench.errors import FerBenchError
from fer_bench.experiment import load_experiment
from fer_bench.training.callbacks import ValidateAveragedWeights
from fer_bench.training.fit import ema_warning, make_optimizer

from conftest import REPO


class Snapshot(keras.callbacks.Callback):
    """The model's variables, the optimizer's average and the epoch's logs, as this callback's turn comes."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        def values(variables):
            return [keras.ops.convert_to_numpy(v.value) for v in variables]

        self.epochs.append({"weights": values(self.model.trainable_variables),
                            "state": values(self.model.non_trainable_variables),
                            "average": values(self.model.optimizer._model_variables_moving_average),
                            "logs": dict(logs or {})})


def fit_tiny(validate_average: bool):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), keras.utils.to_categorical(rng.integers(0, 3, 64), 3)
    x_val, y_val = rng.normal(size=(32, 8)).astype("float32"), keras.utils.to_categorical(rng.integers(0, 3, 32), 3)
    calibration = rng.normal(1.0, 2.0, size=(40, 8)).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                              keras.layers.Activation("relu"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=make_optimizer(TrainConfig(ema_momentum=0.9, learning_rate=0.05), 0.05, 8),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    before, after = Snapshot(), Snapshot()
    swap = [ValidateAveragedWeights([calibration[i:i + 16] for i in range(0, 40, 16)])] if validate_average else []
    model.fit(x, y, batch_size=16, epochs=2, validation_data=(x_val, y_val), shuffle=False, verbose=0,
              callbacks=[before, *swap, after])
    return (before, after), model, (x_val, y_val), calibration


def test_the_average_is_validated_and_kept_while_training_goes_on_from_the_raw_weights():
    (before, after), model, (x_val, y_val), calibration = fit_tiny(validate_average=True)
    (_, plain), _, _, _ = fit_tiny(validate_average=False)
    for epoch, seen in enumerate(before.epochs):
        # Callbacks before the swap (BestWeights) see the average ...
        for weights, average in zip(seen["weights"], seen["average"]):
            np.testing.assert_array_equal(weights, average)
        # ... with BatchNormalization's statistics measured for it: the mean over the calibration batches (16, 16, 8)
        kernel, bias = seen["weights"][:2]
        batches = [calibration[i:i + 16] @ kernel + bias for i in range(0, 40, 16)]
        mean, variance = seen["state"][:2]
        np.testing.assert_allclose(mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(variance, np.mean([b.var(axis=0) for b in batches], axis=0), rtol=1e-4, atol=1e-5)
        # ... and the epoch's val_loss is the average's.
        probe = keras.models.clone_model(model)
        probe.set_weights(seen["weights"][:4] + seen["state"][:2] + seen["weights"][4:])
        probe.compile(loss="categorical_crossentropy")
        assert seen["logs"]["val_loss"] == pytest.approx(probe.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"],
                                                         rel=1e-5)
        # The callbacks after it (the checkpoint) see the raw weights, statistics and dropout seeds: the same
        # as a fit without the swap has.
        raw = after.epochs[epoch]
        assert not all(np.array_equal(r, a) for r, a in zip(raw["weights"], seen["average"]))
        for value, unswapped in zip(raw["weights"] + raw["state"], plain.epochs[epoch]["weights"] + plain.epochs[epoch]["state"]):
            np.testing.assert_array_equal(value, unswapped)


@pytest.mark.parametrize("value", ["1.0", "0", "high"])
def test_ema_momentum_must_lie_strictly_between_zero_and_one(value):
    with pytest.raises(FerBenchError, match=r"train\.ema_momentum"):
        load_experiment(REPO / "configs" / "custom_cnn.yaml", [f"train.ema_momentum={value}"])


def test_the_optimizer_averages_only_when_asked():
    assert not make_optimizer(TrainConfig(), 1e-3, 10).use_ema
    averaged = make_optimizer(dataclasses.replace(TrainConfig(), ema_momentum=0.999), 1e-3, 10)
    assert averaged.use_ema and averaged.ema_momentum == 0.999


def test_an_average_longer_than_half_the_phase_is_a_warning():
    assert ema_warning(None, 10) is None
    assert ema_warning(0.999, 17 * 449) is None  # the 36 px hour: about 1,000 of 7,633 steps
    assert ema_warning(0.999, 66) == (
        "warning: train.ema_momentum 0.999 averages over about 1,000 steps, more than half of this phase's 66: the "
        "averaged weights still hold much of the first ones (lower it for a run this short)")


def test_one_cycle_climbs_from_a_25th_to_the_rate_then_falls_to_zero():
    optimizer = make_optimizer(TrainConfig(schedule="one_cycle", warmup_fraction=0.25), 0.01, 100)
    rate = {}
    for step in (0, 10, 25, 50, 100):
        optimizer.iterations.assign(step)
        rate[step] = float(optimizer.learning_rate)
    assert rate[0] == pytest.approx(0.01 / 25)
    assert rate[10] == pytest.approx(0.0004 + 0.4 * (0.01 - 0.0004))  # linear warm-up
    assert rate[25] == pytest.approx(0.01)
    assert rate[50] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 25 / 75)))  # cosine over the other 75 steps
    assert rate[100] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("value", ["0", "1.0", "1.5"])
def test_the_warmup_fraction_lies_strictly_between_zero_and_one(value):
    with pytest.raises(FerBenchError, match=r"train\.warmup_fraction"):
        load_experiment(REPO / "configs" / "custom_cnn.yaml", [f"train.warmup_fraction={value}"])
