"""The Keras backends fer-bench trains on, each asked about its own devices.

Keras 3 fixes its backend at its first import, from `KERAS_BACKEND` (else ~/.keras/keras.json,
else TensorFlow). `activate` settles the choice (the config's `runtime.backend`, else the
environment) before that import, and sets what each backend must read from the environment
before it starts (JAX's XLA flags). tf.data feeds every backend, so TensorFlow's CPU build is
always installed; the backend is what runs the model.

Adding a backend is one class with the methods of `TensorFlowBackend` and one registry entry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_bench.config import AUTO, RuntimeConfig
from fer_bench.errors import ConfigError, FerBenchError


@dataclass
class Distribution:
    """How one model is spread over devices: the scope to build, compile and fit it in, and its replicas."""

    kind: str
    replicas: int
    scope: Any  # () -> context manager


class TensorFlowBackend:
    name = "tensorflow"
    # The CPU units with which the tuned CNN trained faster under mixed_bfloat16 than in float32, at float32's
    # accuracy (measured by this project; README "Precision on a CPU"): `auto` takes bfloat16 where a CPU has one.
    bf16_cpu_units = ("amx_bf16", "avx512_bf16")

    def prepare(self, runtime: RuntimeConfig, deterministic: bool) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def start(self, runtime: RuntimeConfig, deterministic: bool) -> None:
        import tensorflow as tf

        if runtime.cpu_devices:
            cpu = tf.config.list_physical_devices("CPU")[0]
            wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(runtime.cpu_devices)]
            try:
                tf.config.set_logical_device_configuration(cpu, wanted)
            except RuntimeError:
                # TensorFlow fixes its devices once it has started: a later run in the same process keeps them.
                if len(tf.config.list_logical_devices("CPU")) != runtime.cpu_devices:
                    raise FerBenchError("runtime.cpu_devices can only be set for the first run of a process") from None
        if deterministic:
            # Process-wide and one-way in TensorFlow: later runs in the same process stay deterministic.
            tf.config.experimental.enable_op_determinism()

    def accelerators(self) -> list[dict]:
        import tensorflow as tf

        found = []
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            found.append({"device": gpu.name, "name": details.get("device_name", "GPU"),
                          "compute_capability": ".".join(map(str, details.get("compute_capability", ())) or None)})
        return found

    def devices(self) -> list[str]:
        import tensorflow as tf

        # Without GPUs, a mirrored strategy mirrors over the logical CPUs (see runtime.cpu_devices).
        return [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]

    def xla_by_default(self, accelerated: bool) -> bool:
        return accelerated  # TensorFlow's own graphs are fast on a CPU; XLA pays off on a GPU

    def distribute(self, kind: str, devices: list[str]) -> Distribution:
        import tensorflow as tf

        strategies = {
            "none": tf.distribute.get_strategy,
            "mirrored": lambda: tf.distribute.MirroredStrategy(devices=devices),
            "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
        }
        strategy = strategies[kind]()
        return Distribution(kind, strategy.num_replicas_in_sync, strategy.scope)

    def build(self) -> dict:
        import tensorflow as tf

        info = tf.sysconfig.get_build_info()
        return {"tensorflow": tf.__version__, "cuda_build": info.get("cuda_version"), "cudnn_build": info.get("cudnn_version")}


class JaxBackend:
    name = "jax"
    bf16_cpu_units = ()  # not measured on JAX's CPU build: auto stays float32

    def prepare(self, runtime: RuntimeConfig, deterministic: bool) -> None:
        if "jax" in sys.modules:
            return  # started already: XLA has read its flags
        flags = os.environ.get("XLA_FLAGS", "").split()
        if runtime.cpu_devices:
            flags.append(f"--xla_force_host_platform_device_count={runtime.cpu_devices}")
        if deterministic:
            flags.append("--xla_gpu_deterministic_ops=true")
        os.environ["XLA_FLAGS"] = " ".join(flags)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow still serves tf.data

    def start(self, runtime: RuntimeConfig, deterministic: bool) -> None:
        import jax

        if runtime.cpu_devices and len(jax.devices()) != runtime.cpu_devices and jax.default_backend() == "cpu":
            raise FerBenchError("runtime.cpu_devices can only be set for the first run of a process")
        # Compiled programs are kept on disk, so a resumed or repeated run skips XLA compilation.
        if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            from fer_bench.files import cache_dir

            jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax-compilation"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    def accelerators(self) -> list[dict]:
        import jax

        found = []
        for device in jax.devices():
            if device.platform == "cpu":
                continue
            entry = {"device": f"{device.platform}:{device.id}", "name": device.device_kind}
            with contextlib.suppress(Exception):  # not every platform reports memory
                entry["memory_gib"] = round(device.memory_stats()["bytes_limit"] / 2**30, 1)
            found.append(entry)
        return found

    def devices(self) -> list[str]:
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]

    def xla_by_default(self, accelerated: bool) -> bool:
        return True  # JAX runs compiled or, op by op, very slowly: Keras compiles on JAX unless told not to

    def distribute(self, kind: str, devices: list[str]) -> Distribution:
        if kind == "none":
            return Distribution(kind, 1, contextlib.nullcontext)
        if kind == "multi_worker":
            raise ConfigError("runtime.distribution multi_worker needs the tensorflow backend; on jax use mirrored")
        import jax
        import keras

        # Keras' own data parallelism: the model replicated on every device, each batch split between them.
        parallel = keras.distribution.DataParallel(devices=jax.devices())
        return Distribution(kind, len(jax.devices()), parallel.scope)

    def build(self) -> dict:
        import jax
        import jax.extend.backend

        backend = jax.extend.backend.get_backend()
        return {"jax": jax.__version__, "platform": backend.platform, "platform_version": backend.platform_version}


BACKENDS: dict[str, Any] = {"tensorflow": TensorFlowBackend(), "jax": JaxBackend()}
DEFAULT = "tensorflow"


def _keras_config_backend() -> str | None:
    """The backend ~/.keras/keras.json names, which Keras uses when KERAS_BACKEND is unset."""
    import json

    path = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(path.read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def requested(runtime: RuntimeConfig | None = None) -> str:
    """The backend this process will run: the config's choice, else KERAS_BACKEND, else Keras' own default."""
    if runtime is not None and runtime.backend != AUTO:
        return runtime.backend
    name = os.environ.get("KERAS_BACKEND") or _keras_config_backend() or DEFAULT
    if name not in BACKENDS:
        raise FerBenchError(f"KERAS_BACKEND={name}: fer-bench runs on {' or '.join(BACKENDS)}")
    return name


def activate(runtime: RuntimeConfig | None = None, deterministic: bool = False) -> Any:
    """Settle the backend before Keras starts, and return it; an error when Keras already runs another."""
    keras = sys.modules.get("keras")
    if keras is not None:
        running = keras.backend.backend()
        if runtime is not None and runtime.backend not in (AUTO, running):
            raise FerBenchError(f"runtime.backend is {runtime.backend}, but Keras already runs on {running} in this "
                                "process: it picks its backend once, when first imported")
        if running not in BACKENDS:
            raise FerBenchError(f"Keras runs on {running}: fer-bench runs on {' or '.join(BACKENDS)}")
        return BACKENDS[running]
    name = requested(runtime)
    os.environ["KERAS_BACKEND"] = name
    backend = BACKENDS[name]
    backend.prepare(runtime or RuntimeConfig(), deterministic)
    return backend


def import_keras() -> Any:
    """Keras on the chosen backend, imported without TensorFlow's start-up banner (real errors still show)."""
    backend = activate()
    if "keras" not in sys.modules:
        from fer_bench.console import native_stderr_filtered

        try:
            with native_stderr_filtered():
                import keras  # noqa: F401
                import tensorflow  # noqa: F401 - tf.data feeds every backend; its banner is filtered here
        except ImportError as exc:
            missing = (exc.name or "").split(".")[0] or str(exc)
            extra = {"tensorflow": "cpu (or gpu, jax, jax-cuda)", "jax": "jax (or jax-cuda)"}.get(missing, "cpu")
            raise FerBenchError(f"Keras on {backend.name} needs {missing}, which is not installed or does not load "
                                f"({str(exc).splitlines()[0]}); install fer-bench with the extra {extra}") from None
    return sys.modules["keras"]


