"""Runs that repeat one configuration with other seeds, gathered into groups.

A group is every run whose resolved config is the same apart from its name and `train.seed` (a
sweep's trials, or runs made by hand), trained on the same data. A run with no siblings is a group
of one: `compare` shows it as a single run, as before.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_bench.config import describe_schema
from fer_bench.runs.artifacts import Run

SEED_OVERRIDE = "train.seed="


@functools.cache
def _schema_defaults() -> tuple[tuple[list[str], str, Any], ...]:
    """(section path, key, default as JSON reads it back) for every schema key: walked once, not once a run."""
    return tuple((key.split(".")[:-1], key.split(".")[-1], json.loads(json.dumps(default, default=str)))
                 for key, _, default, _ in describe_schema())


def _with_defaults(config: dict) -> dict:
    """Keys the schema gained after a run was made read as their defaults, so that a run made before a new key
    (augment.mixup, say) and one made after it still count as the same configuration."""
    for path, leaf, default in _schema_defaults():
        section = config
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and leaf not in section:
            section[leaf] = copy.deepcopy(default)
    return config


def configuration(run: Run) -> dict:
    """The run's config without what a seed changes or what only names it."""
    config = _with_defaults(json.loads(json.dumps(run.config, default=str)))
    for key in ("name", "description"):
        config.pop(key, None)
    (config.get("train") or {}).pop("seed", None)
    features = config.get("features") or {}
    if features.get("cnn_overrides"):
        # A feature config's seed reaches its first-stage CNN as an override: the same seed, not another setting.
        features["cnn_overrides"] = [o for o in features["cnn_overrides"] if not str(o).replace(" ", "").startswith(SEED_OVERRIDE)]
    return config


def group_key(run: Run) -> str:
    text = json.dumps([configuration(run), run.metrics.get("data_fingerprint"), run.metrics.get("kind")], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def seed_of(run: Run) -> int | None:
    seed = (run.config.get("train") or {}).get("seed")
    return seed if isinstance(seed, int) else None


@dataclass
class Group:
    """One configuration and its runs, ordered by seed."""

    name: str
    runs: list[Run]

    @property
    def seeds(self) -> list[int | None]:
        return [seed_of(r) for r in self.runs]

    @property
    def single(self) -> bool:
        return len(self.runs) == 1

    def scores(self, split: str, metric: str) -> np.ndarray:
        return np.array([(r.metrics.get(split) or {}).get(metric, np.nan) for r in self.runs], dtype=float)


def _name(runs: list[Run]) -> str:
    """A sweep group's folder (the trials' common parent), else the runs' longest common name prefix; a group
    of several seeds ends in its count, so that every view names it the same way and none takes it for a run."""
    if len(runs) == 1:
        return runs[0].name
    parents = {os.path.dirname(r.name) for r in runs}
    if len(parents) == 1 and all(r.metrics.get("sweep") for r in runs) and parents != {""}:
        stem = parents.pop()
    else:
        # "run-3/seed=0" and "run-3/seed=1" share "run-3/seed=": the group is "run-3"
        stem = re.sub(r"[-_/=. ]*seeds?[-_=]*$", "", os.path.commonprefix([r.name for r in runs])).rstrip("-_/=. ")
    return f"{stem or runs[0].name} ({len(runs)} seeds)"


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs gathered by configuration (and data), each group in seed order, groups in the order first seen.

    Runs whose seeds repeat within a configuration (the same run made twice) stay apart: a group holds
    each seed once.
    """
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(group_key(run), []).append(run)
    groups = []
    for members in by_key.values():
        seeds = [seed_of(r) for r in members]
        if len(members) > 1 and (None in seeds or len(set(seeds)) != len(seeds)):
            groups.extend(Group(r.name, [r]) for r in members)
            continue
        members.sort(key=lambda r: seed_of(r) or 0)
        groups.append(Group(_name(members), members))
    return groups
