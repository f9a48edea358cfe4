"""Executors: where a sweep's trials run. Each is one class and one registry entry.

An executor takes the tasks and the datasets they share (decoded once, by the driver) and reports
to a `Monitor` as trials start, finish, fail or are retried. It never stops on a trial's failure;
a worker that dies mid-trial (a crash, SIGKILL, an out-of-memory kill) has its trial retried.

- `local`: worker processes on this machine, each running one trial at a time and keeping the
  datasets it was sent. With GPUs each worker owns one; on a CPU the workers split the cores.
- `ray`: each trial a Ray task with its CPU/GPU share, on a local Ray instance or a running cluster.
"""

from __future__ import annotations

import abc
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fer_bench.backends import usable_cores
from fer_bench.data.dataset import FerData
from fer_bench.errors import FerBenchError
from fer_bench.registry import Registry
from fer_bench.sweeps.trial import TrialOutcome, TrialTask, pack_folder, run_trial, thread_environment, unpack_folder, worker_description

EXECUTORS = Registry("executor")
ATTEMPTS = 3  # a trial whose worker dies is tried this many times in all
STOP_SECONDS = 60  # after Ctrl-C, how long running trials get to save their state before they are killed


class Monitor(Protocol):
    """What an executor reports to (the sweep's progress display and manifest)."""

    def note(self, line: str) -> None: ...
    def started(self, trial_id: str) -> None: ...
    def retrying(self, trial_id: str, reason: str) -> None: ...
    def finished(self, outcome: TrialOutcome) -> None: ...
    def tick(self) -> None: ...


class Executor(abc.ABC):
    """Runs a sweep's tasks. `check` fails fast (before any trial) when the executor cannot work here."""

    def __init__(self, jobs: int | None = None, address: str | None = None):
        self.jobs = jobs
        self.address = address

    def check(self) -> None:
        """Raise a one-line FerBenchError when this executor cannot run (a missing package, a bad option)."""

    @abc.abstractmethod
    def run(self, tasks: list[TrialTask], datasets: dict[str, FerData], sweep_dir: Path, monitor: Monitor) -> None:
        """Run every task, reporting each outcome to `monitor`; Ctrl-C stops them resumably and propagates."""


def visible_gpus() -> list[str]:
    """The GPUs this machine offers (CUDA_VISIBLE_DEVICES where set), asked without loading a framework."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


@dataclass(frozen=True)
class Slot:
    """One local worker's share of the machine: its cores, its GPU (if any), its thread count."""

    index: int
    cores: tuple[int, ...]
    gpu: str | None

    @property
    def threads(self) -> int:
        return len(self.cores)

    def describe(self) -> str:
        return f"{self.threads} core{'s' if self.threads > 1 else ''}" + (f", GPU {self.gpu}" if self.gpu else "")


def local_slots(jobs: int | None) -> list[Slot]:
    """Split this machine between `jobs` workers (default: one per GPU, else one)."""
    gpus, cores = visible_gpus(), usable_cores()
    jobs = jobs or max(len(gpus), 1)
    if jobs <= len(cores):  # near-equal shares, every core used: 8 cores for 3 workers is 3 + 3 + 2
        bounds = [round(i * len(cores) / jobs) for i in range(jobs + 1)]
        shares = [tuple(cores[a:b]) for a, b in zip(bounds, bounds[1:])]
    else:  # more workers than cores: they take turns on single cores
        shares = [(cores[i % len(cores)],) for i in range(jobs)]
    return [Slot(i, share, gpus[i % len(gpus)] if gpus else None) for i, share in enumerate(shares)]


def _worker_main(connection: Any, slot: Slot, sweep_dir: str, log_path: str) -> None:
    """A local worker: set its share of the machine before any framework loads, then run trials as sent."""
    os.setpgrp()  # out of the terminal's process group: Ctrl-C reaches the driver, which passes it on once
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, slot.cores)
    os.environ.update(thread_environment(slot.threads))
    if slot.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu
    worker = worker_description(executor="local", slot=slot.index, cores=list(slot.cores), gpu=slot.gpu)
    datasets: dict[str, FerData] = {}
    try:
        while True:
            try:
                message = connection.recv()
            except EOFError:  # the driver is gone
                return
            if message is None:
                return
            task, data = message
            if data is not None:
                datasets[task.data_key] = data
            print(f"== trial {task.trial.id}", flush=True)
            connection.send(run_trial(task, datasets[task.data_key], Path(sweep_dir), worker))
    except KeyboardInterrupt:
        sys.exit(130)  # the run has marked itself interrupted; the same sweep command resumes it


@dataclass
class _Worker:
    slot: Slot
    process: Any
    connection: Any
    datasets: set[str] = field(default_factory=set)
    task: TrialTask | None = None


