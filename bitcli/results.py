"""Plain result records shared by the library API and the renderers (no torch or numpy import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def short_float(value: Any) -> float:
    """A float32 as the Python float of its shortest decimal form (reads back as the same float32)."""
    import numpy as np

    return float(str(np.float32(value)))


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    rank: int  # 1 = most probable
    index: int  # class index in the model's head
    label: str
    score: float  # softmax probability (a float32 value)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "index": self.index, "label": self.label, "score": self.score}


class Outcome:
    """One input's record: `to_dict` gives the name field (`NAME`), then `error` alone or `fields()`."""

    NAME = "path"
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        name = {self.NAME: getattr(self, self.NAME)}
        return {**name, "error": self.error} if self.error is not None else {**name, **self.fields()}

    def fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class ClassifyResult(Outcome):
    """The top-k predictions for one input, or why it failed (`error` set, `predictions` empty)."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"predictions": [p.to_dict() for p in self.predictions]}


@dataclass(frozen=True)
class EmbedResult(Outcome):
    """The pooled feature vector (numpy float32 [D]) of one input, or why it failed."""

    path: str
    vector: Any = None  # numpy.ndarray [D] float32; None when the input failed
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"embedding": [short_float(v) for v in self.vector]}
