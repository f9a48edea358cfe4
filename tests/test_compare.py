import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_fer_folder
from helpers import check_run
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.evaluation.metrics import bootstrap_scores, confidence_interval, holm_adjusted, mcnemar_exact
from fer_bench.evaluation.predictors import load_predictor
from fer_bench.reporting.compare import comparison_table, significance_table, significance_text, trained_on
from fer_bench.reporting.groups import group_runs
from fer_bench.runs.artifacts import Run, read_run

runner = CliRunner()
CLASSES = ("angry", "happy", "surprise")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_mcnemar_matches_the_hand_computed_binomial():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    a_only, b_only, p = mcnemar_exact(a, b)
    assert (a_only, b_only) == (10, 2)
    assert p == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(a, a) == (0, 0, 1.0)


def test_holm_matches_the_hand_computed_step_down():
    # sorted: 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1 -> 0.02, 0.03, 0.06, 0.04 -> never lower than the one before
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.6]).tolist() == [1.0, 1.0]
    assert holm_adjusted([]).tolist() == []


def scored_run(name: str, wrong: int, fingerprint: str = "same", images: int = 100) -> Run:
    """A run whose test predictions miss the first `wrong` of `images` images."""
    predicted = ["sad"] * wrong + ["happy"] * (images - wrong)
    predictions = pd.DataFrame({"split": "test", "file": [f"{i}.png" for i in range(images)], "true": "happy",
                                "predicted": predicted})
    return Run(name, None, {"classes": ["happy", "sad"], "data_fingerprint": fingerprint}, {}, predictions, None)


def test_verdicts_hold_over_all_the_pairs_tested_and_the_console_gets_the_neighbours():
    runs = [scored_run("a", 0), scored_run("d", 0), scored_run("other", 3, fingerprint="elsewhere", images=60),
            scored_run("b", 6), scored_run("c", 40)]
    table = significance_table(group_runs(runs), "test")
    assert len(table) == 6  # every pair of a, d, b, c; the run on other test images is tested against none
    assert set(table["test"]) == {"McNemar over test images"}
    b_vs_a = table[(table["run_a"] == "a") & (table["run_b"] == "b")].iloc[0]
    # b misses 6 images a gets right: p = 2 * 0.5^6, below 0.05 alone; 3rd smallest of 6, so x3 after Holm
    assert b_vs_a["p_value"] == pytest.approx(0.03125) and b_vs_a["p_adjusted"] == pytest.approx(0.09375)
    assert b_vs_a["summary"] == "a vs b: no significant difference (McNemar, adjusted p=0.0938)"
    text = significance_text(table, [run.name for run in runs])
    assert text[0].startswith("McNemar's exact test on the same images for single runs; p adjusted by Holm's method "
                              "for the 6 pairs tested")
    assert text[1:] == ["a vs d: no significant difference (McNemar, adjusted p=1)",
                        "d vs b: no significant difference (McNemar, adjusted p=0.0938)",
                        "b beats c (McNemar, adjusted p=4.66e-10)"]  # 2 * 0.5^34, x4 as the 3rd smallest
    assert significance_text(significance_table(group_runs(runs[:1]), "test"), ["a"]) == []


def test_bootstrap_is_seeded_and_has_the_sampling_spread():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 2000)
    y_pred = np.where(rng.random(2000) < 0.7, y_true, (y_true + 1) % 3)
    first = bootstrap_scores(y_true, y_pred, 3, 2000, seed=1)
    assert np.array_equal(first["accuracy"], bootstrap_scores(y_true, y_pred, 3, 2000, seed=1)["accuracy"])
    accuracy = (y_true == y_pred).mean()
    low, high = confidence_interval(first["accuracy"])
    assert low < accuracy < high
    # the spread of a resampled proportion is sqrt(p (1 - p) / n)
    assert first["accuracy"].std() == pytest.approx(np.sqrt(accuracy * (1 - accuracy) / 2000), rel=0.1)
    from sklearn.metrics import f1_score

    assert np.median(first["macro_f1"]) == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=0.01)
    perfect = bootstrap_scores(y_true, y_true, 3, 50)
    assert (perfect["accuracy"] == 1).all() and (perfect["macro_f1"] == 1).all()


def add_broken_runs(results):
    (results / "failed").mkdir(exist_ok=True)
    (results / "failed" / "status.json").write_text('{"state": "failed", "error": "boom"}')
    (results / "half").mkdir(exist_ok=True)
    (results / "half" / "status.json").write_text('{"state": "running"}')
    shutil.copytree(results / "custom_cnn", results / "nopred", dirs_exist_ok=True)
    (results / "nopred" / "predictions.csv").unlink()
    shutil.copytree(results / "custom_cnn", results / "badjson", dirs_exist_ok=True)
    (results / "badjson" / "metrics.json").write_text('{"classes": ')