@EXECUTORS.register("local", installs=None, help="worker processes on this machine (--jobs N)")
class LocalExecutor(Executor):
    def check(self) -> None:
        if self.address is not None:
            raise FerBenchError("--address is for --executor ray; the local executor runs on this machine")
        if self.jobs is not None and self.jobs < 1:
            raise FerBenchError(f"--jobs must be at least 1; got {self.jobs}")

    def run(self, tasks: list[TrialTask], datasets: dict[str, FerData], sweep_dir: Path, monitor: Monitor) -> None:
        import multiprocessing
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing loaded before the slot is set
        slots = local_slots(self.jobs)[:max(len(tasks), 1)]
        logs = sweep_dir / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        share = f"{slots[0].describe()} each" if len(slots) > 1 else slots[0].describe()
        monitor.note(f"local: {len(slots)} worker{'s' if len(slots) > 1 else ''}, {share}; worker logs in {logs}")

        def launch(slot: Slot) -> _Worker:
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, daemon=True, name=f"fer-bench-worker-{slot.index + 1}",
                                      args=(theirs, slot, str(sweep_dir), str(logs / f"worker-{slot.index + 1}.log")))
            process.start()
            theirs.close()
            return _Worker(slot, process, ours)

        queue = collections.deque(tasks)
        attempts: collections.Counter[str] = collections.Counter()
        workers = [launch(slot) for slot in slots]
        try:
            while queue or any(w.task for w in workers):
                for worker in workers:
                    if worker.task is None and queue:
                        task = queue.popleft()
                        attempts[task.trial.id] += 1
                        first_time = task.data_key not in worker.datasets
                        worker.connection.send((task, datasets[task.data_key] if first_time else None))
                        worker.datasets.add(task.data_key)
                        worker.task = task
                        monitor.started(task.trial.id)
                busy = [w for w in workers if w.task is not None]
                ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout=1.0))
                for index, worker in enumerate(workers):
                    if worker.task is None:
                        continue
                    outcome = None
                    if worker.connection in ready or worker.process.sentinel in ready:
                        try:
                            outcome = worker.connection.recv() if worker.connection.poll() else None
                        except (EOFError, OSError):
                            outcome = None
                        if outcome is None and not worker.process.is_alive():
                            task = worker.task
                            reason = _death(worker.process.exitcode, worker.process.pid)
                            worker.connection.close()
                            workers[index] = launch(worker.slot)
                            if attempts[task.trial.id] < ATTEMPTS:
                                monitor.retrying(task.trial.id, reason)
                                queue.appendleft(task)
                            else:
                                monitor.finished(TrialOutcome(task.trial.id, "failed",
                                                              error=f"{reason}, {ATTEMPTS} times"))
                            continue
                    if outcome is not None:
                        worker.task = None
                        monitor.finished(outcome)
                monitor.tick()
        except KeyboardInterrupt:
            self._interrupt(workers)
            raise
        finally:
            for worker in workers:
                try:
                    worker.connection.send(None)
                except (OSError, ValueError):
                    pass
            for worker in workers:
                worker.process.join(timeout=10)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()

    @staticmethod
    def _interrupt(workers: list[_Worker]) -> None:
        """Pass Ctrl-C to each running trial once, so that it records its state; kill what outlives STOP_SECONDS."""
        running = [w for w in workers if w.task is not None and w.process.is_alive()]
        for worker in running:
            try:
                os.kill(worker.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_SECONDS
        for worker in running:
            worker.process.join(timeout=max(deadline - time.monotonic(), 0))
            if worker.process.is_alive():
                worker.process.kill()


def _death(exitcode: int | None, pid: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"its worker (pid {pid}) was killed by {signal.Signals(-exitcode).name}"
    return f"its worker (pid {pid}) exited with code {exitcode}"


# --- Ray --------------------------------------------------------------------------------------------


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _bootstrap_address(address: str | None) -> str | None:
    """The host:port that `address` names, found the way Ray finds it (RAY_ADDRESS, then the file that
    `ray start` leaves), without importing Ray; None for a private local instance."""
    if address is None:
        return None
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            try:
                address = Path("/tmp/ray/ray_current_cluster").read_text().strip() or None
            except OSError:
                return None
    return address.removeprefix("ray://")


def _host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def import_ray(address: str | None = None) -> Any:
    """Ray, imported so that a cluster on this machine's loopback address is reached there, not elsewhere.

    Ray replaces a loopback address with the machine's network address unless told otherwise before
    it loads; a private instance (no address) or a cluster started on 127.0.0.1 is kept on loopback.
    """
    bootstrap = _bootstrap_address(address)
    if (bootstrap is None or _host_of(bootstrap) in LOOPBACK_HOSTS) and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise FerBenchError('--executor ray needs Ray, which is not installed: pip install -e ".[ray]" '
                            '(or pip install "ray>=2.40")') from None
    return ray


def scratch_root() -> Path:
    """Where a Ray worker writes a trial before it travels back (the system's temporary folder)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "fer-bench-trials"


def ray_trial(task: TrialTask, data: FerData, partial: bytes | None) -> tuple[TrialOutcome, bytes | None]:
    """A trial as a Ray task: run in a scratch folder of the worker's own, then sent back whole.

    `partial` is what an earlier, interrupted attempt left in the driver's results folder, so the
    trial resumes from its checkpoint; `data` arrives through Ray's object store (decoded once).
    """
    import tempfile

    import ray

    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{task.sweep}-", dir=root))
    try:
        folder = scratch.joinpath(*task.trial.parts)
        if partial is not None:
            unpack_folder(partial, folder)
        context = ray.get_runtime_context()
        worker = worker_description(executor="ray", node=context.get_node_id(),
                                    resources=context.get_assigned_resources(), data="ray object store")
        outcome = run_trial(task, data, scratch, worker)
        return outcome, pack_folder(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@EXECUTORS.register("ray", installs="ray", help="Ray tasks on a local instance or a cluster (--address)")
class RayExecutor(Executor):
    def check(self) -> None:
        import_ray(self.address)
        bootstrap = _bootstrap_address(self.address)
        if bootstrap is not None and ":" in bootstrap:
            self._answers(bootstrap)
        if self.jobs is not None and self.jobs < 1:
            raise FerBenchError(f"--jobs must be at least 1; got {self.jobs}")

    @staticmethod
    def _answers(bootstrap: str) -> None:
        """Fail in seconds, not after Ray's minutes of retries, when nothing listens at the cluster's address."""
        import socket

        host, port = _host_of(bootstrap), bootstrap.rsplit(":", 1)[1]
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                pass
        except (OSError, ValueError) as exc:
            raise FerBenchError(f"no Ray cluster answers at {bootstrap} ({exc.strerror or exc.__class__.__name__}); "
                                "start one with `ray start --head`, or check --address") from None

    def _connect(self, ray: Any) -> None:
        options: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
        if self.address:
            options["address"] = self.address
        else:
            # A private instance of its own ("local": never a cluster that happens to run here), on the loopback
            # address, so that nothing on this machine's network hears it.
            options.update(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise FerBenchError(f"cannot connect to {where}: {str(exc).splitlines()[0] if str(exc) else exc}") from None

    def run(self, tasks: list[TrialTask], datasets: dict[str, FerData], sweep_dir: Path, monitor: Monitor) -> None:
        ray = import_ray(self.address)
        self._connect(ray)
        try:
            self._run(ray, tasks, datasets, sweep_dir, monitor)
        finally:
            ray.shutdown()

    def _run(self, ray: Any, tasks: list[TrialTask], datasets: dict[str, FerData], sweep_dir: Path,
             monitor: Monitor) -> None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        offered = ray.cluster_resources()
        cpus, gpus = float(offered.get("CPU", 0)), float(offered.get("GPU", 0))
        monitor.note(f"ray: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, {gpus:g} GPUs"
                     + (f" at {self.address}" if self.address else " (a local instance)"))
        if cpus < 1:
            raise FerBenchError("the Ray cluster offers no CPU to run trials on")
        per_trial = max(int(cpus // self.jobs), 1) if self.jobs else 1
        gpus_per_trial = 1 if gpus >= 1 else 0
        slots = max(int(cpus // per_trial), 1) if not gpus_per_trial else max(int(gpus), 1)
        remote = ray.remote(ray_trial).options(
            num_cpus=per_trial, num_gpus=gpus_per_trial, max_retries=ATTEMPTS - 1, retry_exceptions=False,
            runtime_env={"env_vars": thread_environment(per_trial)})
        shared = {key: ray.put(data) for key, data in datasets.items()}  # into the object store once
        queue = collections.deque(tasks)
        pending: dict[Any, TrialTask] = {}
        try:
            while queue or pending:
                while queue and len(pending) < slots:
                    task = queue.popleft()
                    partial = None if task.restart else pack_folder(sweep_dir.joinpath(*task.trial.parts))
                    pending[remote.remote(task, shared[task.data_key], partial)] = task
                    monitor.started(task.trial.id)
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        outcome, archive = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        monitor.finished(TrialOutcome(task.trial.id, "failed", error=_ray_error(exc)))
                        continue
                    if archive is not None:
                        unpack_folder(archive, sweep_dir.joinpath(*task.trial.parts))
                    monitor.finished(outcome)
                monitor.tick()
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise


def _ray_error(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
