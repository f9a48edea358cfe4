"""The experiment schema: YAML in, frozen dataclasses out, every key checked when loaded.

Constraints are data (as in scikit-learn's parameter validation): each field may carry `Options`
or `Interval` in its metadata, and one checker walks the schema, so an error always names the full
key (`train.optimizer`), the allowed values and the value it got.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import yaml

from fer_bench import EMOTIONS
from fer_bench.errors import ConfigError
from fer_bench.files import FOLDER_NAME_RULE, is_folder_name


class Constraint(abc.ABC):
    """A rule on a value, kept as data beside the field it constrains."""

    @abc.abstractmethod
    def allows(self, value: Any) -> bool:
        """Whether `value` satisfies the rule."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The rule in words, as an error message gives it: "in [0, 1]", "one of ['a', 'b']"."""

    def check(self, key: str, value: Any) -> None:
        if not self.allows(value):
            raise ConfigError(f"{key} must be {self.describe()}; got {value!r}")


@dataclass(frozen=True)
class Options(Constraint):
    values: tuple[Any, ...]

    def allows(self, value: Any) -> bool:
        # `1 in (True,)` holds in Python: compare types too, so that a bool never passes for a number.
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        # In YAML's words: a person writes true, not True.
        shown = ("true" if v is True else "false" if v is False else repr(v) for v in self.values)
        return f"one of [{', '.join(shown)}]"


