"""Plain result records shared by the library API (`pipeline.py`) and the renderers (`output/`).

Kept free of torch and numpy imports so that rendering and `bit --help` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    rank: int  # 1 = most probable
    index: int  # class index in the model's head
    label: str
    score: float  # softmax probability (a float32 value)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "index": self.index, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class ClassifyResult:
    """The top-k predictions for one input, or why it failed (`error` set, `predictions` empty)."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [p.to_dict() for p in self.predictions]}


@dataclass(frozen=True)
class EmbedResult:
    """The pooled feature vector (numpy float32 [D]) of one input, or why it failed."""

    path: str
    vector: Any = None  # numpy.ndarray [D] float32; None when the input failed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