@pytest.mark.slow
def test_compare_writes_table_significance_and_charts(trained_runs, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(trained_runs, results)
    add_broken_runs(results)
    out = invoke("compare", results)
    assert out.exit_code == 0, out.output
    assert "warning: skipping failed: not finished (status failed)" in out.output
    assert "warning: skipping half: interrupted (its process ended or was stopped while training; run the same command again " \
           "to resume it)" in out.output
    assert "warning: skipping nopred: predictions.csv is missing" in out.output
    assert "warning: skipping badjson: metrics.json is unreadable (JSONDecodeError)" in out.output
    table = pd.read_csv(results / "comparison.csv")
    assert sorted(table["name"]) == ["custom_cnn", "custom_cnn_aug"]
    assert table["accuracy"].is_monotonic_decreasing
    for run in ("custom_cnn", "custom_cnn_aug"):
        metrics = json.loads((results / run / "metrics.json").read_text())
        row = table[table["name"] == run].iloc[0]
        assert row["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
        assert row["data"] == "same"
        assert row["trained_on"] == f"CPU x{os.cpu_count()} (tensorflow)"
    significance = pd.read_csv(results / "significance.csv")
    assert len(significance) == 1 and 0 <= significance["p_value"][0] <= 1
    assert significance["summary"][0] in out.output
    assert "| 1 | " in (results / "comparison.md").read_text()
    for chart in ("comparison.png", "per_class_f1.png", "confusion_matrices.png", "training_curves.png"):
        assert (results / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_compare_options_and_flags_for_other_data(trained_runs, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(trained_runs, results)
    # Trained on other images, scored on the same ones: ranked and tested, and marked.
    metrics_file = results / "custom_cnn_aug" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["data_fingerprint"] = "something-else"
    metrics_file.write_text(json.dumps(metrics))
    shutil.copytree(results / "custom_cnn", results / "copy")
    # Scored on other images: last, not ranked, tested against nothing.
    shutil.copytree(results / "custom_cnn", results / "elsewhere")
    predictions = pd.read_csv(results / "elsewhere" / "predictions.csv")
    predictions["file"] = "other/" + predictions["file"]
    predictions.to_csv(results / "elsewhere" / "predictions.csv", index=False)
    out = invoke("compare", results, "--out", tmp_path / "out", "--split", "validation", "--metric", "macro_f1")
    assert out.exit_code == 0, out.output
    table = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("name")
    assert table.index[-1] == "elsewhere" and table.loc["elsewhere", "data"] == "DIFFERENT"
    assert table.loc["custom_cnn_aug", "data"] == "other train data" and table.loc["copy", "data"] == "same"
    assert table["macro_f1"].iloc[:-1].is_monotonic_decreasing
    assert "scored on other test images" in out.output and "trained on other images" in out.output
    document = (tmp_path / "out" / "comparison.md").read_text()
    assert "| - | elsewhere |" in document and "| custom_cnn_aug |" in document
    significance = pd.read_csv(tmp_path / "out" / "significance.csv")
    pairs = {frozenset(pair) for pair in significance[["run_a", "run_b"]].values.tolist()}
    assert pairs == {frozenset(p) for p in (("copy", "custom_cnn"), ("copy", "custom_cnn_aug"), ("custom_cnn", "custom_cnn_aug"))}
    assert not (results / "comparison.csv").exists()


@pytest.mark.parametrize("environment, expected", [
    ({"cpu_count": 2, "runtime": {"backend": "jax", "devices": ["cuda:0", "cuda:1"],
                                  "accelerators": [{"name": "NVIDIA H100 80GB HBM3"}] * 2}}, "NVIDIA H100 80GB HBM3 x2 (jax)"),
    ({"cpu_count": 16, "keras_backend": "tensorflow", "runtime": {"devices": ["/device:GPU:0"]}}, "GPU (tensorflow)"),
    ({"cpu_count": 2, "runtime": {"devices": ["/device:CPU:0"]}}, "CPU x2"),  # recorded before backends were
    ({"cpu_count": 8, "keras_backend": "jax"}, "CPU x8"),  # a feature model: scikit-learn trains on the CPU
    ({}, "-"),
])
def test_trained_on_reads_the_device_and_backend_a_run_recorded(environment, expected):
    assert trained_on(environment) == expected


def test_compare_errors_are_one_line(tmp_path):
    out = invoke("compare", tmp_path / "none")
    assert out.exit_code == 1 and out.output.strip() == f"error: results directory not found: {tmp_path / 'none'}"
    out = invoke("compare", tmp_path)
    assert out.exit_code == 1 and out.output.strip() == f"error: no finished runs under {tmp_path}"
    out = invoke("compare", tmp_path, "--metric", "speed")
    assert out.exit_code == 1 and "--metric must be one of ['accuracy'" in out.output


@pytest.mark.slow
def test_compare_out_pointed_at_a_file(trained_runs, tmp_path):
    target = tmp_path / "comparison.txt"
    target.write_text("notes")
    out = invoke("compare", trained_runs, "--out", target)
    assert out.exit_code == 1
    assert out.output.strip().splitlines()[-1] == f"error: {target} is a file; give a folder"


@pytest.mark.slow
def test_ensemble_averages_member_probabilities(trained_runs, tmp_path):
    members = [trained_runs / "custom_cnn", trained_runs / "custom_cnn_aug"]
    out = invoke("ensemble", *members, "--name", "both", "--results-dir", tmp_path)
    assert out.exit_code == 0, out.output
    check_run(tmp_path / "both", CLASSES, model_file=None)
    columns = [f"p_{c}" for c in CLASSES]
    frames = [pd.read_csv(m / "predictions.csv") for m in members]
    mean = (frames[0][columns].to_numpy() + frames[1][columns].to_numpy()) / 2
    ensemble = pd.read_csv(tmp_path / "both" / "predictions.csv")
    assert np.allclose(ensemble[columns].to_numpy(), mean, atol=1e-5)
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert metrics["kind"] == "ensemble" and len(metrics["members"]) == 2
    again = invoke("ensemble", *members, "--name", "both", "--results-dir", tmp_path)
    assert again.exit_code == 1 and "already exists" in again.output
    # Its model.keras averages the members' models: on new faces it predicts what the members average to.
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    member_mean = np.mean([load_predictor(m).predict_proba(faces) for m in members], axis=0)
    assert np.allclose(load_predictor(tmp_path / "both").predict_proba(faces), member_mean, atol=1e-5)


@pytest.mark.slow
def test_ensemble_tta_scores_the_averaged_model_on_each_test_face_and_its_mirror(trained_runs, fer_folder, tmp_path):
    from PIL import Image

    members = [trained_runs / "custom_cnn", trained_runs / "custom_cnn_aug"]
    out = invoke("ensemble", *members, "--name", "both", "--results-dir", tmp_path, "--tta", "flip",
                 "--data-dir", fer_folder)
    assert out.exit_code == 0, out.output
    assert "with flip test-time augmentation: accuracy" in out.output
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    test = pd.read_csv(tmp_path / "both" / "predictions.csv").query("split == 'test'")
    faces = np.stack([np.asarray(Image.open(fer_folder / file)) for file in test["file"]])
    model = load_predictor(tmp_path / "both")
    mirrored = (model.predict_proba(faces) + model.predict_proba(faces[:, :, ::-1])) / 2
    predicted = np.array(CLASSES)[mirrored.argmax(axis=1)]
    assert metrics["test_tta"]["mode"] == "flip"
    assert metrics["test_tta"]["accuracy"] == pytest.approx((predicted == test["true"].to_numpy()).mean())
    assert metrics["test"]["accuracy"] == pytest.approx(test["correct"].mean())  # the plain score stays beside it


@pytest.mark.slow
def test_an_ensemble_predicts_in_float32_and_scores_a_mixed_precision_member_again(trained_runs, fer_folder, tmp_path):
    from PIL import Image

    from fer_bench.models.saved import computes_in_float32, load_model

    out = invoke("run", REPO / "configs" / "custom_cnn.yaml", "--data-dir", fer_folder, "--results-dir", tmp_path,
                 "--name", "bf16", "--set", "data.classes=[angry, happy, surprise]", "--set", "train.epochs=1",
                 "--set", "model.params.filters=[8]", "--set", "runtime.mixed_precision=true")
    assert out.exit_code == 0, out.output
    assert not computes_in_float32(load_model(tmp_path / "bf16" / "model.keras"))  # saved with its bfloat16 layers
    # Alone it does not ship: its metrics are what it scored in bfloat16.
    shipped = (REPO / "src" / "fer_bench" / "shipped" / "model.keras").read_bytes()
    refused = subprocess.run([sys.executable, REPO / "scripts" / "ship_model.py", tmp_path / "bf16"], capture_output=True,
                             text=True)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'bf16'} computes in bfloat16 or float16 (trained under mixed precision): ship a float32 run")
    assert (REPO / "src" / "fer_bench" / "shipped" / "model.keras").read_bytes() == shipped
    members = [trained_runs / "custom_cnn", tmp_path / "bf16"]
    out = invoke("ensemble", *members, "--name", "pair", "--results-dir", tmp_path, "--data-dir", fer_folder)
    assert out.exit_code == 0, out.output
    metrics = check_run(tmp_path / "pair", CLASSES, model_file=None)
    assert metrics["rebuilt_in_float32"] == ["bf16"]
    model = load_model(tmp_path / "pair" / "model.keras")
    assert computes_in_float32(model)
    # Its scores are the float32 model's own, not the average of what the bfloat16 member predicted.
    test = pd.read_csv(tmp_path / "pair" / "predictions.csv").query("split == 'test'")
    faces = np.stack([np.asarray(Image.open(fer_folder / file)) for file in test["file"]])
    own = load_predictor(tmp_path / "pair").predict_proba(faces)
    assert np.allclose(test[[f"p_{c}" for c in CLASSES]].to_numpy(), own, atol=1e-6)
    assert metrics["test"]["accuracy"] == pytest.approx((own.argmax(axis=1) == test["true"].map(CLASSES.index)).mean())
    other_faces = make_fer_folder(tmp_path / "other", seed=5)
    wrong_data = invoke("ensemble", *members, "--name", "x", "--results-dir", tmp_path, "--data-dir", other_faces)
    assert wrong_data.exit_code == 1 and wrong_data.output.strip().splitlines()[-1] == (
        "error: the data found to score the averaged model is not the data that custom_cnn was evaluated on")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ensemble_tta_refuses_what_it_cannot_score(trained_runs, tmp_path):
    members = [trained_runs / "custom_cnn", trained_runs / "custom_cnn_aug"]
    bad_mode = invoke("ensemble", *members, "--name", "x", "--results-dir", tmp_path, "--tta", "blur")
    assert bad_mode.exit_code == 1 and bad_mode.output.strip() == (
        "error: --tta must be one of ['none', 'flip', 'ten_crop']; got 'blur'")
    other_faces = make_fer_folder(tmp_path / "other", seed=5)
    wrong_data = invoke("ensemble", *members, "--name", "x", "--results-dir", tmp_path, "--tta", "flip",
                        "--data-dir", other_faces)
    assert wrong_data.exit_code == 1 and wrong_data.output.strip().splitlines()[-1] == (
        "error: the data found to score the averaged model is not the data that custom_cnn was evaluated on")
    modelless = tmp_path / "modelless"
    shutil.copytree(trained_runs / "custom_cnn", modelless)
    (modelless / "model.keras").unlink()
    no_model = invoke("ensemble", modelless, members[1], "--name", "y", "--results-dir", tmp_path, "--tta", "flip")
    assert no_model.exit_code == 1 and no_model.output.strip() == (
        "error: --tta needs every member's model.keras to score new views; modelless has none")
    assert not (tmp_path / "y").exists()
    assert invoke("ensemble", *members, "--name", "pair", "--results-dir", tmp_path).exit_code == 0
    nested = invoke("ensemble", tmp_path / "pair", members[0], "--name", "z", "--results-dir", tmp_path, "--tta", "flip")
    assert nested.exit_code == 1 and nested.output.strip().startswith(
        "error: scoring the averaged model reads the images as pair's config.yaml says, and cannot: unknown key "
        "'model.members'")


@pytest.mark.slow
def test_ensemble_rejects_bad_members(trained_runs, tmp_path):
    one = invoke("ensemble", trained_runs / "custom_cnn", "--name", "x", "--results-dir", tmp_path)
    assert one.exit_code == 1 and one.output.strip() == "error: an ensemble needs at least two runs"
    broken = tmp_path / "broken"
    shutil.copytree(trained_runs / "custom_cnn", broken)
    (broken / "predictions.csv").unlink()
    out = invoke("ensemble", trained_runs / "custom_cnn", broken, "--name", "x", "--results-dir", tmp_path)
    assert out.exit_code == 1 and out.output.strip() == "error: broken: predictions.csv is missing"


@pytest.mark.slow
def test_train_time_follows_a_continued_run_back_to_its_first_stage_and_counts_a_shared_stage_once(trained_runs,
                                                                                                   fer_folder, tmp_path):
    from fer_bench.experiment import load_experiment
    from fer_bench.runs.runner import run_experiment

    first = trained_runs / "custom_cnn"
    first_seconds = json.loads((first / "metrics.json").read_text())["training_seconds"]
    overrides = ["data.classes=[angry, happy, surprise]", "train.epochs=1", "train.batch_size=8",
                 "model.params.filters=[8, 16]", "model.params.dense_units=16", f"model.weights={first / 'model.keras'}",
                 "runtime.mixed_precision=false"]  # float32 on every CPU, as its first stage (conftest.trained_runs)
    exp = load_experiment(REPO / "configs" / "custom_cnn.yaml", overrides + ["name=second"])
    second = run_experiment(exp, data_dir=fer_folder, results_dir=tmp_path)
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["earlier_stages"] == [{"run": "custom_cnn", "training_seconds": first_seconds}]
    assert metrics["training_seconds"] > 0  # its own time, which a time budget measures, stays its own

    out = invoke("ensemble", first, second, "--name", "both", "--results-dir", tmp_path)
    assert out.exit_code == 0, out.output
    ensemble = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert [s["run"] for s in ensemble["stages"]] == ["custom_cnn", "second"]
    assert ensemble["training_seconds"] == pytest.approx(first_seconds + metrics["training_seconds"])
    runs = group_runs([read_run(tmp_path / name, name) for name in ("second", "both")])
    rows = comparison_table(runs, "test").set_index("name")
    assert rows.loc["second", "training_seconds"] == pytest.approx(first_seconds + metrics["training_seconds"])
    assert rows.loc["both", "training_seconds"] == pytest.approx(ensemble["training_seconds"])


def test_a_weights_file_that_is_no_runs_model_has_no_earlier_stages(tmp_path):
    from fer_bench.runs.artifacts import earlier_stages

    assert earlier_stages(None) == [] and earlier_stages("imagenet") == []
    (tmp_path / "backbone.weights.h5").write_bytes(b"")
    (tmp_path / "metrics.json").write_text('{"run": "x", "training_seconds": 5}')
    assert earlier_stages(str(tmp_path / "backbone.weights.h5")) == []
    (tmp_path / "model.keras").write_bytes(b"")
    assert earlier_stages(str(tmp_path / "model.keras")) == [{"run": "x", "training_seconds": 5}]
    (tmp_path / "metrics.json").write_text("{broken")
    assert earlier_stages(str(tmp_path / "model.keras")) == []


def test_runs_on_other_data_are_a_family_of_their_own_and_leave_the_main_verdicts_as_they_were():
    main = [scored_run("a", 0), scored_run("b", 6), scored_run("c", 9)]
    others = [scored_run(f"tiny-{i}", i, fingerprint="tiny subset", images=20) for i in range(6)]
    alone = significance_table(group_runs(main), "test").set_index(["run_a", "run_b"])
    together = significance_table(group_runs(main + others), "test")
    beside = together[together["run_a"].isin(["a", "b", "c"])].set_index(["run_a", "run_b"])
    assert len(beside) == 3 and len(together) == 3 + 15
    assert beside["p_adjusted"].tolist() == pytest.approx(alone["p_adjusted"].tolist())
    # each family is adjusted over its own pairs: a vs b (p = 2 * 0.5^6) is the 2nd smallest of 3, so x2
    assert beside.loc[("a", "b"), "p_adjusted"] == pytest.approx(0.0625)
    text = significance_text(together, [run.name for run in main + others])
    assert "adjusted by Holm's method within each set of test images (3 pairs and 15 pairs tested on 2 sets)" in text[0]


# --- groups of seeds ----------------------------------------------------------------------------------------

def seeded_run(group: str, seed: int, accuracy: float, images: int = 200, epochs: int = 3) -> Run:
    """A finished run of configuration `group` with `seed`, scoring `accuracy` on the same test images."""
    wrong = round(images * (1 - accuracy))
    predictions = pd.DataFrame({"split": "test", "file": [f"{i}.png" for i in range(images)], "true": "happy",
                                "predicted": ["sad"] * wrong + ["happy"] * (images - wrong)})
    scores = {"accuracy": 1 - wrong / images, "macro_f1": 0.5, "balanced_accuracy": 0.5, "weighted_f1": 0.5,
              "count": images, "per_class": {"happy": {"f1": 0.6}, "sad": {"f1": 0.4}}}
    metrics = {"classes": ["happy", "sad"], "data_fingerprint": "same", "model": "custom_cnn", "test": scores,
               "test_unique": {"accuracy": scores["accuracy"]}, "training_seconds": 10.0 + seed, "epochs_run": epochs,
               "sweep": {"group": group}}
    config = {"name": f"seed={seed}", "model": {"name": "custom_cnn", "params": {"config": group}},
              "train": {"seed": seed, "learning_rate": 0.001}}
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "val_accuracy": np.linspace(0.3, accuracy, epochs)})
    return Run(f"sweep/{group}/seed={seed}", None, metrics, config, predictions, history)


def groups_of(scores: dict[str, list[float]], seeds: dict[str, list[int]] | None = None):
    runs = [seeded_run(name, (seeds or {}).get(name, range(len(values)))[i], value)
            for name, values in scores.items() for i, value in enumerate(values)]
    return group_runs(runs)


def pair(table, a, b):
    rows = table[((table["run_a"] == a) & (table["run_b"] == b)) | ((table["run_a"] == b) & (table["run_b"] == a))]
    assert len(rows) == 1
    return rows.iloc[0]


def test_runs_that_differ_only_in_seed_form_one_group_with_its_spread():
    groups = groups_of({"lr=0.001": [0.60, 0.62, 0.64], "lr=0.01": [0.5]})
    assert [(g.name, g.seeds) for g in groups] == [("sweep/lr=0.001 (3 seeds)", [0, 1, 2]), ("sweep/lr=0.01/seed=0", [0])]
    row = comparison_table(groups, "test").set_index("name").loc["sweep/lr=0.001 (3 seeds)"]
    assert row["seeds"] == 3 and row["interval"] == "seeds"
    assert row["accuracy"] == pytest.approx(0.62) and row["accuracy_sd"] == pytest.approx(0.02)
    assert (row["accuracy_min"], row["accuracy_max"]) == pytest.approx((0.60, 0.64))
    half = 4.302653 * 0.02 / np.sqrt(3)  # Student's t, 2 degrees of freedom
    assert (row["accuracy_low"], row["accuracy_high"]) == pytest.approx((0.62 - half, 0.62 + half), abs=1e-6)
    assert row["training_seconds"] == pytest.approx(11.0)


def test_every_group_of_seeds_is_named_with_its_count_and_a_single_run_by_its_own_name():
    by_hand = [dataclasses.replace(seeded_run("x", seed, 0.6), name=name, metrics={**seeded_run("x", seed, 0.6).metrics,
                                                                                  "sweep": None})
               for seed, name in ((42, "cpu-tuned"), (7, "cpu-tuned_seed7"), (3, "cpu-tuned_seed3"))]
    swept = [seeded_run("lr=0.01", seed, 0.5) for seed in (0, 1)] + [seeded_run("lr=0.1", 0, 0.4)]
    assert [g.name for g in group_runs(by_hand + swept)] == ["cpu-tuned (3 seeds)", "sweep/lr=0.01 (2 seeds)",
                                                             "sweep/lr=0.1/seed=0"]


def test_a_run_made_before_a_new_config_key_groups_with_one_made_after_it():
    before, after = seeded_run("x", 0, 0.6), seeded_run("x", 1, 0.6)
    after.config = {**after.config, "augment": {"flip": True, "mixup": 0.0}}
    before.config = {**before.config, "augment": {"flip": True}}
    assert [g.name for g in group_runs([before, after])] == ["sweep/x (2 seeds)"]
    after.config["augment"]["mixup"] = 0.2
    assert len(group_runs([before, after])) == 2


def test_overlapping_seeds_give_no_significant_difference_and_separated_ones_a_verdict_with_the_right_sign():
    groups = groups_of({"a": [0.60, 0.64, 0.62, 0.66, 0.61], "b": [0.62, 0.63, 0.60, 0.65, 0.64],
                        "c": [0.50, 0.51, 0.49, 0.52, 0.50]})
    table = significance_table(groups, "test")
    a, b, c = (f"sweep/{x} (5 seeds)" for x in "abc")
    a_b, a_c = pair(table, a, b), pair(table, a, c)
    assert a_b["test"] == a_c["test"] == "paired t over seeds"  # all three ran seeds 0..4
    assert a_b["p_adjusted"] > 0.05 and "no significant difference" in a_b["summary"]
    assert a_c["p_adjusted"] < 0.05 and a_c["summary"].startswith(f"{a} beats {c} (paired t over seeds")
    # c below a on every seed: P(a > c) over the shared seeds is 1, whichever side c is on
    assert (a_c["p_a_better"] if a_c["run_a"] == a else 1 - a_c["p_a_better"]) == 1.0
    assert f"P({a} > {c})=1.00" in a_c["summary"]


def test_other_seeds_get_welch_and_a_hand_computed_p_value():
    from scipy import stats

    groups = groups_of({"a": [0.60, 0.62, 0.64], "b": [0.50, 0.55, 0.53, 0.52]}, seeds={"a": [0, 1, 2], "b": [5, 6, 7, 8]})
    row = significance_table(groups, "test").iloc[0]
    assert row["test"] == "Welch t over seeds"
    a, b = (g.scores("test", "accuracy") for g in groups)
    assert row["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert row["p_a_better"] == 1.0  # every seed of a beats every seed of b
    pooled = np.sqrt((2 * a.var(ddof=1) + 3 * b.var(ddof=1)) / 5)
    assert row["effect_size"] == pytest.approx((a.mean() - b.mean()) / pooled)


def test_a_group_of_two_seeds_is_too_few_to_test_and_holm_runs_over_the_pairs_tested():
    groups = groups_of({"a": [0.60, 0.61, 0.62], "b": [0.50, 0.51, 0.52], "c": [0.40, 0.41, 0.42], "two": [0.9, 0.91]})
    table = significance_table(groups, "test")
    few = [r for _, r in table.iterrows() if "two" in r["run_a"] + r["run_b"]]
    assert len(few) == 3 and all(r["test"] == "too few seeds to test" for r in few)
    assert all(pd.isna(r["p_value"]) and "too few seeds to test (" in r["summary"] for r in few)
    assert not any("beats" in r["summary"] for r in few)
    tested = table[table["p_value"].notna()]
    assert len(tested) == 3
    assert tested["p_adjusted"].tolist() == pytest.approx(holm_adjusted(tested["p_value"].to_numpy()).tolist())


def test_a_seed_sweep_compares_as_groups_with_its_charts(tmp_path):
    from fer_bench.reporting.compare import build_comparison, write_comparison

    runs = [seeded_run(name, seed, value) for name, values in {"a": [0.60, 0.64, 0.62], "b": [0.50, 0.52, 0.51]}.items()
            for seed, value in enumerate(values)]
    for run in runs:  # as folders: compare reads them back
        folder = tmp_path / "runs" / run.name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(run.metrics))
        (folder / "config.yaml").write_text(json.dumps(run.config))
        run.predictions.to_csv(folder / "predictions.csv", index=False)
        run.history.to_csv(folder / "history.csv", index=False)
        (folder / "status.json").write_text('{"state": "finished"}')
    comparison = build_comparison(tmp_path / "runs")
    names = ["sweep/a (3 seeds)", "sweep/b (3 seeds)"]
    assert list(comparison.table["name"]) == names and list(comparison.table["seeds"]) == [3, 3]
    assert len(comparison.seeds) == 6 and set(comparison.seeds["group"]) == set(names)
    assert comparison.significance_text[0].startswith("a paired t-test over seeds for groups that ran the same seeds")
    assert "| 1 | sweep/a (3 seeds) | custom_cnn |" in comparison.markdown and "| 3 | 0.6200 (" in comparison.markdown
    folder = write_comparison(comparison, tmp_path / "out")
    assert (folder / "seeds.csv").is_file() and (folder / "training_curves.png").is_file()


@pytest.mark.slow
def test_ensemble_of_a_group_averages_every_seed_under_its_folder(trained_runs, tmp_path):
    group = tmp_path / "sweep" / "cnn"
    for seed, run in enumerate(("custom_cnn", "custom_cnn_aug")):
        shutil.copytree(trained_runs / run, group / f"seed={seed}")
    out = invoke("ensemble", "--group", group, "--name", "cnn-seeds")
    assert out.exit_code == 0, out.output
    assert "from 2 runs -> " in out.output
    metrics = json.loads((tmp_path / "sweep" / "cnn-seeds" / "metrics.json").read_text())
    assert [Path(m).name for m in metrics["members"]] == ["seed=0", "seed=1"]
    empty = invoke("ensemble", "--group", tmp_path / "nothing", "--name", "x")
    assert empty.exit_code == 1 and empty.output.strip() == f"error: --group {tmp_path / 'nothing'}: no such folder"


def test_over_thirty_rows_each_row_is_tested_against_the_next_and_the_best_only():
    from fer_bench.reporting.compare import ALL_PAIRS_UP_TO, tested_pairs

    assert tested_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(tested_pairs(ALL_PAIRS_UP_TO)) == ALL_PAIRS_UP_TO * (ALL_PAIRS_UP_TO - 1) // 2
    pairs = tested_pairs(1000)
    assert len(pairs) == 999 + 998 and len(set(pairs)) == len(pairs)
    assert all(j == i + 1 or i == 0 for i, j in pairs)
    runs = [scored_run(f"r{i:02d}", i) for i in range(40)]  # r00 best; each one image worse than the one before
    table = significance_table(group_runs(runs), "test")
    assert len(table) == 39 + 38
    assert set(zip(table["run_a"], table["run_b"])) == {(f"r{i:02d}", f"r{i + 1:02d}") for i in range(39)} | {
        ("r00", f"r{i:02d}") for i in range(2, 40)}
    assert pair(table, "r00", "r39")["a_right_b_wrong"] == 39
    assert table["p_adjusted"].notna().all()  # Holm over the 77 pairs tested
    text = significance_text(table, [r.name for r in runs])
    assert "not every pair: each row against the next and against the best" in text[0]


def write_finished(runs: list[Run], root: Path) -> None:
    """Finished run folders without history, for compare to read back."""
    for run in runs:
        folder = root / run.name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(run.metrics))
        (folder / "config.yaml").write_text(json.dumps(run.config))
        run.predictions.to_csv(folder / "predictions.csv", index=False)
        (folder / "status.json").write_text('{"state": "finished"}')