@dataclass(frozen=True)
class Interval(Constraint):
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return not (too_low or too_high)

    def describe(self) -> str:
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A union of constraints: 'auto' or a whole number >= 1, -1 or a positive count."""

    options: tuple[Constraint, ...]
    wording: str = ""  # how a person would say it, where joining the options' own words reads badly

    def allows(self, value: Any) -> bool:
        return any(option.allows(value) for option in self.options)

    def describe(self) -> str:
        return self.wording or " or ".join(option.describe() for option in self.options)


def _field(default: Any, constraint: Constraint | None = None, doc: str = "") -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": constraint, "doc": doc})
    return field(default=default, metadata={"check": constraint, "doc": doc})


AUTO = "auto"


@dataclass(frozen=True)
class DataConfig:
    source: str = _field("auto", doc="auto | folder | csv | kaggle")
    path: str | None = _field(None, doc="data directory or fer2013.csv; null downloads with kagglehub")
    classes: list[str] | None = _field(None, doc="subset of emotions to keep, in this order; null = all 7")
    input_size: int = _field(48, Interval(32, 512), "side in pixels that the model sees (resized inside the model)")
    colour: str = _field("grayscale", Options(("grayscale", "rgb")), "rgb replicates the grey channel")
    validation_fraction: float = _field(0.1, Interval(0.0, 0.5, low_open=True),
                                        "stratified split of train, used only when the source has no PublicTest")
    max_per_class: int | None = _field(None, Interval(1), "keep at most this many images per class and split")
    seed: int | None = _field(42, Interval(0), "draws the max_per_class subset and, where the source has no PublicTest, "
                                               "the validation split; apart from train.seed, so that seeds train on the same "
                                               "images (null: follow train.seed, so that the seed moves the subset too)")
    cache: bool = _field(True, doc="cache decoded arrays on disk, keyed by a fingerprint of the source")


@dataclass(frozen=True)
class FineTuneConfig:
    head_epochs: int = _field(3, Interval(0), "phase 1: epochs with the backbone frozen")
    unfreeze_top: int = _field(30, Interval(0), "phase 2: number of top backbone layers to train")
    learning_rate: float = _field(1e-4, Interval(0.0, low_open=True), "phase 2 learning rate")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _field("custom_cnn", doc="a key of the model registry (`fer-bench models`)")
    params: dict[str, Any] = _field({}, doc="keyword arguments of the model builder")
    weights: str | None = _field(None, doc="imagenet | null | path to a weights file (a backbone's notop file; for a "
                                           "custom_cnn, a run's model.keras to train on from)")
    fine_tune: FineTuneConfig | None = _field(None, doc="two-phase fine-tune; null trains all layers at once")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = _field("adam", Options(("adam", "adamw", "sgd", "rmsprop")))
    learning_rate: float = _field(1e-3, Interval(0.0, low_open=True), "initial rate (the head phase of a fine-tune)")
    weight_decay: float = _field(0.0, Interval(0.0), "decoupled weight decay (adamw, sgd)")
    momentum: float = _field(0.9, Interval(0.0, 1.0), "sgd and rmsprop momentum")
    schedule: str = _field("plateau", Options(("constant", "cosine", "one_cycle", "plateau")),
                           "constant | cosine (learning_rate down to 0 over the phase) | one_cycle (up from "
                           "learning_rate / 25 to learning_rate over warmup_fraction of the phase, then cosine down to 0) "
                           "| plateau (cut by plateau_factor when val_loss stalls)")
    warmup_fraction: float = _field(0.3, Interval(0.0, 1.0, low_open=True, high_open=True),
                                    "one_cycle: the share of the phase's steps spent rising to learning_rate")
    plateau_patience: int = _field(3, Interval(1), "epochs without a better val_loss before the rate is cut")
    plateau_factor: float = _field(0.5, Interval(0.0, 1.0, low_open=True), "multiplier at each cut")
    epochs: int = _field(30, Interval(1), "maximum epochs (of the fine-tune phase, for a backbone)")
    batch_size: int = _field(64, Interval(1), "per replica: multiplied by the number of GPUs")
    early_stopping_patience: int | None = _field(8, Interval(1), "null disables early stopping")
    label_smoothing: float = _field(0.0, Interval(0.0, 0.5), "0 = plain one-hot targets")
    ema_momentum: float | None = _field(None, Interval(0.0, 1.0, low_open=True, high_open=True),
                                        "keep a moving average of the weights (the optimizer's use_ema), e.g. 0.999: "
                                        "validation, the best epoch and the saved model use it; null = off")
    loss: str = _field("crossentropy", Options(("crossentropy", "focal")),
                       "focal = Keras' CategoricalFocalCrossentropy")
    focal_gamma: float = _field(2.0, Interval(0.0), "focusing parameter of the focal loss (0 = cross-entropy)")
    focal_alpha: float = _field(0.25, Interval(0.0, 1.0, low_open=True), "weight of the focal loss")
    sampling: str = _field("none", Options(("none", "oversample", "undersample")),
                           "per epoch, every class as often as the largest (oversample) or smallest (undersample)")
    class_weight: str | dict[str, Annotated[float, Interval(0.0, low_open=True)]] = _field(
        "none", Options(("none", "balanced", "sqrt_balanced")),
        "none | balanced (n / (k * count)) | sqrt_balanced (its square root: a softer push towards rare classes) | {emotion: weight}")
    seed: int = _field(42, Interval(0), "seeds initialisation, data order, augmentation and dropout (not the data: see data.seed)")
    deterministic: bool = _field(False, doc="op determinism (TensorFlow's, or XLA's deterministic GPU ops on jax): "
                                                "reproducible, somewhat slower")
    tensorboard: bool = _field(False, doc="write Keras' TensorBoard logs into <run>/tensorboard/ "
                                          "(tensorboard --logdir results/ shows every run)")


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = _field(False, doc="random horizontal flip")
    rotation: float = _field(0.0, Interval(0.0, 180.0), "max rotation in degrees")
    zoom: float = _field(0.0, Interval(0.0, 0.9), "max zoom in or out, as a fraction")
    shift: float = _field(0.0, Interval(0.0, 0.5), "max shift, as a fraction of the side")
    erasing: float = _field(0.0, Interval(0.0, 1.0),
                            "probability of replacing a random rectangle (2-25% of the face) with noise")
    mixup: float = _field(0.0, Interval(0.0, 10.0),
                          "mixup's alpha: each face and its label blended with another's, by a weight drawn from "
                          "Beta(alpha, alpha); 0 = off")

    @property
    def affine(self) -> bool:
        return self.flip or self.rotation > 0 or self.zoom > 0 or self.shift > 0

    @property
    def enabled(self) -> bool:
        return self.affine or self.erasing > 0 or self.mixup > 0


TTA_MODES = ("none", "flip", "ten_crop")


@dataclass(frozen=True)
class FeaturesConfig:
    extractor: str = _field("cnn", Options(("cnn", "hog", "pixels")), "what the classifier sees")
    from_run: str | None = _field(None, doc="cnn: a finished run folder whose model.keras gives the features")
    cnn_config: str | None = _field(None, doc="cnn without from_run: an experiment file trained first, in this run")
    cnn_overrides: list[str] = _field([], doc="--set overrides for that first stage, e.g. ['train.epochs=10']")
    pca_components: int | None = _field(None, Interval(1), "reduce the features with PCA (fitted on train) first")
    hog_orientations: int = _field(9, Interval(2), "HOG: orientation bins")
    hog_cell: int = _field(8, Options((4, 6, 8, 12, 16)), "HOG: cell side in pixels")
    hog_block: int = _field(2, Interval(1, 4), "HOG: block side in cells")
    batch_size: int = _field(256, Interval(1), "cnn: images per forward pass when extracting")


@dataclass(frozen=True)
class SearchConfig:
    grid: dict[str, list[Any]] = _field({}, doc="classifier parameters to try, e.g. {C: [1, 10]}; empty = no search")
    selection: str = _field("validation", Options(("validation", "cv")),
                            "score each setting on the validation split (PublicTest) or by k-fold CV on train")
    folds: int = _field(3, Interval(2), "cv: number of stratified folds")
    scoring: str = _field("f1_macro", Options(("f1_macro", "accuracy", "balanced_accuracy")))
    n_jobs: int = _field(-1, AnyOf((Options((-1,)), Interval(1)), "-1 or a whole number >= 1"), "parallel fits (-1 = all cores)")
    max_samples: int | None = _field(None, Interval(10), "search on a stratified subset of train; the final fit uses all")


@dataclass(frozen=True)
class EvaluateConfig:
    tta: str = _field("none", Options(TTA_MODES),
                      "test-time augmentation for the test split, reported beside the plain scores")


@dataclass(frozen=True)
class RuntimeConfig:
    # The names are the backend registry's (checked in experiment.load_experiment): one entry adds a backend.
    backend: str = _field(AUTO, doc="Keras backend; auto = KERAS_BACKEND, else Keras' default (tensorflow)")
    mixed_precision: bool | str = _field(AUTO, Options((AUTO, True, False)), "auto: float16 on a GPU, bfloat16 on a CPU with AMX-BF16 or AVX-512 BF16 (TensorFlow), else off | true | false")
    jit_compile: bool | str = _field(AUTO, Options((AUTO, True, False)), "XLA; auto = on with a GPU, and always on jax | true | false")
    distribution: str = _field(AUTO, Options((AUTO, "none", "mirrored", "multi_worker")),
                               "mirrored: a model copy per device (TensorFlow MirroredStrategy, keras.distribution "
                               "DataParallel on jax), auto when there are several; multi_worker (tensorflow) reads TF_CONFIG")
    steps_per_execution: int | str = _field(AUTO, AnyOf((Options((AUTO,)), Interval(1)), "'auto' or a whole number >= 1"),
                                            "training steps per call into the device; auto = 1 on a CPU, "
                                            "16 on a GPU or TPU, where per-step dispatch dominates a small model")
    cpu_devices: int | None = _field(None, Interval(2, 64),
                                     "split the CPU into this many devices (TensorFlow logical devices, XLA host devices "
                                     "on jax), to try distribution without GPUs")


@dataclass(frozen=True)
class Experiment:
    name: str | None = _field(None, doc="run name; defaults to the config file's stem")
    description: str = _field("", doc="free text, kept with the run")
    data: DataConfig = _field(None)
    model: ModelConfig = _field(None)
    train: TrainConfig = _field(None)
    augment: AugmentConfig = _field(None)
    evaluate: EvaluateConfig = _field(None)
    features: FeaturesConfig | None = _field(None, doc="feature-based models only")
    search: SearchConfig = _field(None)
    runtime: RuntimeConfig = _field(None)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.data.classes) if self.data.classes else EMOTIONS


# --- building and checking -------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if _is_union(tp):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin = typing.get_origin(tp)
    if origin is not None:
        return {dict: "mapping", list: "list"}.get(origin, str(origin))
    return {int: "int", float: "number", str: "string", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming the key."""
    if typing.get_origin(tp) is Annotated:
        # A builder's parameter carries its constraints in its annotation: Annotated[float, Interval(0, 1)].
        inner, *constraints = typing.get_args(tp)
        value = _coerce(key, value, inner)
        for constraint in constraints:
            if isinstance(constraint, Constraint) and value is not None:
                constraint.check(key, value)
        return value
    if _is_union(tp):
        if value is None and type(None) in typing.get_args(tp):
            return None  # an explicit null, not the section's defaults
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append((arg, exc))
        # Where the value is a mapping or a list and that branch failed inside it, its error names the entry.
        for arg, exc in errors:
            if (typing.get_origin(arg), type(value)) in ((dict, dict), (list, list)):
                raise exc
        raise ConfigError(f"{key} must be {_type_name(tp)}; got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    elif tp is Any:
        return value
    elif typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    elif typing.get_origin(tp) is dict:
        _, value_type = typing.get_args(tp)
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _coerce(f"{key}.{k}", v, value_type) for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(tp)}; got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys, types and constraints."""
    where = prefix or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping; got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown key {key!r}; allowed keys{' in ' + prefix if prefix else ''}: {allowed}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            value = _coerce(key, raw[f.name], hints[f.name])
        elif dataclasses.is_dataclass(_dataclass_in(hints[f.name])) and not _allows_none(hints[f.name]):
            value = _build(_dataclass_in(hints[f.name]), {}, key)
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        check = f.metadata.get("check")
        if check is not None and value is not None and not isinstance(value, (dict, list)):
            check.check(key, value)
        values[f.name] = value
    return cls(**values)


def check_arguments(key: str, owner: str, function: Any, arguments: dict[str, Any],
                    given_by_caller: tuple[str, ...] = ()) -> None:
    """Check `arguments` for `owner` against `function`'s own signature: names, annotated types, Annotated constraints.

    A registry entry's signature is the source of truth for what `model.params` may hold, the way
    scikit-learn checks `_parameter_constraints`: nothing is listed twice.
    """
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function, include_extras=True)
    allowed = sorted(p for p in signature.parameters if p not in given_by_caller)
    for name, value in arguments.items():
        if name not in allowed:
            raise ConfigError(f"unknown key '{key}.{name}' for {owner}; allowed: {allowed}")
        if name in hints:
            _coerce(f"{key}.{name}", value, hints[name])


def _dataclass_in(tp: Any) -> Any:
    if _is_union(tp):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return tp


def _allows_none(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _check_semantics(exp: Experiment) -> None:
    """Rules that span fields: each names the key to change."""
    if exp.name is not None and not is_folder_name(exp.name):
        raise ConfigError(f"name must be {FOLDER_NAME_RULE}; got {exp.name!r}")
    if exp.data.classes is not None:
        unknown = [c for c in exp.data.classes if c not in EMOTIONS]
        if unknown:
            raise ConfigError(f"data.classes: unknown {unknown[0]!r}; choose from {list(EMOTIONS)}")
        if len(set(exp.data.classes)) < 2 or len(set(exp.data.classes)) != len(exp.data.classes):
            raise ConfigError(f"data.classes must name at least 2 distinct emotions; got {exp.data.classes}")
    cw = exp.train.class_weight
    if isinstance(cw, dict):
        unknown = sorted(set(cw) - set(exp.classes))
        if unknown:
            raise ConfigError(f"train.class_weight: unknown class {unknown[0]!r}; choose from {list(exp.classes)}")


# --- loading ----------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """`yaml.safe_load` as a person reads YAML: 1e-4 is a number, and a key given twice is an error.

    PyYAML follows YAML 1.1, where a float needs a dot (`1e-4` is a string); YAML 1.2 and every
    other parser read it as a number. PyYAML also keeps the last of two equal keys without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's exponents (1e-4, 1.5e3, .5E3): PyYAML's own float resolver needs a dot and a signed exponent.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text the way configs and --set values are read (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b=c` into (['a', 'b'], c), reading c as YAML so that numbers and null work."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=3); got {text!r}")
    key, raw_value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set: bad key {key!r}")
    try:
        value = yaml_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw_value!r} is not valid YAML ({exc.__class__.__name__})") from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b=c` override set (unknown keys are caught by the schema)."""
    import copy

    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe `_Loader`, turning every failure into a one-line ConfigError."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc.__class__.__name__}") from None
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_error_place(exc)}") from None
    if raw is None:
        # An empty file would otherwise train every default for 30 epochs: almost surely not what was meant.
        raise ConfigError(f"{path} is empty; an experiment names at least its model (see configs/ for examples)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections; got {type(raw).__name__}")
    return raw


# Constructs that PyYAML reports where the file ends, though the mistake is where they were opened.
UNCLOSED = {"quoted scalar": "a quoted string", "flow sequence": "a [ list", "flow mapping": "a { mapping"}


def _yaml_error_place(exc: yaml.YAMLError) -> str:
    """' at line N: what is wrong', pointing at the line to fix."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    context, opened = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    unclosed = next((name for key, name in UNCLOSED.items() if key in context), None)
    if unclosed and opened is not None and opened.line != mark.line:
        return f" at line {opened.line + 1}: {unclosed} opened here is not closed ({problem} at line {mark.line + 1})"
    return f" at line {mark.line + 1}: {problem}"


def from_dict(raw: dict[str, Any]) -> Experiment:
    """Validate a raw mapping and return the frozen Experiment."""
    exp = _build(Experiment, raw, "")
    _check_semantics(exp)
    return exp


# Keys that hold paths. A relative path in a config file is read from the file's own folder, so that the
# config works from any working directory; a path given with --set is read from the working directory.
PATH_KEYS = (("data", "path"), ("model", "weights"), ("features", "from_run"), ("features", "cnn_config"))
NOT_PATHS = {("model", "weights"): "imagenet"}


def _paths_from_folder(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    for section, key in PATH_KEYS:
        node = raw.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value and value != NOT_PATHS.get((section, key)):
            node[key] = os.path.normpath(folder / Path(value).expanduser())
    return raw


def read_config(path: Path | str, overrides: list[str] | None = None) -> Experiment:
    """Read, override and check one experiment file against the schema; the name defaults to the file's stem.

    The schema alone: `experiment.load_experiment` is the way in for anything that runs, since only it
    knows the registries (models, classifiers, data sources, backends).
    """
    path = Path(path)
    raw = apply_overrides(_paths_from_folder(read_yaml(path), path.parent), overrides or [])
    raw.setdefault("name", path.stem)
    return from_dict(raw)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (as to_dict or a run's config.yaml gives it) as dotted keys: {'train': {'epochs': 3}} ->
    {'train.epochs': 3}, the way --set names them."""
    if isinstance(config, dict) and config:
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: config} if prefix else {}


def to_dict(exp: Experiment) -> dict[str, Any]:
    """The resolved config as plain data, ready for `yaml.safe_dump`."""
    return dataclasses.asdict(exp)


def describe_schema() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every key: the source of README's config reference."""
    rows = []

    def walk(cls: type, prefix: str, optional_section: bool = False) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            inner = _dataclass_in(hints[f.name])
            if dataclasses.is_dataclass(inner):
                walk(inner, key + ".", _allows_none(hints[f.name]))
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            check = f.metadata.get("check")
            doc = f.metadata.get("doc", "")
            if isinstance(check, Options) and not doc:
                doc = " | ".join(map(str, check.values))
            if optional_section:
                doc = f"(when `{prefix.rstrip('.')}` is set) {doc}"
            rows.append((key, _type_name(hints[f.name]), default, doc))

    walk(Experiment, "")
    return rows
