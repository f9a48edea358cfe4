"""The one way in: an experiment file read, overridden and checked against everything fer-bench knows.

`config` checks the schema (keys, types, ranges); this adds what only the registries know (data
sources, backends, model builders and classifiers and their own parameters) and the first-stage
CNN of a feature config, so that every mistake is found before any run folder exists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from fer_bench.config import DataConfig, Experiment, read_config
from fer_bench.errors import ConfigError
from fer_bench.models.registry import MODELS, check_model_config


def model_kind(name: str) -> str:
    """'keras' for the deep-model registry, 'features' for the feature classifiers."""
    from fer_bench.models.features import CLASSIFIERS

    if name in MODELS:
        return "keras"
    if name in CLASSIFIERS:
        return "features"
    raise ConfigError(f"model.name: unknown {name!r}; choose from {sorted(MODELS) + sorted(CLASSIFIERS)}")


def data_config(exp: Experiment) -> DataConfig:
    """The data section as loaded: `data.seed: null` follows `train.seed` (the subset moves with the seed)."""
    return exp.data if exp.data.seed is not None else dataclasses.replace(exp.data, seed=exp.train.seed)


def seed_moves(exp: Experiment) -> list[str]:
    """What `train.seed` changes in this experiment: recorded with the run, so a spread over seeds reads right."""
    if model_kind(exp.model.name) == "features":
        moves = ["the classifier's own randomness"] + (["the first-stage CNN"] if exp.features.extractor == "cnn" else [])
    else:
        moves = ["initialisation", "data order", "dropout"] + (["augmentation"] if exp.augment.enabled else [])
    if exp.data.seed is None:
        moves.append("the data's subset and split (data.seed: null)")
    return moves


# Sections a feature classifier does not read itself: `--set train.epochs=2` on a feature config is meant
# for the CNN that it trains first, so such overrides reach that stage (recorded in features.cnn_overrides).
FIRST_STAGE_SECTIONS = ("train", "augment", "runtime")


def load_experiment(path: Path | str, overrides: list[str] | None = None) -> Experiment:
    """Load and fully validate an experiment file: schema, then the registries' own checks.

    Everything is checked here, before any run folder exists: a feature config's first-stage CNN too.
    """
    from fer_bench.backends import BACKENDS
    from fer_bench.data.dataset import check_data_config
    from fer_bench.models.features import check_feature_config

    overrides = list(overrides or [])
    exp = read_config(path, overrides)
    check_data_config(exp.data)
    if exp.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard needs the tensorboard package, which is not installed: "
                          "pip install -e \".[tensorboard]\" (or pip install tensorboard)")
    if exp.runtime.backend not in ("auto", *BACKENDS):
        raise ConfigError(f"runtime.backend must be one of {['auto', *BACKENDS]}; got {exp.runtime.backend!r}")
    if model_kind(exp.model.name) == "keras":
        check_model_config(exp)
        if exp.features is not None:
            raise ConfigError(f"features applies to feature classifiers, not to {exp.model.name}; remove it")
        return exp
    check_feature_config(exp)
    features = exp.features
    if features.extractor == "cnn" and features.from_run is None:
        forwarded = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in FIRST_STAGE_SECTIONS]
        features = dataclasses.replace(features, cnn_overrides=[*features.cnn_overrides, *forwarded])
        exp = dataclasses.replace(exp, features=features)
        try:
            stage = load_experiment(features.cnn_config, features.cnn_overrides)
        except ConfigError as exc:
            raise ConfigError(f"features.cnn_config {features.cnn_config}: {exc}") from None
        if model_kind(stage.model.name) != "keras":
            raise ConfigError(f"features.cnn_config {features.cnn_config} must train a deep model; it names "
                              f"{stage.model.name!r}")
    return exp
