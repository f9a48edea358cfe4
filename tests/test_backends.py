"""Both Keras backends: smoke runs on JAX (conftest.JAX_SMOKE), and results that cross between backends.

The test process runs TensorFlow. Keras picks its backend once per process, so everything on JAX
runs in one worker process (tests/cli_worker.py) that takes all its commands at once: JAX and
XLA start once. The worker gets KERAS_BACKEND=jax and configs that say `runtime.backend: auto`,
so it also proves that the environment variable is honoured. It starts right after collection
(conftest.py) and runs beside the TensorFlow tests; the tests here read what it did.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import CONFIGS, JAX_SMOKE, REAL_DATA, REPO, config_id, copy_shipped_photos, make_fer_folder, smoke_argv, smoke_classes, smoke_data_path
from helpers import check_run
from test_distribution import assert_mirrored_matches_single, distribution_runs, make_distribution_data
from test_shipped import assert_committed_predictions, assert_committed_score
from test_trust import face_photo
from typer.testing import CliRunner

from fer_bench.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.jax_worker]

CLASSES = ("angry", "happy", "surprise")
EXACT = ["--set", f"data.classes=[{', '.join(CLASSES)}]", "--set", "train.epochs=3", "--set", "train.batch_size=10",
         "--set", "model.params.filters=[8, 16]", "--set", "model.params.dense_units=16"]
SIDE = pytest.StashKey[dict]()
JAX_CONFIGS = [c for c in CONFIGS if config_id(c) in JAX_SMOKE]


def shipped_faces(folder: Path) -> Path:
    """Faces for the shipped model (trained on TensorFlow): real PrivateTest faces, else synthetic ones."""
    if (REAL_DATA / "test").is_dir():
        return copy_shipped_photos(folder)[0]
    return make_fer_folder(folder, counts=(0, 0, 2)) / "test"


def jax_jobs(work: Path) -> dict[str, list[str]]:
    """All this module runs on JAX: the JAX_SMOKE configs' smoke runs, a steps-per-execution pair, the shipped model."""
    exact_data = make_fer_folder(work / "exact-data", counts=(24, 6, 6), classes=CLASSES)
    jobs = {f"smoke:{config_id(c)}": smoke_argv(c, smoke_data_path(), work / "smoke" / c.parent.name) for c in JAX_CONFIGS}
    for steps in (1, 3):
        jobs[f"steps:{steps}"] = ["run", str(REPO / "configs/custom_cnn_aug.yaml"), "--data-dir", str(exact_data),
                                  "--results-dir", str(work / "steps"), "--name", f"steps-{steps}", *EXACT,
                                  "--set", f"runtime.steps_per_execution={steps}"]
    # The worker's XLA has two host devices: one for every run but the mirrored one, which uses both.
    jobs.update({f"distribution:{name}": args for name, args in
                 distribution_runs(make_distribution_data(work / "distribution-data"), work / "distribution").items()})
    faces = shipped_faces(work / "faces")
    jobs["shipped predict"] = ["predict", *map(str, sorted(faces.rglob("*.*g"))), "--json"]
    jobs["shipped evaluate"] = ["evaluate", "--data-dir", str(faces), "--results-dir", str(work / "shipped")]
    # A face inside a larger photo: the default detector (MTCNN, tf.keras networks) runs on JAX too.
    face_photo().save(work / "photo.png")
    jobs["mtcnn predict"] = ["predict", str(work / "photo.png"), "--json"]
    return jobs


def shared_work_folder(config) -> Path | None:
    """Under pytest-xdist, the folder that every test process of this session agrees on; None without it."""
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else Path(tempfile.gettempdir()) / f"fer-bench-jax-{workerinput['testrunuid']}"


