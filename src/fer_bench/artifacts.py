"""The run directory: every file written atomically, a status that says how far the run got.

A reader never sees half a file: each write goes to `<name>.tmp` and is moved into place with
`os.replace`. `metrics.json` is written last, and `status.json` says `running`, `finished` or
`failed` (with the error), so `compare` reads finished runs only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from fer_bench.errors import FerBenchError

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
PACKAGES = ("fer-bench", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn", "pandas",
            "matplotlib", "seaborn", "pyyaml", "typer", "pillow", "kagglehub")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic: no reader sees half a file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FerBenchError(f"cannot write {path}: {exc.strerror or exc}") from None


class RunDirectory:
    """One run's folder under the results directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def create(self) -> "RunDirectory":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FerBenchError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from None
        if not os.access(self.path, os.W_OK):
            raise FerBenchError(f"results directory is not writable: {self.path}")
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        _atomic(self.file(name), lambda tmp: tmp.write_text(text))

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

    def write_yaml(self, name: str, data: Any) -> None:
        self.write_text(name, yaml.safe_dump(data, sort_keys=False))

    def write_table(self, name: str, frame: Any) -> None:
        _atomic(self.file(name), lambda tmp: frame.to_csv(tmp, index=False))

    def write_figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        try:
            _atomic(self.file(name), lambda tmp: figure.savefig(tmp, dpi=110, format=Path(name).suffix[1:]))
        finally:
            plt.close(figure)

    def save_model(self, model: Any, name: str = "model.keras") -> None:
        # Keras insists on the .keras suffix, so the temporary file keeps it.
        tmp = self.file(f"tmp-{name}")
        try:
            model.save(tmp)
            os.replace(tmp, self.file(name))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FerBenchError(f"cannot write {self.file(name)}: {exc.strerror or exc}") from None

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def status(self) -> dict:
        try:
            return self.read_json(STATUS_FILE)
        except (OSError, ValueError):
            return {}

    def set_status(self, state: str, **info: Any) -> None:
        self.write_json(STATUS_FILE, {"state": state, "updated": now(), **info})


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the fer-bench checkout, with '+dirty' when it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_record() -> dict:
    """Where and with what a run was made."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
    }
