"""One small registry type for models, classifiers, feature extractors, detectors and data sources.

Each entry is a function and the facts that go with it (a backbone's preprocessing, a detector's
framing, a model's own checks), given where it is registered: adding an entry is one function
and one decorator, and nothing about it lives anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry(dict[str, Callable[..., Any]]):
    """Name -> function, filled by the `register` decorator; registering a name twice is a bug."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.facts: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **facts: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(function: Callable[..., Any]) -> Callable[..., Any]:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = function
            self.facts[name] = facts
            return function

        return add

    def fact(self, name: str, key: str, default: Any = None) -> Any:
        """A fact given when `name` was registered (`default` where it gave none)."""
        return self.facts.get(name, {}).get(key, default)

    def having(self, key: str) -> list[str]:
        """The names whose entries give the fact `key`, sorted."""
        return sorted(name for name, facts in self.facts.items() if facts.get(key) is not None)