def start_jax_side(config) -> None:
    """Start the worker, once per session (once for all of pytest-xdist's processes); `jax_side` waits for it."""
    if SIDE in config.stash:
        return
    work = shared_work_folder(config)
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="fer-bench-jax-"))
    else:
        try:
            work.mkdir()
        except FileExistsError:  # another test process started it: read its results when they are there
            config.stash[SIDE] = {"process": None, "work": work}
            return
    (work / "jobs.json").write_text(json.dumps(jax_jobs(work)))
    # Compilation dominates these tiny runs: XLA's cheapest optimisation level halves the worker's time.
    env = {**os.environ, "KERAS_BACKEND": "jax", "FER_BENCH_CACHE": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                        "--xla_force_host_platform_device_count=2"}
    # At the test processes' own priority: at the lowest, beside two of them on two cores, it was starved and
    # finished two minutes after them, with the cores idle (measured in CI).
    with open(work / "worker.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_worker.py"), str(work / "jobs.json"),
                                    str(work / "results.json")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    config.stash[SIDE] = {"process": process, "work": work}


@pytest.fixture(scope="module")
def jax_side(request) -> tuple[dict, Path]:
    """({job: {exit_code, stdout, output}}, the worker's folder), once the worker has finished."""
    start_jax_side(request.config)
    side = request.config.stash[SIDE]
    waited = time.perf_counter()
    results = side["work"] / "results.json"
    if side["process"] is not None:
        assert side["process"].wait() == 0, (side["work"] / "worker.log").read_text()[-3000:]
    while not results.is_file():  # cli_worker writes it whole, last
        assert time.perf_counter() - waited < 1800, "the JAX worker never finished"
        time.sleep(1)
    print(f"waited {time.perf_counter() - waited:.0f} s for the JAX worker", file=sys.stderr)
    return json.loads((side["work"] / "results.json").read_text()), side["work"]


def outcome(jax_side, job: str) -> dict:
    results, _ = jax_side
    assert results[job]["exit_code"] == 0, results[job]["output"][-3000:]
    return results[job]


def labelled_copy(run: Path, data_root: Path, split: str, target: Path) -> Path:
    """The images a run predicted for `split`, copied into class folders: a dataset for `evaluate`."""
    rows = pd.read_csv(run / "predictions.csv")
    for file, emotion in zip(*rows[rows["split"] == split][["file", "true"]].T.to_numpy()):
        (target / emotion).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_root / file, target / emotion / Path(file).name)
    return target


def probabilities_by_file(predictions: Path, split: str | None = None) -> pd.DataFrame:
    rows = pd.read_csv(predictions)
    if split is not None:
        rows = rows[rows["split"] == split]
    return rows.set_index(rows["file"].map(lambda f: Path(f).name)).filter(like="p_").sort_index()


def faces_by_image(predict_json: str) -> dict[str, dict]:
    return {Path(r["image"]).name: r["faces"][0] for r in json.loads(predict_json)}


@pytest.mark.parametrize("config", JAX_CONFIGS, ids=[config_id(c) for c in JAX_CONFIGS])
def test_config_runs_end_to_end_on_jax(config, jax_side):
    out = outcome(jax_side, f"smoke:{config_id(config)}")
    run = jax_side[1] / "smoke" / config.parent.name / config.stem
    model_file = "model.joblib" if (run / "model.joblib").exists() else "model.keras"
    check_run(run, smoke_classes(config), model_file=model_file)
    environment = json.loads((run / "environment.json").read_text())
    assert environment["keras_backend"] == "jax"
    if model_file == "model.keras":
        assert environment["runtime"]["backend"] == "jax" and environment["runtime"]["jit_compile"] is True
        assert "runtime: Keras on jax, cpu:0, mixed precision off, XLA on" in out["output"]


def test_steps_per_execution_changes_no_number(jax_side, tmp_path):
    """Three steps per device call take exactly the steps of one per call, epoch for epoch, on both backends.

    7 steps per epoch (72 images, batch 10): the executions do not divide the epoch, which is where
    Keras, given steps_per_epoch, would run on into the next epoch's batches.
    """
    data = make_fer_folder(tmp_path / "data", counts=(24, 6, 6), classes=CLASSES)
    for steps in (1, 3):
        result = CliRunner().invoke(app, ["run", str(REPO / "configs/custom_cnn_aug.yaml"), "--data-dir", str(data),
                                          "--results-dir", str(tmp_path / "r"), "--name", f"steps-{steps}", *EXACT,
                                          "--set", f"runtime.steps_per_execution={steps}"])
        assert result.exit_code == 0, result.output
    outcome(jax_side, "steps:1"), outcome(jax_side, "steps:3")
    for root in (tmp_path / "r", jax_side[1] / "steps"):
        one, three = (pd.read_csv(root / f"steps-{n}" / "history.csv") for n in (1, 3))
        assert len(one) == len(three) == 3
        for column in ("loss", "accuracy", "val_loss"):
            assert three[column].to_numpy() == pytest.approx(one[column].to_numpy(), abs=1e-6), (root, column)
        assert json.loads((root / "steps-3" / "environment.json").read_text())["runtime"]["steps_per_execution"] == 3