def nvidia_gpus() -> list[dict]:
    """What the NVIDIA driver reports of each GPU (name, memory, driver), or [] without nvidia-smi."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        done = subprocess.run([tool, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=True)
        header = subprocess.run([tool], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cuda = next((line.split("CUDA Version:")[1].split()[0] for line in header.splitlines() if "CUDA Version:" in line), None)
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        name, memory, driver = parts
        gpus.append({"name": name, "memory_mib": int(memory) if memory.isdigit() else None, "driver": driver,
                     "cuda_driver": cuda})
    return gpus


def hardware_record(backend: Any) -> dict:
    """The accelerators the backend uses, the GPUs the driver reports (used or not), and the backend's build."""
    return {"accelerators": backend.accelerators(), "nvidia_smi": nvidia_gpus(), "backend_build": backend.build(),
            "cpu_features": cpu_features()}


# --- the runtime a run trains with -----------------------------------------------------------------

@dataclass
class Runtime:
    """What the run actually used, after `auto` was resolved."""

    backend: str
    devices: list[str]
    distribution: Distribution
    mixed_precision: bool
    jit_compile: bool
    steps_per_execution: int
    hardware: dict = field(default_factory=dict)
    precision: str | None = None  # the Keras dtype policy: float32, mixed_float16 or mixed_bfloat16

    @property
    def accelerated(self) -> bool:
        return bool(self.hardware.get("accelerators"))

    @property
    def replicas(self) -> int:
        return self.distribution.replicas

    def scope(self) -> Any:
        """Build, compile and fit inside this: it places the model's variables and splits its batches."""
        return self.distribution.scope()

    def record(self) -> dict:
        return {"backend": self.backend, "devices": self.devices, "replicas": self.replicas,
                "mixed_precision": self.mixed_precision, "precision": self.precision, "jit_compile": self.jit_compile,
                "distribution": self.distribution.kind, "steps_per_execution": self.steps_per_execution,
                **self.hardware}

    def describe(self) -> str:
        """One console line: backend, devices and the switches `auto` settled."""
        names = [a["name"] for a in self.hardware.get("accelerators", [])]
        where = f"{len(names)} x {names[0]}" if names and len(set(names)) == 1 else ", ".join(names or self.devices)
        bf16 = " (bfloat16)" if self.precision == "mixed_bfloat16" else ""
        line = (f"runtime: Keras on {self.backend}, {where}, mixed precision {'on' if self.mixed_precision else 'off'}{bf16}, "
                f"XLA {'on' if self.jit_compile else 'off'}")
        if self.replicas > 1:
            line += f", {self.replicas} replicas ({self.distribution.kind})"
        if self.steps_per_execution > 1:
            line += f", {self.steps_per_execution} steps per execution"
        unused = self.hardware.get("nvidia_smi", [])
        if unused and not names:
            line += (f"\nwarning: the driver reports {unused[0]['name']}, but Keras on {self.backend} sees no GPU: "
                     "see README, 'Installing for a GPU'")
        return line


