"""Feature-based models: features from a trained CNN, HOG or raw pixels, classified by scikit-learn.

A feature model is a `FeatureModel`: an extractor (a registry entry, with its settings) and a
scikit-learn pipeline (scaler, optional PCA, classifier). It follows scikit-learn's surface:
`fit` returns self, `predict_proba` gives (n, k). Extracted features are cached per
(extractor, source model, data, split), so a second classifier on the same features skips the work.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench.config import Experiment, SearchConfig, check_arguments
from fer_bench.console import ProgressBar, working
from fer_bench.data.dataset import FerData, stratified_indices
from fer_bench.errors import ConfigError, FerBenchError, RunError
from fer_bench.files import MODEL_FILE, atomic_write, cache_dir
from fer_bench.models.registry import FEATURE_LAYER
from fer_bench.registry import Registry

# --- classifiers -----------------------------------------------------------------------------

CLASSIFIERS = Registry("classifier")


@CLASSIFIERS.register("svm")
def svm(seed: int, kernel: str = "rbf", C: float = 10.0, gamma: str | float = "scale",
        class_weight: str | None = None) -> Any:
    """Kernel SVM (libsvm); its class probabilities are a softmax of the one-vs-rest decision scores."""
    from sklearn.svm import SVC

    return SVC(kernel=kernel, C=C, gamma=gamma, class_weight=class_weight, cache_size=2000, random_state=seed)


@CLASSIFIERS.register("linear_svm")
def linear_svm(seed: int, C: float = 0.1, class_weight: str | None = None) -> Any:
    """Linear SVM (liblinear): scales to all of FER-2013 in seconds."""
    from sklearn.svm import LinearSVC

    return LinearSVC(C=C, class_weight=class_weight, random_state=seed, max_iter=5000)


@CLASSIFIERS.register("random_forest")
def random_forest(seed: int, n_estimators: int = 300, max_depth: int | None = None, min_samples_leaf: int = 1,
                  max_features: str | float = "sqrt", class_weight: str | None = None, n_jobs: int = -1) -> Any:
    """Random forest; probabilities are the trees' votes."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, min_samples_leaf=min_samples_leaf,
                                  max_features=max_features, class_weight=class_weight, n_jobs=n_jobs,
                                  random_state=seed)


@CLASSIFIERS.register("logistic_regression")
def logistic_regression(seed: int, C: float = 1.0, class_weight: str | None = None, max_iter: int = 2000) -> Any:
    """Multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=seed)


def classifier_params(name: str) -> dict[str, Any]:
    return {p.name: p.default for p in inspect.signature(CLASSIFIERS[name]).parameters.values() if p.name != "seed"}


def check_feature_config(exp: Experiment) -> None:
    """Config checks for a feature model: classifier parameters, grid keys, the feature source."""
    name, features = exp.model.name, exp.features
    allowed = classifier_params(name)
    check_arguments("model.params", name, CLASSIFIERS[name], exp.model.params, ("seed",))
    _check_estimator_params("model.params", name, exp.model.params)
    for key, values in exp.search.grid.items():
        if "__" not in key and key not in allowed:
            raise ConfigError(f"unknown key 'search.grid.{key}' for {name}; allowed: {sorted(allowed)}")
        if not values:
            raise ConfigError(f"search.grid.{key} must list at least one value")
        if "__" not in key:
            for value in values:
                check_arguments("search.grid", name, CLASSIFIERS[name], {key: value}, ("seed",))
                _check_estimator_params("search.grid", name, {**exp.model.params, key: value})
    if features is None:
        raise ConfigError(f"model {name} classifies features: add a `features` section (extractor: cnn, hog or pixels)")
    if exp.model.weights is not None or exp.model.fine_tune is not None:
        raise ConfigError(f"model.weights and model.fine_tune do not apply to {name}; set them to null")
    if features.extractor == "cnn":
        if (features.from_run is None) == (features.cnn_config is None):
            raise ConfigError("features: the cnn extractor needs exactly one of from_run (a finished run) "
                              "or cnn_config (an experiment to train first)")
        if features.cnn_config is not None and not Path(features.cnn_config).is_file():
            raise ConfigError(f"features.cnn_config: file not found: {features.cnn_config}")
        if features.from_run is not None:
            source = Path(features.from_run)
            if not (source / "metrics.json").is_file():
                raise ConfigError(f"features.from_run: {source} is not a finished run (no metrics.json)")
            if not (source / MODEL_FILE).is_file():
                raise ConfigError(f"features.from_run: {source} is not a CNN run (no model.keras)")
    elif features.from_run is not None or features.cnn_config is not None:
        raise ConfigError(f"features.from_run and features.cnn_config apply to the cnn extractor, not {features.extractor}")


def _check_estimator_params(key: str, name: str, params: dict[str, Any]) -> None:
    """scikit-learn's own parameter constraints, checked now rather than when the fit starts."""
    estimator = CLASSIFIERS[name](seed=0, **params)
    try:
        estimator._validate_params()  # the check every fit runs first: BaseEstimator._parameter_constraints
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} for {name}: {str(exc).splitlines()[0]}") from None