def test_compare_console_shows_the_top_rows_and_says_where_the_rest_are(tmp_path):
    from fer_bench.reporting.compare import build_comparison

    runs = [seeded_run(f"c{i:02d}", 0, 0.9 - i / 100) for i in range(35)]
    write_finished(runs, tmp_path)
    comparison = build_comparison([tmp_path / "sweep"])
    lines = comparison.console()
    table = lines[0].splitlines()
    assert len(table) == 2 + 30 and table[2].startswith("| 1 | c00/seed=0 |")
    assert lines[1] == "... and 5 more rows (ranks 31-35) in comparison.md and comparison.csv"
    assert len(comparison.table) == 35 and len(comparison.markdown.splitlines()) == 2 + 35
    # the charts draw the first 30 rows and say so
    assert "the first 30 of 35 rows" in comparison.figures["comparison.png"].axes[0].get_title()


def test_console_and_charts_show_runs_on_other_test_images_after_the_first_30_ranked_rows(tmp_path):
    """A first small run beside many reference runs is scored on other images and listed last: still shown."""
    from fer_bench.reporting.compare import build_comparison

    runs = [seeded_run(f"c{i:02d}", 0, 0.9 - i / 100) for i in range(35)] + [seeded_run("small", 0, 0.4, images=50)]
    write_finished(runs, tmp_path)
    comparison = build_comparison([tmp_path / "sweep"])
    assert list(comparison.table["data"]).count("DIFFERENT") == 1 and comparison.table["name"].iloc[-1] == "small/seed=0"
    ax = comparison.figures["comparison.png"].axes[0]
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert len(labels) == 31 and labels[29] == "c29/seed=0" and labels[30].startswith("small/seed=0\n")
    assert "the first 30 ranked rows and 1 on other test images, of 36 rows" in ax.get_title()
    heatmap = comparison.figures["per_class_f1.png"].axes[0]
    assert heatmap.get_yticklabels()[-1].get_text().startswith("small/seed=0")
    lines = comparison.console()
    table = lines[0].splitlines()
    assert len(table) == 2 + 31 and table[-1].startswith("| - | small/seed=0 |") and table[-2].startswith("| 30 | c29/")
    assert lines[1] == "... and 5 more rows (ranks 31-35) in comparison.md and comparison.csv"
    write_finished([seeded_run(f"small{i:02d}", 0, 0.3, images=50) for i in range(10)], tmp_path)
    lines = build_comparison([tmp_path / "sweep"]).console()
    assert len(lines[0].splitlines()) == 2 + 30 + 10
    assert lines[1] == "... and 6 more rows (ranks 31-35, 1 on other test images) in comparison.md and comparison.csv"