STEPS_PER_EXECUTION_ON_ACCELERATORS = 16
CPU_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # what bfloat16 speed on a CPU depends on


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity, where the OS has one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES this CPU has (Linux's /proc/cpuinfo flags; [] where it cannot tell)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in flags]
    except OSError:
        pass
    return []


def precision_policy(setting: bool | str, accelerated: bool, backend: Any, features: list[str]) -> str:
    """The Keras dtype policy: float16 compute on a GPU; on a CPU bfloat16 (float16 there is emulated, slow), which
    `auto` takes only where the CPU has a bfloat16 unit the backend was measured faster with; float32 otherwise."""
    if setting is False:
        return "float32"
    if accelerated:
        return "mixed_float16"
    if setting is True or any(unit in features for unit in backend.bf16_cpu_units):
        return "mixed_bfloat16"
    return "float32"


def _resolve_auto(value: bool | str, default: bool) -> bool:
    return default if value == AUTO else bool(value)


def configure_runtime(runtime: RuntimeConfig, seed: int, deterministic: bool) -> Runtime:
    """Seed everything and pick backend, precision, XLA and distribution from the backend's own devices."""
    backend = activate(runtime, deterministic)
    keras = import_keras()

    backend.start(runtime, deterministic)
    keras.utils.set_random_seed(seed)
    hardware = hardware_record(backend)
    accelerated = bool(hardware["accelerators"])
    precision = precision_policy(runtime.mixed_precision, accelerated, backend, hardware["cpu_features"])
    keras.mixed_precision.set_global_policy(precision)
    devices = backend.devices()
    kind = runtime.distribution
    if kind == AUTO:
        kind = "mirrored" if len(hardware["accelerators"]) > 1 else "none"
    steps = runtime.steps_per_execution
    if steps == AUTO:
        steps = STEPS_PER_EXECUTION_ON_ACCELERATORS if accelerated else 1
    distribution = backend.distribute(kind, devices)
    return Runtime(backend=backend.name, devices=devices[:distribution.replicas],
                   distribution=distribution, mixed_precision=precision != "float32", precision=precision,
                   jit_compile=_resolve_auto(runtime.jit_compile, backend.xla_by_default(accelerated)),
                   steps_per_execution=int(steps), hardware=hardware)
