"""Measure fer-bench's data path, input pipeline, training throughput and memory on the real FER-2013.

    python scripts/benchmark.py --data-dir ../shared/fer2013 --out results/benchmark
    python scripts/benchmark.py --accelerator                  # training speed on this machine's GPU
    python scripts/benchmark.py --sweep                        # a sweep's overhead per trial, per executor
    python scripts/benchmark.py --precision                    # float32 against bfloat16 training on this CPU
    python scripts/benchmark.py --scale                        # compare and report over 100 to 1,000 runs

Writes benchmark.json and benchmark.md (the table README carries). Every figure is measured on the
machine it runs on; nothing is asserted. The ImageDataGenerator baseline needs tf_keras, which pins
the full `tensorflow` package: with tensorflow-cpu installed, add it with
`pip install --no-deps tf-keras==<your TensorFlow version>`; without it that row says "not measured".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
BATCH = 64
AUGMENT = {"flip": True, "rotation": 10.0, "zoom": 0.1, "shift": 0.1}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rate(images: int, seconds: float) -> float:
    return round(images / seconds, 1)


# --- data -------------------------------------------------------------------------------------

def bench_data(data_dir: Path) -> dict:
    from fer_bench import EMOTIONS
    from fer_bench.config import DataConfig
    from fer_bench.data.dataset import load_data

    with tempfile.TemporaryDirectory() as cache:
        os.environ["FER_BENCH_CACHE"] = cache
        start = time.perf_counter()
        data = load_data(DataConfig(), EMOTIONS, data_dir, progress=False)
        decode = time.perf_counter() - start
        reloads = []
        for _ in range(3):
            start = time.perf_counter()
            load_data(DataConfig(), EMOTIONS, data_dir, progress=False)
            reloads.append(time.perf_counter() - start)
    del os.environ["FER_BENCH_CACHE"]
    images = len(data.train) + len(data.validation) + len(data.test)
    return {"images": images, "decode_seconds": round(decode, 2), "cached_reload_seconds": round(min(reloads), 3),
            "in_memory_mb": round(sum(data.split(s).images.nbytes for s in ("train", "validation", "test")) / 1e6, 1)}


# --- input pipelines (no model) ---------------------------------------------------------------

def _time_batches(batches, limit: int) -> tuple[int, float]:
    """Images per second over `limit` batches, after one warm-up batch."""
    iterator = iter(batches)
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(limit):
        try:
            x = next(iterator)
        except StopIteration:
            break
        x = x[0] if isinstance(x, tuple) else x
        count += int(x.shape[0])
    return count, time.perf_counter() - start


def keras_augmentation():
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(AUGMENT["rotation"] / 360.0),
        keras.layers.RandomZoom(AUGMENT["zoom"]),
        keras.layers.RandomTranslation(AUGMENT["shift"], AUGMENT["shift"]),
    ])


def bench_pipelines(data_dir: Path, batches: int) -> dict:
    import tensorflow as tf

    from fer_bench import EMOTIONS
    from fer_bench.config import AugmentConfig, DataConfig
    from fer_bench.data.dataset import load_data
    from fer_bench.data.pipeline import training_dataset

    data = load_data(DataConfig(), EMOTIONS, data_dir, progress=False)
    results = {}

    ds, _ = training_dataset(data.train.images, data.train.labels, 7, BATCH, AugmentConfig(**AUGMENT), seed=0)
    results["fer-bench (uint8 in memory, fused affine)"] = rate(*_time_batches(ds, batches))
    ds, _ = training_dataset(data.train.images, data.train.labels, 7, BATCH, AugmentConfig(), seed=0)
    results["fer-bench, no augmentation"] = rate(*_time_batches(ds, batches))

    augment = keras_augmentation()
    in_memory = tf.data.Dataset.from_tensor_slices((data.train.images[..., None], data.train.labels))
    in_memory = in_memory.shuffle(len(data.train), seed=0).batch(BATCH).map(
        lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)
    results["uint8 in memory + 4 Keras augmentation layers"] = rate(*_time_batches(in_memory, batches))

    import keras

    folder = keras.utils.image_dataset_from_directory(
        data_dir / "train", labels="inferred", color_mode="grayscale", image_size=(48, 48), batch_size=BATCH,
        shuffle=True, seed=0, verbose=False)
    folder = folder.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    results["image_dataset_from_directory + 4 Keras augmentation layers"] = rate(
        *_time_batches(folder.prefetch(tf.data.AUTOTUNE), batches))

    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        results["ImageDataGenerator.flow_from_directory (tf_keras)"] = "not measured: tf_keras not installed"
    else:
        generator = ImageDataGenerator(rescale=1 / 255, rotation_range=AUGMENT["rotation"], zoom_range=AUGMENT["zoom"],
                                       width_shift_range=AUGMENT["shift"], height_shift_range=AUGMENT["shift"],
                                       horizontal_flip=True).flow_from_directory(
            data_dir / "train", target_size=(48, 48), color_mode="grayscale", batch_size=BATCH, seed=0)
        results["ImageDataGenerator.flow_from_directory (tf_keras)"] = rate(
            *_time_batches(generator, min(batches, 60)))
    return results


# --- training throughput ---------------------------------------------------------------------

TRAIN_CHILD = r"""
import json, os, resource, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
import keras, tensorflow as tf
from fer_bench import EMOTIONS
from fer_bench.config import AugmentConfig, DataConfig, from_dict
from fer_bench.data.dataset import load_data
from fer_bench.models.registry import build_model
from fer_bench.data.pipeline import training_dataset
keras.utils.set_random_seed(0)
if spec["deterministic"]:
    tf.config.experimental.enable_op_determinism()
