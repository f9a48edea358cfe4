"""fer-bench export mlflow: into an embedded SQLite store, and into a real `mlflow server` started on 127.0.0.1."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fer_bench.cli import app

mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[mlflow]' (the dev extra has it)")
from mlflow import MlflowClient

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
runner = CliRunner()


def small_results(folder: Path) -> Path:
    """A copy of real finished runs: three seeds of a CNN (with per-epoch history) and a classical SVM."""
    for seed in range(3):
        shutil.copytree(REFERENCE / "seeds" / "short_cnn" / f"seed={seed}", folder / "short_cnn" / f"seed={seed}")
    shutil.copytree(REFERENCE / "cpu-hog_svm", folder / "cpu-hog_svm")
    return folder


def exported(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=100)


@pytest.fixture
def mlflow_server(tmp_path):
    """An `mlflow server` on the loopback address with its own SQLite store and artifact folder, stopped by its pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (the server writes to it until the fixture ends)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.read().strip() == b"OK":
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 90 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own process group: the server and the workers it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_export_to_a_real_mlflow_server_reads_back_and_does_not_duplicate(mlflow_server, tmp_path):
    results = small_results(tmp_path / "results")
    out = runner.invoke(app, ["export", "mlflow", str(results), "--tracking-uri", mlflow_server, "--experiment", "fer"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"exported 4 runs to {mlflow_server}, experiment 'fer': 4 new, 0 replaced, 0 unchanged; "
                                 f"open {mlflow_server}/#/experiments/")
    assert "View run" not in out.output
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = {r.info.run_name: r for r in exported(client, "fer")}
    assert sorted(runs) == ["cpu-hog_svm", "seed=0", "seed=1", "seed=2"]

    cnn, folder = runs["seed=2"], results / "short_cnn" / "seed=2"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert cnn.info.status == "FINISHED"
    assert cnn.data.params["train.seed"] == "2" and cnn.data.params["model.name"] == "custom_cnn"
    assert cnn.data.params["train.learning_rate"] == "0.002"
    assert cnn.data.metrics["test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert cnn.data.metrics["test_unique.accuracy"] == pytest.approx(metrics["test_unique"]["accuracy"])
    tags = cnn.data.tags
    assert tags["model"] == "custom_cnn" and tags["sweep_group"] == "short_cnn" and tags["seed"] == "2"
    assert tags["data_fingerprint"] == metrics["data_fingerprint"] and tags["hardware"] == "CPU x2 (tensorflow)"
    assert tags["git_commit"] == json.loads((folder / "environment.json").read_text())["git_commit"]
    history = pd.read_csv(folder / "history.csv")
    curve = client.get_metric_history(cnn.info.run_id, "val_accuracy")
    assert [m.step for m in curve] == list(history["epoch"])
    assert [m.value for m in curve] == pytest.approx(list(history["val_accuracy"]))
    artifacts = {a.path for a in client.list_artifacts(cnn.info.run_id)}
    assert {"config.yaml", "metrics.json", "predictions.csv", "history.csv", "curves.png", "confusion_matrix.png"} <= artifacts
    back = Path(client.download_artifacts(cnn.info.run_id, "predictions.csv", str(tmp_path / "back")))
    assert back.read_bytes() == (folder / "predictions.csv").read_bytes()
    svm = runs["cpu-hog_svm"]
    assert svm.data.tags["model"] == "svm" and svm.data.params["features.extractor"] == "hog"
    assert client.get_metric_history(svm.info.run_id, "val_accuracy") == []  # no epochs: final scores only

    # again: nothing new; a run whose folder changed replaces its old MLflow run, still one per run
    out = runner.invoke(app, ["export", "mlflow", str(results), "--tracking-uri", mlflow_server, "--experiment", "fer"])
    assert "4 runs" in out.output and "0 new, 0 replaced, 4 unchanged" in out.output
    metrics["test"]["accuracy"] = 0.5
    (folder / "metrics.json").write_text(json.dumps(metrics))
    out = runner.invoke(app, ["export", "mlflow", str(results), "--tracking-uri", mlflow_server, "--experiment", "fer"])
    assert "0 new, 1 replaced, 3 unchanged" in out.output, out.output
    again = {r.info.run_name: r for r in exported(client, "fer")}
    assert sorted(again) == sorted(runs) and again["seed=2"].data.metrics["test.accuracy"] == 0.5
    assert {name: r.info.run_id for name, r in again.items() if name != "seed=2"} == \
        {name: r.info.run_id for name, r in runs.items() if name != "seed=2"}


def test_export_defaults_to_an_embedded_sqlite_store(tmp_path, monkeypatch):
    results = small_results(tmp_path / "results")
    shutil.rmtree(results / "cpu-hog_svm")
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["export", "mlflow", "results"])
    assert out.exit_code == 0, out.output
    assert out.output == ("exported 3 runs to sqlite:///mlflow.db, experiment 'fer-bench': 3 new, 0 replaced, 0 unchanged; "
                          "see them with: mlflow ui --backend-store-uri sqlite:///mlflow.db\n")
    assert (tmp_path / "mlflow.db").is_file()
    runs = exported(MlflowClient(tracking_uri="sqlite:///mlflow.db"), "fer-bench")
    assert len(runs) == 3 and {r.data.tags["seed"] for r in runs} == {"0", "1", "2"}


def test_export_errors_are_one_line(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = small_results(tmp_path / "results")
    out = runner.invoke(app, ["export", "mlflow", str(results), "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert out.exit_code == 1 and out.output.startswith(f"error: no MLflow tracking server answers at http://127.0.0.1:{port} (")
    assert out.output.count("\n") == 1
    out = runner.invoke(app, ["export", "wandb", str(results)])
    assert out.exit_code == 1 and out.output == "error: TRACKER must be one of ['mlflow']; got 'wandb'\n"
    out = runner.invoke(app, ["export", "mlflow", str(tmp_path / "none")])
    assert out.exit_code == 1 and out.output == f"error: results directory not found: {tmp_path / 'none'}\n"
