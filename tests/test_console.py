"""What a person sees: live progress on a terminal, one plain line per epoch in logs, no start-up noise."""

import io
import os
import pty
import subprocess
import sys
import time

import pytest
from conftest import REPO, make_fer_folder

from fer_bench import console

NOISE = ("oneDNN", "absl::InitializeLog", "cpu_feature_guard")


def run_command(data, results, name, epochs=2):
    return [sys.executable, "-m", "fer_bench.cli", "run", str(REPO / "configs" / "custom_cnn.yaml"),
            "--data-dir", str(data), "--results-dir", str(results), "--name", name,
            "--set", "data.classes=[angry, happy, surprise]", "--set", f"train.epochs={epochs}",
            "--set", "train.batch_size=8", "--set", "model.params.filters=[8]",
            "--set", "train.early_stopping_patience=null"]


@pytest.fixture()
def env(tmp_path):
    return {**os.environ, "FER_BENCH_CACHE": str(tmp_path / "cache")}


@pytest.mark.slow
def test_a_terminal_gets_a_live_bar_and_the_log_one_line_per_epoch(tmp_path, env):
    data = make_fer_folder(tmp_path / "data", counts=(16, 4, 4), classes=("angry", "happy", "surprise"))
    leader, follower = pty.openpty()
    process = subprocess.Popen(run_command(data, tmp_path / "r", "tty"), env=env, stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "\r  epoch 1/2 [train] [" in screen and "loss " in screen
    assert not any(noise in screen for noise in NOISE), screen
    log = (tmp_path / "r" / "tty" / "log.txt").read_text()
    assert "\r" not in log and "[####" not in log
    assert [line.split()[:2] for line in log.splitlines() if line.startswith("epoch")] == [["epoch", "1"], ["epoch", "2"]]


@pytest.mark.slow
def test_a_pipe_gets_plain_lines_and_no_start_up_noise(tmp_path, env):
    data = make_fer_folder(tmp_path / "data", counts=(8, 3, 3), classes=("angry", "happy", "surprise"))
    done = subprocess.run(run_command(data, tmp_path / "r", "piped"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not any(noise in done.stderr for noise in NOISE), done.stderr
    assert "\r" not in done.stderr
    assert sum(line.startswith("epoch ") for line in done.stderr.splitlines()) == 2


def test_a_step_without_progress_of_its_own_shows_a_timer_on_a_terminal(monkeypatch, capsys):
    screen = io.StringIO()
    monkeypatch.setattr(console, "terminal", lambda: screen)
    with console.working("fitting svm"):
        time.sleep(1.3)
    assert "\r  fitting svm ... 1s" in screen.getvalue()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["  fitting svm ...", "  fitting svm: done in 1s"]


def test_the_live_bar_reads_the_loss_only_when_it_redraws(monkeypatch):
    """Reading a loss waits for the device (JAX runs ahead of Python): not after every step, only per redraw."""
    from fer_bench.training.callbacks import BatchProgress

    class Loss:
        reads = 0

        def __float__(self):
            Loss.reads += 1
            return 0.5

    screen = io.StringIO()
    monkeypatch.setattr(console, "terminal", lambda: screen)
    progress = BatchProgress("train", steps=1000, last_epoch=1)
    progress.on_epoch_begin(0)
    for step in range(1000):
        progress.on_train_batch_end(step, {"loss": Loss()})
    assert 1 <= Loss.reads <= 2 + int((time.perf_counter() - progress.bar.start) / console.ProgressBar.REDRAW_SECONDS)
    assert "1000/1000  loss 0.5000" in screen.getvalue()


def test_start_up_noise_is_dropped_and_everything_else_kept(capfd):
    with console.native_stderr_filtered():
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"a real error\n")
    assert capfd.readouterr().err == "a real error\n"