def test_mirrored_run_matches_a_single_device_run_on_jax(jax_side):
    outcome(jax_side, "distribution:single"), outcome(jax_side, "distribution:mirrored")
    assert_mirrored_matches_single(jax_side[1] / "distribution", "jax")


def test_the_shipped_tensorflow_model_predicts_the_same_on_jax(jax_side):
    """The shipped model was trained on TensorFlow: JAX gives the probabilities this process gives."""
    faces = sorted((jax_side[1] / "faces").rglob("*.*g"))
    result = CliRunner().invoke(app, ["predict", *map(str, faces), "--json"])
    assert result.exit_code == 0, result.output
    on_tf = faces_by_image(result.stdout)
    on_jax = faces_by_image(outcome(jax_side, "shipped predict")["stdout"])
    assert set(on_jax) == set(on_tf) and len(on_tf) == len(faces)
    for image, face in on_jax.items():
        assert face["emotion"] == on_tf[image]["emotion"]
        for (emotion, p_jax), (same, p_tf) in zip(face["top3"], on_tf[image]["top3"]):
            assert emotion == same and p_jax == pytest.approx(p_tf, abs=1e-4)


def test_a_jax_run_evaluates_predicts_and_compares_on_tensorflow(jax_side, tmp_path):
    outcome(jax_side, "smoke:tuned_cnn.yaml")
    jax_run = jax_side[1] / "smoke" / "configs" / "tuned_cnn"
    expected = probabilities_by_file(jax_run / "predictions.csv", "test")
    data = labelled_copy(jax_run, smoke_data_path(), "test", tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(jax_run), "--data-dir", str(data), "--name", "on-tensorflow"])
    assert result.exit_code == 0, result.output
    on_tf = probabilities_by_file(jax_run / "eval" / "on-tensorflow" / "predictions.csv")
    assert list(on_tf.index) == list(expected.index)
    assert on_tf.to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-4)
    result = runner.invoke(app, ["predict", str(jax_run), *map(str, sorted(data.rglob("*.*g"))), "--json"])
    assert result.exit_code == 0, result.output
    predicted = faces_by_image(result.stdout)
    assert sorted(predicted) == list(expected.index)
    for image, face in predicted.items():
        for emotion, probability in face["top3"]:
            assert probability == pytest.approx(expected.loc[image, f"p_{emotion}"], abs=1e-4)
    result = runner.invoke(app, ["compare", str(jax_side[1] / "smoke" / "configs"), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    compared = pd.read_csv(tmp_path / "cmp" / "comparison.csv").set_index("name")
    assert compared.loc["tuned_cnn", "trained_on"] == f"CPU x{os.cpu_count()} (jax)"


@pytest.mark.skipif(not (REAL_DATA / "test").is_dir(), reason="needs ../shared/fer2013 for a real face")
def test_the_default_face_detector_runs_on_jax(jax_side):
    (result,) = json.loads(outcome(jax_side, "mtcnn predict")["stdout"])
    assert len(result["faces"]) == 1 and 100 < result["faces"][0]["box"]["x"] < 200


def test_the_shipped_model_on_jax_gives_the_committed_answers(jax_side, shipped_photos):
    _, committed = shipped_photos
    assert_committed_predictions(outcome(jax_side, "shipped predict")["stdout"], committed)
    outcome(jax_side, "shipped evaluate")
    metrics = json.loads((jax_side[1] / "shipped" / "shipped" / "eval" / "faces" / "metrics.json").read_text())
    assert_committed_score(metrics, committed)
