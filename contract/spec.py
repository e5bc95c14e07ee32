"""A batch's spec: everything that shapes its answers, stored once with the batch and never per job."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError
from .keys import PRIORITIES


@dataclass(frozen=True)
class BatchSpec:
    model: str
    max_words: int
    #: kombu priority of the batch's messages: high, normal or low
    priority: str = "normal"

    def __post_init__(self) -> None:
        if self.max_words < 1:
            raise ConfigError(f"max words must be at least 1, got {self.max_words}")
        if self.priority not in PRIORITIES:
            raise ConfigError(f"priority {self.priority!r} must be one of {', '.join(PRIORITIES)}")

    @property
    def step(self) -> int:
        return PRIORITIES[self.priority]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> BatchSpec:
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self, other: BatchSpec) -> list[str]:
        """What differs, as 'name: stored -> asked' lines, for the error of a resume with another spec."""
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{name}: {_short(mine[name])} -> {_short(theirs[name])}" for name in mine if mine[name] != theirs[name]
        ]


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