keras.mixed_precision.set_global_policy(spec.get("policy", "float32"))
exp = from_dict(spec["experiment"])
model = build_model(exp)
model.compile("adam", keras.losses.CategoricalCrossentropy(), jit_compile=False)
steps, batch = spec["steps"], spec["batch"]
if spec["feed"] == "pipeline":
    data = load_data(DataConfig(), EMOTIONS, spec["data_dir"], progress=False)
    ds, _ = training_dataset(data.train.images, data.train.labels, 7, batch, AugmentConfig(**spec["augment"]),
                             seed=0, num_epochs=8)
else:
    x = tf.random.uniform((batch, 48, 48, 1), 0, 255)
    y = tf.one_hot(tf.random.uniform((batch,), 0, 7, tf.int32), 7)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
model.fit(ds, steps_per_epoch=spec["warmup"], epochs=1, verbose=0)
rates = []
for _ in range(spec["repeats"]):  # this machine's speed wanders: report the median of several timings
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    rates.append(steps * batch / (time.perf_counter() - start))
print(json.dumps({"images_per_second": round(float(np.median(rates)), 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def train_child(data_dir: Path, model: dict, feed: str, steps: int, batch: int = BATCH, deterministic: bool = False,
                warmup: int = 3, repeats: int = 3, policy: str = "float32") -> dict:
    spec = {"experiment": model, "feed": feed, "steps": steps, "batch": batch, "deterministic": deterministic,
            "data_dir": str(data_dir), "augment": AUGMENT, "warmup": warmup, "repeats": repeats, "policy": policy}
    out = subprocess.run([sys.executable, "-c", TRAIN_CHILD, json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


CUSTOM_CNN = {"model": {"name": "custom_cnn"}}
MOBILENET_96 = {"data": {"input_size": 96, "colour": "rgb"}, "model": {"name": "mobilenetv2", "weights": None}}
MOBILENET_224 = {"data": {"input_size": 224, "colour": "rgb"}, "model": {"name": "mobilenetv2", "weights": None}}


def bench_training(data_dir: Path, steps: int) -> dict:
    results = {}
    for label, model, model_steps in (("custom CNN, 48 px", CUSTOM_CNN, steps),
                                       ("MobileNetV2, 96 px", MOBILENET_96, max(steps // 3, 5))):
        log(f"  training throughput: {label}")
        real = train_child(data_dir, model, "pipeline", model_steps)
        synthetic = train_child(data_dir, model, "synthetic", model_steps)
        results[label] = {"pipeline_images_per_second": real["images_per_second"],
                          "synthetic_images_per_second": synthetic["images_per_second"],
                          "ratio": round(real["images_per_second"] / synthetic["images_per_second"], 3)}
    log("  determinism cost: custom CNN")
    determined = train_child(data_dir, CUSTOM_CNN, "pipeline", steps, deterministic=True)
    results["determinism"] = {"images_per_second_off": results["custom CNN, 48 px"]["pipeline_images_per_second"],
                              "images_per_second_on": determined["images_per_second"]}
    return results


def bench_memory(data_dir: Path, steps: int) -> dict:
    log("  peak memory: MobileNetV2 at 224 px")
    real = train_child(data_dir, MOBILENET_224, "pipeline", steps, batch=32, warmup=1, repeats=1)
    synthetic = train_child(data_dir, MOBILENET_224, "synthetic", steps, batch=32, warmup=1, repeats=1)
    upscaled_gib = 28709 * 224 * 224 * 3 * 4 / 2**30
    return {"pipeline_peak_rss_mb": real["peak_rss_mb"], "synthetic_peak_rss_mb": synthetic["peak_rss_mb"],
            "ratio": round(real["peak_rss_mb"] / synthetic["peak_rss_mb"], 3),
            "upscaled_float32_train_set_gib": round(upscaled_gib, 1), "batch": 32}


# --- training speed on this machine's accelerator ------------------------------------------

SPEED_CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
import numpy as np
from fer_bench.experiment import load_experiment
from fer_bench.data.dataset import load_data
from fer_bench.backends import configure_runtime
from fer_bench.training.fit import fit_phase
from fer_bench.data.pipeline import EVALUATION_BATCH
exp = load_experiment(spec["config"], [f"train.batch_size={spec['batch']}", f"train.epochs={spec['epochs']}"])
runtime = configure_runtime(exp.runtime, exp.train.seed, False)  # the runner's own `auto` decisions
import keras, tensorflow as tf
from fer_bench.models.registry import build_model
from fer_bench.data.pipeline import EpochFeed, evaluation_dataset
data = load_data(exp.data, exp.classes, spec["data_dir"], progress=False)
images, labels = data.train.images[: spec["train_images"]], data.train.labels[: spec["train_images"]]
batch = spec["batch"] * runtime.replicas
feed = EpochFeed(images, labels, 7, batch, exp.augment, exp.train.seed)
train = None  # the real pipeline: the feed's own batches
if spec["feed"] != "pipeline":
    # The ceiling: the same model and steps, fed one batch held in memory, no input pipeline. Real
    # faces, not noise: a CPU slows down on the tiny numbers that training on noise can produce.
    x = tf.constant(images[:batch].astype(np.float32)[..., None])
    y = tf.one_hot(labels[:batch], 7)
    train = tf.data.Dataset.from_tensors((x, y)).repeat(feed.steps)
limit = spec["validation_images"]
val = evaluation_dataset(data.validation.images[:limit], data.validation.labels[:limit], 7, max(batch, EVALUATION_BATCH))

compiling = []  # (seconds, count) of XLA compilation on JAX; TensorFlow reports none
if keras.backend.backend() == "jax":
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiling.append(seconds) if event == "/jax/core/compile/backend_compile_duration" else None)

class Clock(keras.callbacks.Callback):
    rows = []
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        compiling.clear()
    def on_train_batch_end(self, batch, logs=None):
        self.logs = logs
    def on_test_begin(self, logs=None):
        # Devices run behind the Python that dispatches to them (JAX especially): reading the last
        # step's loss waits until every training step of the epoch has finished.
        float(self.logs["loss"])
        self.trained = time.perf_counter() - self.start
    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"train_seconds": self.trained, "epoch_seconds": time.perf_counter() - self.start,
                          "compile_seconds": sum(compiling), "compilations": len(compiling)})

# Fitted through the trainer's own seam: the same compile and fit as a run, with a clock beside it.
with runtime.scope():
    model = build_model(exp)
fit_phase(model, exp.train, runtime, feed, val, exp.train.learning_rate, spec["epochs"], [Clock()], dataset=train)
print(json.dumps({"images": min(len(images), feed.steps * batch), "validation_images": len(data.validation.images[:limit]),
                  "epochs": Clock.rows, "runtime": runtime.record()}))
"""


def speed_child(data_dir: Path, config: Path, feed: str, batch: int, epochs: int, train_images: int | None,
                validation_images: int | None, compile_cache: Path) -> dict:
    spec = {"config": str(config), "feed": feed, "batch": batch, "epochs": epochs, "data_dir": str(data_dir),
            "train_images": train_images, "validation_images": validation_images}
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(compile_cache)}
    out = subprocess.run([sys.executable, "-c", SPEED_CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_accelerator(data_dir: Path, config: Path, batches: list[int], epochs: int, train_images: int | None,
                      validation_images: int | None) -> dict:
    """The tuned CNN's training rate with the real augmented pipeline against synthetic tensors, and its start-up.

    Each epoch after the first is a steady one; start-up = the first epoch minus the median steady one
    (compilation, tf.data start, autotuning). Both feeds run the runner's own runtime (`auto`). Every
    child starts with an empty JAX compilation cache (a user's first run), except "pipeline, cached",
    which repeats the pipeline run on the cache the first one filled (a resumed or repeated run).
    """
    results = {}
    for batch in batches:
        row = {}
        with tempfile.TemporaryDirectory() as cache_root:
            for feed, cache in (("pipeline", "first"), ("synthetic", "other"), ("pipeline, cached", "first")):
                log(f"  batch {batch}: {feed}")
                child = speed_child(data_dir, config, feed.split(",")[0], batch, epochs, train_images,
                                    validation_images, Path(cache_root) / cache)
                first, steady = child["epochs"][0], child["epochs"][1:]
                train_seconds = statistics.median(e["train_seconds"] for e in steady)
                epoch_seconds = statistics.median(e["epoch_seconds"] for e in steady)
                row[feed] = {"images_per_second": rate(child["images"], train_seconds),
                             "steady_epoch_seconds": round(epoch_seconds, 2),
                             "first_epoch_seconds": round(first["epoch_seconds"], 2),
                             "startup_seconds": round(first["epoch_seconds"] - epoch_seconds, 2),
                             "first_epoch_compile_seconds": round(first["compile_seconds"], 2),
                             "first_epoch_compilations": first["compilations"],
                             "steady_epoch_compilations": max(e["compilations"] for e in steady)}
                row["images"] = child["images"]  # whole batches of this size
                results.update(runtime=child["runtime"], validation_images=child["validation_images"])
        row["ratio"] = round(row["pipeline"]["images_per_second"] / row["synthetic"]["images_per_second"], 3)
        results[f"batch {batch}"] = row
    return results


def accelerator_name(runtime: dict) -> str:
    names = [a["name"] for a in runtime.get("accelerators", [])]
    return names[0] if names else "CPU only"


def startup(feed: dict) -> str:
    seconds, details = feed["startup_seconds"], []
    if seconds < 0:  # epochs vary more than start-up costs (a busy CPU, few steps)
        details.append(f"first epoch {-seconds} s shorter than a steady one")
    if feed["first_epoch_compilations"]:
        details.append(f"{feed['first_epoch_compile_seconds']} s in XLA, {feed['first_epoch_compilations']} programs")
    if feed["steady_epoch_compilations"]:
        details.append(f"{feed['steady_epoch_compilations']} programs compiled again in a steady epoch")
    text = f"{seconds} s" if seconds >= 0 else "none measurable"
    return text + (f" ({'; '.join(details)})" if details else "")


def accelerator_markdown(report: dict) -> str:
    speed = report["accelerator"]
    runtime = speed["runtime"]
    device = accelerator_name(runtime)
    if device == "CPU only":
        device = f"no GPU: {report['machine']['cpu']}, {report['machine']['cores']} cores"
    lines = [
        f"Measured {report['date']} on {device}; Keras on {runtime['backend']}, mixed precision "
        f"{'on' if runtime['mixed_precision'] else 'off'}, XLA {'on' if runtime['jit_compile'] else 'off'}, "
        f"{runtime['steps_per_execution']} training step(s) per execution (all as `auto` chose them); {report['config']}, "
        f"{'the first ' + format(report['train_images'], ',') if report['train_images'] else 'all'} training images "
        f"in whole batches, {speed['validation_images']:,} validation images, "
        f"{report['epochs']} epochs per timing (the first is start-up; the others' median is the steady epoch).",
        "",
        "| batch (images an epoch) | real augmented pipeline | one batch held in memory (ceiling) | pipeline / ceiling "
        "| start-up, first run | start-up, run again (on JAX: compiled programs cached) |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in speed.items():
        if not key.startswith("batch "):
            continue
        lines.append(f"| {key[6:]} ({row['images']:,}) | {row['pipeline']['images_per_second']:,.0f} images/s | "
                     f"{row['synthetic']['images_per_second']:,.0f} images/s | {row['ratio']:.1%} | "
                     f"{startup(row['pipeline'])} | {startup(row['pipeline, cached'])} |")
    lines += ["", "Start-up is the first epoch minus a steady one. On JAX, the brackets give the first epoch's time in "
              "XLA (compiling, or loading a compiled program from the cache) and the number of programs."]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", " ", text.lower())  # "Intel(R) Xeon(R)" -> intel-xeon
    return "-".join("".join(c if c.isalnum() else " " for c in text).split())


# --- command line speed ----------------------------------------------------------------------

def _median_seconds(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def make_runs(root: Path, count: int, seeds: int = 1) -> None:
    """`count` finished run folders shaped like real FER-2013 runs (3,589 validation and test images): `count /
    seeds` configurations (learning rates) trained with `seeds` seeds each, so that `compare` sees groups."""
    import numpy as np
    import pandas as pd

    from fer_bench import EMOTIONS
    from fer_bench.evaluation.metrics import SplitPredictions, score_splits

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 3589)
    files = [f"PrivateTest_{i:05d}.jpg" for i in range(3589)]
    for number in range(count):
        config, seed = divmod(number, seeds)
        run = root / (f"run-{config:04d}" + (f"/seed={seed}" if seeds > 1 else ""))
        run.mkdir(parents=True)
        skill = rng.random() * 2
        frames = []
        for split in ("validation", "test"):
            probabilities = rng.dirichlet(np.ones(7), size=3589)
            probabilities[np.arange(3589), labels] += skill
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            predicted = probabilities.argmax(axis=1)
            frame = pd.DataFrame({"split": split, "index": np.arange(3589), "file": files,
                                  "true": np.array(EMOTIONS)[labels], "predicted": np.array(EMOTIONS)[predicted]})
            for column, name in enumerate(EMOTIONS):
                frame[f"p_{name}"] = probabilities[:, column].round(6)
            frames.append(frame)
        pd.concat(frames).to_csv(run / "predictions.csv", index=False)
        predictions = {f["split"].iloc[0]: SplitPredictions(list(f["file"]), labels,
                                                           f[[f"p_{c}" for c in EMOTIONS]].to_numpy(), None)
                       for f in frames}
        metrics = {"run": run.name, "model": "custom_cnn", "classes": list(EMOTIONS), "data_fingerprint": "x",
                   "parameters": 1_000_000, "training_seconds": 600.0, "epochs_run": 20,
                   **score_splits(predictions, EMOTIONS)}
        (run / "metrics.json").write_text(json.dumps(metrics))
        pd.DataFrame({"epoch": range(1, 21), "phase": "train", "accuracy": rng.random(20),
                      "val_accuracy": rng.random(20)}).to_csv(run / "history.csv", index=False)
        (run / "config.yaml").write_text(f"model: {{name: custom_cnn}}\ntrain: {{learning_rate: {(config + 1) * 1e-5:.5f}, "
                                         f"seed: {seed}}}\n")
        (run / "status.json").write_text('{"state": "finished"}')


def bench_cli() -> dict:
    cli = [sys.executable, "-m", "fer_bench.cli"]
    with tempfile.TemporaryDirectory() as folder:
        make_runs(Path(folder), 50)
        compare = _median_seconds(cli + ["compare", folder], repeats=3)
    return {"help_seconds": _median_seconds(cli + ["--help"]), "compare_50_runs_seconds": compare}


# --- sweeps ----------------------------------------------------------------------------------

SWEEP_TRIALS = 8
SWEEP_SETS = ["data.max_per_class=40", "train.epochs=2", "train.batch_size=32", "train.early_stopping_patience=null",
              "model.params.filters=[16, 32]", "model.params.dense_units=32"]
SWEEP_EXECUTORS = {"local, 1 worker": ["--jobs", "1"], "local, 2 workers": ["--jobs", "2"],
                   "ray, local instance": ["--executor", "ray"]}


def bench_sweep(data_dir: Path) -> dict:
    """8 tiny trials (seeds of a small CNN on 40 images a class) through `fer-bench sweep`, per executor.

    Wall time against what the trials themselves took: their training, and their whole run (model build,
    training, evaluation, artifacts). What is left is the sweep's own cost: process start, imports, the
    driver's data load, handing the data to the workers, Ray's start-up.
    """
    rows = {}
    for label, options in SWEEP_EXECUTORS.items():
        with tempfile.TemporaryDirectory() as folder:
            args = [sys.executable, "-m", "fer_bench.cli", "sweep", str(REPO / "configs" / "custom_cnn.yaml"),
                    "--seeds", str(SWEEP_TRIALS), "--data-dir", str(data_dir), "--results-dir", folder, "--name", "bench",
                    *options, *(a for s in SWEEP_SETS for a in ("--set", s))]
            log(f"sweep: {label}")
            start = time.perf_counter()
            done = subprocess.run(args, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"error: the {label} sweep failed:\n{done.stderr[-2000:]}")
            runs = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("environment.json"))]
            metrics = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("metrics.json"))]
            workers = 2 if "2 workers" in label else 1
            if "ray" in label:
                workers = int(next(line for line in done.stderr.splitlines() if line.startswith("ray: "))
                              .split(", ")[1].split()[0])
            training = sum(m["training_seconds"] for m in metrics)
            in_run = sum(r["seconds"]["total"] for r in runs)
            rows[label] = {
                "workers": workers, "trials": len(metrics), "wall_seconds": round(wall, 1),
                "training_seconds": round(training, 1), "run_seconds": round(in_run, 1),
                # Worker-seconds spent on anything but training, per trial; and inside each run, beyond its training.
                "overhead_per_trial_seconds": round((wall * workers - training) / len(metrics), 2),
                "in_run_overhead_per_trial_seconds": round((in_run - training) / len(metrics), 2),
                "outside_runs_seconds": round(wall * workers - in_run, 1),
                "data_loaded_once": f"loaded once for {SWEEP_TRIALS} trials" in done.stderr,
            }
    return {"trials": SWEEP_TRIALS, "config": "configs/custom_cnn.yaml", "sets": SWEEP_SETS, "executors": rows}


def sweep_markdown(report: dict) -> str:
    sweep = report["sweep"]
    lines = [f"Measured {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores, no GPU): "
             f"{sweep['trials']} trials (seeds) of `{sweep['config']}` with {', '.join(f'`{s}`' for s in sweep['sets'])}.",
             "", "| executor | workers | wall | trials' training | trials' whole runs | overhead per trial "
             "(wall x workers - training) / trials | of which inside the run | outside the runs (start-up) | "
             "data decoded once |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row in sweep["executors"].items():
        lines.append(f"| {label} | {row['workers']} | {row['wall_seconds']} s | {row['training_seconds']} s | "
                     f"{row['run_seconds']} s | {row['overhead_per_trial_seconds']} s | "
                     f"{row['in_run_overhead_per_trial_seconds']} s | {row['outside_runs_seconds']} s | "
                     f"{'yes' if row['data_loaded_once'] else 'no'} |")
    return "\n".join(lines) + "\n"


# --- precision on a CPU ------------------------------------------------------------------------

def bench_precision(data_dir: Path, steps: int) -> dict:
    """The tuned CNN's training rate (real pipeline) in float32 and under mixed_bfloat16, on this CPU."""
    import yaml

    from fer_bench.backends import cpu_features

    tuned = yaml.safe_load((REPO / "configs" / "cpu" / "tuned_cnn.yaml").read_text())
    model = {"model": tuned["model"]}
    rates = {}
    for policy in ("float32", "mixed_bfloat16"):
        log(f"  precision: {policy}")
        rates[policy] = train_child(data_dir, model, "pipeline", steps, policy=policy, repeats=5)["images_per_second"]
    return {"cpu_features": cpu_features(), "model": "configs/cpu/tuned_cnn.yaml (1.24M parameters)", "steps": steps,
            "images_per_second": rates, "speed_up": round(rates["mixed_bfloat16"] / rates["float32"], 3)}


def precision_markdown(report: dict) -> str:
    p = report["precision"]
    return (f"Measured {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores; bfloat16 features: "
            f"{', '.join(f for f in p['cpu_features'] if 'bf16' in f or 'amx' in f) or 'none'}): {p['model']}, batch 64, "
            f"the real augmented pipeline, median of 5 timings of {p['steps']} steps.\n\n"
            "| precision | images/s |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in p["images_per_second"].items())
            + f"| mixed_bfloat16 / float32 | {p['speed_up']}x |\n")


# --- compare and report over many runs -------------------------------------------------------

SCALE_LAYOUTS = ((100, 1), (400, 1), (1000, 1), (1000, 5))  # (runs, seeds per configuration)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and every process under it (compare's readers are its children)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def _timed(args: list[str]) -> dict:
    """Wall seconds and the peak of the summed memory of the command's process tree (sampled every 0.1 s)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {process.stderr.read().decode()[-500:]}")
    return {"seconds": round(seconds, 1), "peak_gb": round(peak / 1e9, 2)}


def bench_scale() -> dict:
    """`fer-bench compare` and `fer-bench report` over synthetic run folders shaped like FER-2013 runs."""
    import pandas as pd

    cli = [sys.executable, "-m", "fer_bench.cli"]
    rows = []
    for count, seeds in SCALE_LAYOUTS:
        with tempfile.TemporaryDirectory() as folder:
            log(f"scale: {count} runs, {seeds} seed(s) per configuration")
            runs = Path(folder) / "runs"
            make_runs(runs, count, seeds)
            compare = _timed(cli + ["compare", str(runs), "--out", str(Path(folder) / "out")])
            report = _timed(cli + ["report", str(runs), "-o", str(Path(folder) / "report.html")])
            out = Path(folder) / "out"
            from PIL import Image

            rows.append({
                "runs": count, "seeds": seeds, "rows": len(pd.read_csv(out / "comparison.csv")),
                "pairs_tested": len(pd.read_csv(out / "significance.csv")),
                "significance_csv_mb": round((out / "significance.csv").stat().st_size / 1e6, 2),
                "comparison_png_height": Image.open(out / "comparison.png").size[1],
                "report_mb": round((Path(folder) / "report.html").stat().st_size / 1e6, 1),
                "compare": compare, "report": report})
    return {"layouts": rows}


def scale_markdown(report: dict) -> str:
    lines = [f"Measured {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores): "
             "`fer-bench compare` and `fer-bench report` over synthetic finished runs shaped like FER-2013 runs "
             "(3,589 validation and 3,589 test predictions, 20 epochs of history each); memory is the peak of the "
             "process and its reader processes together.", "",
             "| runs | seeds per config | rows | pairs tested | significance.csv | comparison.png height | compare | "
             "compare memory | report | report memory | report size |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["scale"]["layouts"]:
        lines.append(f"| {row['runs']} | {row['seeds']} | {row['rows']} | {row['pairs_tested']} | "
                     f"{row['significance_csv_mb']} MB | {row['comparison_png_height']} px | {row['compare']['seconds']} s | "
                     f"{row['compare']['peak_gb']} GB | {row['report']['seconds']} s | {row['report']['peak_gb']} GB | "
                     f"{row['report_mb']} MB |")
    return "\n".join(lines) + "\n"


# --- report ----------------------------------------------------------------------------------

def machine() -> dict:
    from fer_bench.runs.artifacts import cpu_name, package_versions

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": package_versions().get("tensorflow-cpu") or package_versions().get("tensorflow"),
            "gpu": None}


def markdown(report: dict) -> str:
    data, pipes, train, memory, cli = (report[k] for k in ("data", "pipelines", "training", "memory", "cli"))
    fast = pipes["fer-bench (uint8 in memory, fused affine)"]
    legacy = pipes["ImageDataGenerator.flow_from_directory (tf_keras)"]
    lines = [
        f"Measured {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores, no GPU), "
        f"TensorFlow {report['machine']['tensorflow']}, batches of {BATCH}, augmentation = flip, rotation 10 deg, "
        "zoom 0.1, shift 0.1. Training rates are the median of three timings; on this shared machine a single "
        "timing can stray by 20% or more.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| decode all {data['images']:,} images | {data['decode_seconds']} s | - |",
        f"| cached reload | {data['cached_reload_seconds']} s | <= 1 s |",
        f"| dataset held in memory (uint8, 48x48) | {data['in_memory_mb']} MB | - |",
    ]
    for name, value in pipes.items():
        shown = f"{value:,.0f} images/s" if isinstance(value, float) else value
        lines.append(f"| input pipeline: {name} | {shown} | - |")
    if isinstance(legacy, float):
        lines.append(f"| fer-bench pipeline / ImageDataGenerator | {fast / legacy:.1f}x | >= 10x |")
    for label in ("custom CNN, 48 px", "MobileNetV2, 96 px"):
        row = train[label]
        lines.append(f"| training {label}: real pipeline / synthetic tensors | {row['pipeline_images_per_second']:,.0f} / "
                     f"{row['synthetic_images_per_second']:,.0f} images/s = {row['ratio']:.1%} | >= 95% |")
    det = train["determinism"]
    lines.append(f"| `train.deterministic: true` (custom CNN) | {det['images_per_second_on']:,.0f} vs "
                 f"{det['images_per_second_off']:,.0f} images/s off | - |")
    lines.append(f"| peak RSS, MobileNetV2 at 224x224x3, batch {memory['batch']}: real pipeline / synthetic | "
                 f"{memory['pipeline_peak_rss_mb']:,.0f} / {memory['synthetic_peak_rss_mb']:,.0f} MB = "
                 f"{memory['ratio']:.2f}x (an upscaled float32 train set alone: "
                 f"{memory['upscaled_float32_train_set_gib']} GiB) | <= 1.2x |")
    lines.append(f"| `fer-bench --help` | {cli['help_seconds']} s | < 1 s |")
    lines.append(f"| `fer-bench compare` over 50 runs | {cli['compare_50_runs_seconds']} s | < 5 s |")
    return "\n".join(lines) + "\n"


def save(out: Path, name: str, report: dict, text: str) -> None:
    """<name>.json (every figure) and <name>.md (the table README carries) into `out`, and the table on the console."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "fer2013")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmark")
    parser.add_argument("--batches", type=int, default=200, help="batches timed per input pipeline")
    parser.add_argument("--steps", type=int, default=40, help="training steps per timing (three timings per model)")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: the cost of `fer-bench sweep` per trial, on local workers and on Ray")
    parser.add_argument("--precision", action="store_true",
                        help="instead: the tuned CNN's training rate in float32 and mixed_bfloat16 on this CPU")
    parser.add_argument("--scale", action="store_true", help="instead: compare and report over 100 to 1,000 runs")
    parser.add_argument("--accelerator", action="store_true",
                        help="instead: the tuned CNN's training rate, real pipeline against synthetic tensors, and "
                             "its start-up cost, on this machine's GPU (or CPU), with the backend KERAS_BACKEND names")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tuned_cnn.yaml", help="--accelerator: model")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256], help="--accelerator: per device")
    parser.add_argument("--epochs", type=int, default=4, help="--accelerator: epochs per timing (the first is start-up)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="--accelerator: train on the first N images only (a CPU cannot do full epochs quickly)")
    parser.add_argument("--validation-images", type=int, default=None,
                        help="--accelerator: validate on the first N PublicTest images only")
    args = parser.parse_args()
    if not (args.data_dir / "train").is_dir():
        sys.exit(f"error: no FER-2013 at {args.data_dir} (expected train/ and test/)")
    if args.epochs < 2:
        sys.exit("error: --epochs must be at least 2 (the first one is start-up)")
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    if args.sweep:
        report["sweep"] = bench_sweep(args.data_dir)
        return save(args.out, "sweep", report, sweep_markdown(report))
    if args.precision:
        report["precision"] = bench_precision(args.data_dir, args.steps)
        # One file per CPU and bfloat16 units: two machines sold under one name may differ in them.
        units = [f for f in report["precision"]["cpu_features"] if "bf16" in f]
        name = f"precision-{slug(report['machine']['cpu'])}-{slug(' '.join(units)) or 'no-bf16'}"
        return save(args.out, name, report, precision_markdown(report))
    if args.scale:
        report["scale"] = bench_scale()
        return save(args.out, "scale", report, scale_markdown(report))
    if args.accelerator:
        report.update(config=str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
                      epochs=args.epochs, train_images=args.train_images)
        report["accelerator"] = bench_accelerator(args.data_dir, args.config, args.batch_sizes, args.epochs,
                                                  args.train_images, args.validation_images)
        runtime = report["accelerator"]["runtime"]
        name = f"accelerator-{runtime['backend']}-{slug(accelerator_name(runtime))}"
        return save(args.out, name, report, accelerator_markdown(report))
    stages = {
        "data": lambda: bench_data(args.data_dir),
        "pipelines": lambda: bench_pipelines(args.data_dir, args.batches),
        "training": lambda: bench_training(args.data_dir, args.steps),
        "memory": lambda: bench_memory(args.data_dir, max(args.steps // 6, 4)),
        "cli": bench_cli,
    }
    for name, measure in stages.items():
        log(name)
        report[name] = measure()
    save(args.out, "benchmark", report, markdown(report))


if __name__ == "__main__":
    main()