# --- feature extractors ----------------------------------------------------------------------

EXTRACTORS = Registry("feature extractor")  # name -> function(images, FeatureSpec) -> features


@dataclass
class FeatureSpec:
    """Everything that determines the features of an image: saved inside model.joblib."""

    extractor: str
    settings: dict[str, Any]
    source_model: str | None = None  # cnn: the model.keras the features come from
    _keras_model: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_keras_model"] = None  # reloaded on demand, never pickled
        return state

    def key(self) -> str:
        """Identifies these features: settings and the exact source model file."""
        digest = hashlib.sha256(f"{self.extractor}|{sorted(self.settings.items())}".encode())
        if self.source_model:
            digest.update(hashlib.sha256(Path(self.source_model).read_bytes()).digest())
        return digest.hexdigest()[:20]


@EXTRACTORS.register("cnn")
def cnn_features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The penultimate layer (`features`) of a trained Keras model, in batches."""
    from fer_bench.models.saved import load_model

    if spec._keras_model is None:
        from fer_bench.backends import import_keras

        keras = import_keras()  # the first Keras import of `evaluate` on a feature run: without TensorFlow's banner
        model = load_model(spec.source_model)
        try:
            layer = model.get_layer(FEATURE_LAYER)
        except ValueError:
            raise RunError(f"{spec.source_model} has no '{FEATURE_LAYER}' layer: not a fer-bench CNN") from None
        spec._keras_model = keras.Model(model.inputs[0], layer.output)
    batch_size = int(spec.settings.get("batch_size", 256))
    parts = []
    bar = ProgressBar(len(images), "cnn features")
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)[..., None]
        parts.append(np.asarray(spec._keras_model(batch, training=False), dtype=np.float32))
        bar.update(min(start + batch_size, len(images)))
    bar.close()
    width = spec._keras_model.output_shape[-1]
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


@EXTRACTORS.register("hog")
def hog_features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Histograms of oriented gradients (OpenCV's implementation: fast on 48x48)."""
    import cv2

    cell = int(spec.settings["hog_cell"])
    block = cell * int(spec.settings["hog_block"])
    descriptor = cv2.HOGDescriptor((48, 48), (block, block), (cell, cell), (cell, cell),
                                   int(spec.settings["hog_orientations"]))
    return np.stack([descriptor.compute(image).ravel() for image in images]) if len(images) else np.zeros((0, 0))


