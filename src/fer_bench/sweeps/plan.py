"""What a sweep is: configs x the grid's cartesian product x seeds, expanded into named, checked trials.

A trial's folder under `results/<sweep>/` is named from what differs between trials, so the same
sweep always lands in the same folders (which is how a second invocation skips or resumes them):
`<config>/<key>=<value>/.../seed=<n>`, with a short stable hash where a value would make an
unreadable or over-long folder name. A trial's group is its folder without the seed: the
configuration that the seeds repeat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_bench.config import Experiment, parse_override, read_yaml, yaml_load
from fer_bench.errors import ConfigError, FerBenchError
from fer_bench.experiment import load_experiment
from fer_bench.files import FOLDER_NAME_RULE, is_folder_name

SWEEP_KEYS = ("name", "configs", "seeds", "grid", "set")
SAFE_VALUE = re.compile(r"[A-Za-z0-9._+-]{1,40}")
LONGEST_ID = 120  # characters of a trial's folder path before its grid part becomes a hash


@dataclass(frozen=True)
class SweepSpec:
    """The sweep as given: on the command line, in a sweep file, or both (the command line adds and wins)."""

    name: str
    configs: tuple[Path, ...]
    seeds: tuple[int, ...] | None = None  # None: each config's own train.seed, and no seed in the folder names
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # dotted key -> values, in the order given
    sets: tuple[str, ...] = ()  # KEY=VALUE overrides applied to every trial


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: its folder (relative to the sweep's), its group, and how its config is made."""

    id: str
    group: str
    config: Path
    seed: int | None
    overrides: tuple[str, ...]  # every --set of this trial: the sweep's own, its grid point, its seed

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.id.split("/"))


def is_sweep_file(path: Path) -> bool:
    """A sweep file is a YAML mapping with a `configs` list; an experiment file never has one."""
    try:
        raw = read_yaml(path)
    except ConfigError:
        return False
    return "configs" in raw


def parse_seeds(value: Any, where: str = "--seeds") -> tuple[int, ...]:
    """`5` -> 0..4; `0,3,7` or [0, 3, 7] -> those seeds."""
    if isinstance(value, str):
        try:
            value = yaml_load(f"[{value}]") if "," in value else yaml_load(value)
        except Exception:  # noqa: BLE001 - any parse failure is the same one-line error below
            value = None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{where}: the number of seeds must be at least 1; got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                 for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: a seed is listed twice in {value}")
        return tuple(value)
    raise ConfigError(f"{where} must be a number of seeds (5 means 0..4) or a list of seeds >= 0 (0,3,7); "
                      f"got {value!r}")


def parse_grid(texts: list[str]) -> dict[str, tuple[Any, ...]]:
    """`train.learning_rate=[0.001,0.0003]` (repeatable) -> {key: values}."""
    grid: dict[str, tuple[Any, ...]] = {}
    for text in texts:
        parts, values = parse_override(text)
        add_grid_key(grid, ".".join(parts), values, f"--grid {text}")
    return grid


def add_grid_key(grid: dict[str, tuple[Any, ...]], key: str, values: Any, where: str) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: give the values as a list, e.g. {key}=[0.001,0.0003]; got {values!r}")
    shown = [repr(v) for v in values]
    if len(set(shown)) != len(shown):
        raise ConfigError(f"{where}: a value is listed twice in {values}")
    if key in grid:
        raise ConfigError(f"{where}: {key} is already a grid key")
    if key.split(".")[-1] == "seed" and key.startswith("train."):
        raise ConfigError(f"{where}: give seeds with --seeds (or `seeds:` in a sweep file), not as a grid key")
    grid[key] = tuple(values)