def test_several_results_folders_name_runs_by_their_root(trained_runs, tmp_path):
    from fer_bench.reporting.compare import find_runs

    shutil.copytree(trained_runs, tmp_path / "a")
    shutil.copytree(trained_runs / "custom_cnn", tmp_path / "b" / "custom_cnn")
    names = sorted(r.name for r in find_runs([tmp_path / "a", tmp_path / "b"]))
    assert names == ["a/custom_cnn", "a/custom_cnn_aug", "b/custom_cnn"]
    assert [r.name for r in find_runs([tmp_path / "a" / "custom_cnn", tmp_path / "b"])] == ["custom_cnn", "b/custom_cnn"]
    shutil.copytree(trained_runs, tmp_path / "c" / "a")
    out = invoke("compare", tmp_path / "a", tmp_path / "c" / "a", "--out", tmp_path / "out")
    assert out.exit_code == 1 and "two results folders hold runs of the same name (a/custom_cnn" in out.output
    out = invoke("compare", tmp_path / "a", tmp_path / "b")
    assert out.exit_code == 1 and out.output.strip() == "error: several RESULTS folders: say where the comparison goes with --out"
    out = invoke("compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out")
    assert out.exit_code == 0, out.output
    assert sorted(pd.read_csv(tmp_path / "out" / "comparison.csv")["name"]) == ["a/custom_cnn", "a/custom_cnn_aug", "b/custom_cnn"]


