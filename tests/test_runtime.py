"""Choosing the backend, and what a run records of its hardware: no training, no GPU needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fer_bench import backends
from fer_bench.backends import Distribution, Runtime
from fer_bench.config import RuntimeConfig
from fer_bench.errors import FerBenchError

FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,memory.total,driver_version" ]; then
  echo "NVIDIA H100 80GB HBM3, 81559, 550.54.15"
  echo "NVIDIA H100 80GB HBM3, 81559, 550.54.15"
else
  echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |"
fi
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(FAKE_NVIDIA_SMI)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")


def test_the_driver_report_is_read_from_nvidia_smi(fake_nvidia_smi):
    gpus = backends.nvidia_gpus()
    assert gpus == [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "driver": "550.54.15", "cuda_driver": "12.4"}] * 2


def test_no_nvidia_smi_means_no_driver_report(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert backends.nvidia_gpus() == []


def test_a_run_records_its_accelerators_and_says_when_the_backend_cannot_see_the_gpu(fake_nvidia_smi):
    backends.import_keras()
    hardware = backends.hardware_record(backends.activate())  # this process: TensorFlow's CPU build
    assert hardware["accelerators"] == []
    assert hardware["nvidia_smi"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert {"tensorflow", "cuda_build"} <= set(hardware["backend_build"])
    runtime = Runtime(backend="tensorflow", devices=["/device:CPU:0"],
                      distribution=Distribution("none", 1, None), mixed_precision=False, jit_compile=False,
                      steps_per_execution=1, hardware=hardware)
    first, warning = runtime.describe().splitlines()
    assert first == "runtime: Keras on tensorflow, /device:CPU:0, mixed precision off, XLA off"
    assert warning.startswith("warning: the driver reports NVIDIA H100 80GB HBM3, but Keras on tensorflow sees no GPU")
    assert json.dumps(runtime.record())  # environment.json can hold it


def test_the_console_line_names_the_accelerators_and_the_switches():
    runtime = Runtime(backend="jax", devices=["gpu:0", "gpu:1"],
                      distribution=Distribution("mirrored", 2, None), mixed_precision=True, jit_compile=True,
                      steps_per_execution=16,
                      hardware={"accelerators": [{"name": "NVIDIA H100 80GB HBM3"}] * 2, "nvidia_smi": []})
    assert runtime.describe() == ("runtime: Keras on jax, 2 x NVIDIA H100 80GB HBM3, mixed precision on, XLA on, "
                                  "2 replicas (mirrored), 16 steps per execution")


def test_the_backend_comes_from_the_config_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no keras.json
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert backends.requested(RuntimeConfig()) == "jax"
    assert backends.requested(RuntimeConfig(backend="tensorflow")) == "tensorflow"
    monkeypatch.delenv("KERAS_BACKEND")
    assert backends.requested(RuntimeConfig()) == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    assert backends.requested(RuntimeConfig()) == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(FerBenchError, match="KERAS_BACKEND=torch: fer-bench runs on tensorflow or jax"):
        backends.requested(RuntimeConfig())


def test_keras_cannot_switch_backend_inside_a_process():
    backends.import_keras()
    with pytest.raises(FerBenchError, match="runtime.backend is jax, but Keras already runs on tensorflow"):
        backends.activate(RuntimeConfig(backend="jax"))
    assert backends.activate(RuntimeConfig()).name == "tensorflow"


def test_an_unsupported_backend_is_one_line_before_any_work(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "torch", "FER_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "fer_bench.cli", "run", str(Path(__file__).parents[1] / "configs/custom_cnn.yaml"),
                           "--data-dir", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: KERAS_BACKEND=torch: fer-bench runs on tensorflow or jax"
    assert not (tmp_path / "r").exists()


def test_a_backend_that_is_not_installed_is_one_line(tmp_path):
    """As on a machine with JAX missing (or broken): the first command that needs Keras says what to install."""
    fake = tmp_path / "site" / "jax"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named jaxlib', name='jaxlib')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(tmp_path / "site"),
           "FER_BENCH_CACHE": str(tmp_path / "cache")}
    face = tmp_path / "face.png"
    from PIL import Image

    Image.new("L", (48, 48), 128).save(face)
    done = subprocess.run([sys.executable, "-m", "fer_bench.cli", "predict", str(face)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: Keras on jax needs jaxlib, which is not installed or does not load")
    assert "install fer-bench with the extra" in line


def test_auto_turns_on_mixed_precision_xla_and_more_steps_where_the_backend_sees_a_gpu(monkeypatch):
    import keras

    from fer_bench.backends import configure_runtime

    class GpuSeen(backends.TensorFlowBackend):
        def accelerators(self):
            return [{"device": "/physical_device:GPU:0", "name": "Some GPU"}]

    monkeypatch.setitem(backends.BACKENDS, "tensorflow", GpuSeen())
    try:
        runtime = configure_runtime(RuntimeConfig(), seed=0, deterministic=False)
        assert (runtime.mixed_precision, runtime.jit_compile, runtime.steps_per_execution) == (True, True, 16)
        assert runtime.distribution.kind == "none"
        assert keras.mixed_precision.dtype_policy().name == "mixed_float16"
        forced = configure_runtime(RuntimeConfig(mixed_precision=False, jit_compile=False, steps_per_execution=2),
                                   seed=0, deterministic=False)
        assert (forced.mixed_precision, forced.jit_compile, forced.steps_per_execution) == (False, False, 2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert backends.JaxBackend().xla_by_default(accelerated=False) is True
    assert backends.TensorFlowBackend().xla_by_default(accelerated=False) is False


@pytest.mark.parametrize("setting, accelerated, backend, features, policy", [
    ("auto", False, "tensorflow", ["amx_bf16", "amx_tile", "avx512_bf16"], "mixed_bfloat16"),  # measured faster there
    ("auto", False, "tensorflow", ["avx512_bf16", "avx512f", "avx2"], "mixed_bfloat16"),  # AVX-512 BF16 alone too
    ("auto", False, "tensorflow", ["avx512f", "avx2"], "float32"),  # no bfloat16 units: emulated, slower
    ("auto", False, "jax", ["amx_bf16"], "float32"),  # not measured on JAX's CPU build
    ("auto", True, "tensorflow", [], "mixed_float16"),
    (True, False, "jax", [], "mixed_bfloat16"),  # asked for on a CPU: bfloat16, never emulated float16
    (True, True, "jax", [], "mixed_float16"),
    (False, True, "tensorflow", ["amx_bf16"], "float32"),
])
def test_precision_follows_the_device_and_the_cpus_bfloat16_units(setting, accelerated, backend, features, policy):
    assert backends.precision_policy(setting, accelerated, backends.BACKENDS[backend], features) == policy


def test_auto_takes_bfloat16_on_a_cpu_with_amx_and_says_so(monkeypatch):
    import keras

    from fer_bench.backends import configure_runtime

    monkeypatch.setattr(backends, "cpu_features", lambda: ["amx_bf16", "amx_tile", "avx512_bf16"])
    try:
        runtime = configure_runtime(RuntimeConfig(), seed=0, deterministic=False)
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
        assert runtime.record()["precision"] == "mixed_bfloat16" and runtime.record()["cpu_features"][0] == "amx_bf16"
        assert "mixed precision on (bfloat16), XLA off" in runtime.describe()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert set(backends.cpu_features()) <= set(backends.CPU_FEATURES)