def read_sweep_file(path: Path) -> SweepSpec:
    """A sweep file: `configs` (paths read from the file's folder), and optional `name`, `seeds`, `grid`, `set`."""
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; a sweep file has {list(SWEEP_KEYS)}")
    configs = raw["configs"]
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        raise ConfigError(f"{path}: configs must be a list of experiment files; got {configs!r}")
    grid: dict[str, tuple[Any, ...]] = {}
    raw_grid = raw.get("grid") or {}
    if not isinstance(raw_grid, dict):
        raise ConfigError(f"{path}: grid must map keys to lists of values, e.g. train.learning_rate: [0.001, 0.0003]")
    for key, values in raw_grid.items():
        add_grid_key(grid, str(key), values, f"{path}: grid.{key}")
    sets = raw.get("set") or {}
    if isinstance(sets, dict):
        sets = [f"{key}={_yaml_value(value)}" for key, value in sets.items()]
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise ConfigError(f"{path}: set must map keys to values (train.epochs: 10) or list KEY=VALUE strings")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not is_folder_name(name):
        raise ConfigError(f"{path}: name must be {FOLDER_NAME_RULE}; got {name!r}")
    return SweepSpec(
        name=name, configs=tuple(Path(path).parent / c for c in configs),
        seeds=parse_seeds(raw["seeds"], f"{path}: seeds") if raw.get("seeds") is not None else None,
        grid=grid, sets=tuple(sets),
    )


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def default_name(configs: tuple[Path, ...]) -> str:
    """The sweep's folder when --name is not given: its configs' names, or a stable hash when that is long."""
    joined = "+".join(Path(c).stem for c in configs)
    if len(joined) <= 60:
        return joined
    return f"sweep-{hashlib.sha1(joined.encode()).hexdigest()[:8]}"


def _value_text(value: Any) -> str | None:
    """A value as it reads in a folder name, or None when it cannot be shown there safely."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, (int, float, str)):
        text = repr(value) if isinstance(value, float) else str(value)
    elif isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        text = "-".join(str(v) for v in value)
    else:
        return None
    return text if SAFE_VALUE.fullmatch(text) else None


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _config_labels(configs: tuple[Path, ...]) -> list[str]:
    """Each config's folder: its stem, or its path's last folders joined by '-' where stems collide."""
    stems = [Path(c).stem for c in configs]
    resolved = [Path(c).resolve() for c in configs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("a config is listed twice in the sweep")
    labels = stems
    depth = 1
    while len(set(labels)) != len(labels):
        depth += 1
        labels = ["-".join([*p.parent.parts[-depth + 1:], p.stem]) for p in resolved]
    return labels


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the sweep, in order: config, then grid point, then seed."""
    keys = list(spec.grid)
    short = {key: key.split(".")[-1] for key in keys}
    if len(set(short.values())) != len(short):
        short = {key: key for key in keys}  # two keys share a last part: name each in full
    trials = []
    for config, label in zip(spec.configs, _config_labels(spec.configs)):
        for point in itertools.product(*(spec.grid[k] for k in keys)):
            point_overrides = tuple(f"{k}={_yaml_value(v)}" for k, v in zip(keys, point))
            parts = []
            for key, value in zip(keys, point):
                text = _value_text(value)
                parts.append(f"{short[key]}={text if text is not None else _short_hash(_yaml_value(value))}")
            if len("/".join([label, *parts])) > LONGEST_ID:
                parts = [f"grid-{_short_hash(' '.join(point_overrides))}"]
            group = "/".join([label, *parts])
            for seed in spec.seeds if spec.seeds is not None else (None,):
                seed_overrides = (f"train.seed={seed}",) if seed is not None else ()
                trials.append(Trial(
                    id=f"{group}/seed={seed}" if seed is not None else group, group=group, config=Path(config),
                    seed=seed, overrides=(*spec.sets, *point_overrides, *seed_overrides),
                ))
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"two trials of the sweep would share the folder {twice}; give the grid distinct values")
    return trials


def check_trials(trials: list[Trial]) -> list[Experiment]:
    """Load and fully validate every trial's experiment before the first one starts."""
    experiments = []
    for trial in trials:
        try:
            exp = load_experiment(trial.config, list(trial.overrides))
        except FerBenchError as exc:
            raise ConfigError(f"trial {trial.id}: {exc}") from None
        experiments.append(dataclasses.replace(exp, name=trial.parts[-1]))
    return experiments