def test_many_runs_are_read_in_worker_processes_with_the_same_result(tmp_path, monkeypatch):
    from fer_bench.reporting import compare

    runs = [seeded_run(f"m{i:02d}", seed, 0.5 + i / 100) for i in range(12) for seed in range(3)]
    for run in runs:
        folder = tmp_path / "runs" / run.name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(run.metrics))
        (folder / "config.yaml").write_text(json.dumps(run.config))
        run.predictions.to_csv(folder / "predictions.csv", index=False)
        (folder / "status.json").write_text('{"state": "finished"}')
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "status.json").write_text('{"state": "failed"}')
    monkeypatch.setattr(compare, "PARALLEL_FROM", 4)
    parallel = compare.build_comparison(tmp_path / "runs")
    monkeypatch.setattr(compare, "PARALLEL_FROM", 10_000)
    serial = compare.build_comparison(tmp_path / "runs")
    pd.testing.assert_frame_equal(parallel.table, serial.table)
    pd.testing.assert_frame_equal(parallel.significance, serial.significance)
    assert len(parallel.table) == 12 and list(parallel.table["seeds"]) == [3] * 12


def test_the_settings_column_names_what_tells_a_run_apart():
    from fer_bench.reporting.compare import _settings
    from fer_bench.runs.artifacts import Run

    config = {"data": {"input_size": 36}, "augment": {"flip": True, "rotation": 0.0, "shift": 0.1},
              "model": {"name": "custom_cnn", "params": {"filters": [32, 64, 128, 256], "dropout": 0.5}},
              "train": {"optimizer": "adam", "learning_rate": 0.001, "class_weight": "none", "ema_momentum": None}}
    plain = Run("plain", Path("plain"), {}, config, None, None, {"runtime": {"precision": "float32"}})
    assert _settings(plain) == "36px, aug=flip+shift, adam lr=0.001"
    config["train"].update(class_weight="sqrt_balanced", ema_momentum=0.999)
    averaged = Run("averaged", Path("averaged"), {}, config, None, None, {"runtime": {"precision": "mixed_bfloat16"}})
    assert _settings(averaged) == "36px, aug=flip+shift, adam lr=0.001, class_weight=sqrt_balanced, ema=0.999, bfloat16"
    config["train"].update(class_weight="none", ema_momentum=None, schedule="one_cycle", warmup_fraction=0.3,
                           batch_size=32)
    cycled = Run("cycled", Path("cycled"), {}, config, None, None, {"runtime": {"precision": "float32"}})
    assert _settings(cycled) == "36px, aug=flip+shift, adam lr=0.001, one_cycle warm-up=0.3, batch=32"


def test_the_settings_column_gives_the_model_parameters_that_differ_from_the_defaults():
    from fer_bench.reporting.compare import _settings
    from fer_bench.runs.artifacts import Run

    params = {"filters": [32, 64, 128, 256], "convs_per_block": [1, 2, 2, 2], "batch_norm": True, "dropout": 0.2,
              "l2": 0}  # the default 0.0, written as an int
    config = {"data": {"input_size": 48}, "augment": {}, "model": {"name": "custom_cnn", "params": params},
              "train": {"optimizer": "adam", "learning_rate": 0.001}}
    lean = Run("lean", Path("lean"), {}, config, None, None, {})
    assert _settings(lean) == "48px, convs_per_block=[1,2,2,2], dropout=0.2, adam lr=0.001"
    # A model that is no longer registered has no defaults to leave out: every parameter given is shown.
    config["model"] = {"name": "retired_cnn", "params": {"width": 8}}
    assert _settings(Run("old", Path("old"), {}, config, None, None, {})) == "48px, width=8, adam lr=0.001"