@EXTRACTORS.register("pixels")
def pixel_features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The raw pixels, flattened and scaled to [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def extract(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    return EXTRACTORS[spec.extractor](images, spec)


def cached_features(images: np.ndarray, spec: FeatureSpec, data_fingerprint: str, split: str) -> np.ndarray:
    """Features of one split, from the cache when the same extractor has seen the same data."""
    path = cache_dir() / "features" / f"{spec.key()}-{data_fingerprint}-{split}.npy"
    if path.is_file():
        features = np.load(path)
        if len(features) == len(images):
            print(f"  {split}: {spec.extractor} features from the cache", file=sys.stderr)
            return features
    print(f"  {split}: {spec.extractor} features of {len(images)} images", file=sys.stderr, flush=True)
    features = extract(images, spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.save(tmp, features))
    except (OSError, FerBenchError) as exc:
        print(f"warning: could not cache features ({exc})", file=sys.stderr)
    return features


# --- the model -------------------------------------------------------------------------------

def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class FeatureModel:
    """Features plus a fitted scikit-learn pipeline, with the fit/predict_proba surface."""

    classes: tuple[str, ...]
    spec: FeatureSpec
    pipeline: Any

    @property
    def probability_kind(self) -> str:
        # SVMs have no predict_proba (Platt scaling would cost five more fits): use their scores.
        return "predict_proba" if hasattr(self.pipeline, "predict_proba") else "softmax of decision scores"

    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        # scikit-learn orders columns by the labels it saw; align them with all classes.
        if self.probability_kind == "predict_proba":
            scores = self.pipeline.predict_proba(features)
        else:
            scores = self.pipeline.decision_function(features)
            if scores.ndim == 1:
                # Two classes: one score per image, positive for the second; softmax over (-s/2, s/2) is its sigmoid.
                scores = np.stack([-scores / 2, scores / 2], axis=1)
            scores = _softmax(scores)
        full = np.zeros((len(features), len(self.classes)), dtype=np.float32)
        full[:, self.pipeline.classes_] = scores
        return full

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities_from_features(extract(images, self.spec))


def make_pipeline(exp: Experiment, max_components: int) -> Any:
    """Scaler, optional PCA (at most `max_components`: what the training data can support), classifier."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("scale", StandardScaler())]
    if exp.features.pca_components:
        components = min(exp.features.pca_components, max_components)
        if components < exp.features.pca_components:
            print(f"notice: features.pca_components {exp.features.pca_components} > what {max_components} training "
                  f"samples/features allow; using {components}", file=sys.stderr)
        steps.append(("pca", PCA(n_components=components, random_state=exp.train.seed)))
    try:
        classifier = CLASSIFIERS[exp.model.name](seed=exp.train.seed, **exp.model.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params for {exp.model.name}: {exc}") from None
    steps.append(("classifier", classifier))
    return Pipeline(steps)


@dataclass
class SearchResult:
    best_params: dict[str, Any]
    table: Any  # pandas DataFrame of every setting tried, or None
    seconds: float


def grid_search(pipeline: Any, search: SearchConfig, train: tuple[np.ndarray, np.ndarray],
                validation: tuple[np.ndarray, np.ndarray], seed: int) -> SearchResult:
    """Pick classifier parameters on PublicTest (or by CV on train); the test split is never looked at."""
    import time

    import pandas as pd
    from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold

    if not search.grid:
        return SearchResult({}, None, 0.0)
    start = time.perf_counter()
    x_train, y_train = train
    if search.max_samples and search.max_samples < len(y_train):
        keep = stratified_indices(y_train, search.max_samples / len(y_train), seed)
        x_train, y_train = x_train[keep], y_train[keep]
    grid = {key if "__" in key else f"classifier__{key}": values for key, values in search.grid.items()}
    if search.selection == "validation":
        x = np.concatenate([x_train, validation[0]])
        y = np.concatenate([y_train, validation[1]])
        cv: Any = PredefinedSplit(np.r_[np.full(len(y_train), -1), np.zeros(len(validation[1]))])
    else:
        x, y = x_train, y_train
        cv = StratifiedKFold(search.folds, shuffle=True, random_state=seed)
    # refit=False: the final model is fitted on train alone, whatever the selection used.
    searcher = GridSearchCV(pipeline, grid, scoring=search.scoring, cv=cv, n_jobs=search.n_jobs, refit=False)
    settings = int(np.prod([len(v) for v in grid.values()]))
    folds = cv.get_n_splits(x, y)
    with working(f"searching {settings} settings x {folds} fold{'s' if folds > 1 else ''} on {len(x)} samples"):
        searcher.fit(x, y)
    table = pd.DataFrame(searcher.cv_results_).drop(columns=["params"])
    best = {key.removeprefix("classifier__"): value for key, value in searcher.best_params_.items()}
    return SearchResult(best, table, round(time.perf_counter() - start, 2))


def _fit_input(pipeline: Any, shape: tuple[int, int]) -> str:
    """What the classifier itself is fitted on: after a PCA, its components, not the raw features."""
    samples, width = shape
    pca = dict(pipeline.steps).get("pca")
    if pca is None:
        return f"{samples} x {width} features"
    return f"{samples} x {pca.n_components} principal components (of {width} features)"


@dataclass
class FitResult:
    model: FeatureModel
    record: dict
    search_table: Any  # pandas DataFrame, or None without a grid
    features: dict[str, np.ndarray]  # per split, so scoring does not extract again


def fit_feature_model(exp: Experiment, data: FerData, source_model: Path | None) -> FitResult:
    """Extract features, search the grid (never on test), and fit the pipeline on train."""
    import time

    settings = {k: v for k, v in asdict(exp.features).items() if k not in ("from_run", "cnn_config")}
    spec = FeatureSpec(exp.features.extractor, settings, str(Path(source_model).resolve()) if source_model else None)
    tick = time.perf_counter()
    features = {s: cached_features(data.split(s).images, spec, data.fingerprint, s) for s in ("train", "validation", "test")}
    extract_seconds = round(time.perf_counter() - tick, 2)
    searched = min(exp.search.max_samples or len(data.train), len(data.train))
    pipeline = make_pipeline(exp, min(searched - 1, features["train"].shape[1]))
    tick = time.perf_counter()
    try:
        search = grid_search(pipeline, exp.search, (features["train"], data.train.labels),
                             (features["validation"], data.validation.labels), exp.train.seed)
        if search.best_params:
            pipeline.set_params(**{k if "__" in k else f"classifier__{k}": v for k, v in search.best_params.items()})
        tick = time.perf_counter()
        with working(f"fitting {exp.model.name} on {_fit_input(pipeline, features['train'].shape)}"):
            pipeline.fit(features["train"], data.train.labels)
    except ValueError as exc:
        reason = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
        raise FerBenchError(f"fitting {exp.model.name} failed: {reason}") from None
    fit_seconds = round(time.perf_counter() - tick, 2)
    model = FeatureModel(data.classes, spec, pipeline)
    record = {
        "extractor": spec.extractor, "source_model": spec.source_model, "feature_dim": int(features["train"].shape[1]),
        "best_params": search.best_params, "selection": exp.search.selection if exp.search.grid else None,
        "probabilities": model.probability_kind,
        "seconds": {"features": extract_seconds, "search": search.seconds, "fit": fit_seconds},
    }
    return FitResult(model, record, search.table, features)


def load_feature_model(path: Path) -> FeatureModel:
    """Load model.joblib (a pickle: load only files you trust)."""
    import joblib

    try:
        model = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many ways
        raise FerBenchError(f"cannot load {path} as a feature model ({exc.__class__.__name__})") from None
    if not isinstance(model, FeatureModel):
        raise FerBenchError(f"{path} is not a fer-bench feature model")
    if model.spec.source_model and not Path(model.spec.source_model).is_file():
        raise RunError(f"{path} takes its features from {model.spec.source_model}, which is gone")
    return model
