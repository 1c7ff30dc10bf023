"""The one settings record of a collection (`EmbedSettings`): what made its rows, how its files
are identified. Written as keys of `OUT.meta.json` (`metadata.py`); compared by every check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

_MODEL_KEYS = ("reference", "commit", "weights", "weights_sha256", "precision")
RUNTIME_KEYS = ("device", "batch_size", "convolution")  # where the rows were made: recorded beside the settings


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that made a collection's rows what they are, and how its files are identified:
    the one record that `--update`, `--resume`, `combine`, Ray, `bit search`'s queries and the
    fine-tune feature cache compare (`diff`). Written once, as keys of `OUT.meta.json`.

    `model` holds what `--model` named (`reference`), the hub commit, the checkpoint's file names,
    `weights_sha256` (a local checkpoint's content; None for a hub commit, which is its content)
    and the precision. `content_hash` ("sha256" with `--hash`) is the identity policy: it does not
    change a row's bytes, so `diff` leaves it out (`--update` handles a change of policy)."""

    model: dict[str, Any]
    preprocessing: dict[str, Any]
    decode: dict[str, Any]  # fast_jpeg, max_pixels
    dtype: str = "float32"
    normalize: bool = False
    content_hash: str | None = None

    ROW_KEYS = ("model", "preprocessing", "decode", "dtype", "normalize")  # what the rows depend on
    KEYS = (*ROW_KEYS, "content_hash")  # the record's keys in a header

    @classmethod
    def from_fingerprint(cls, fp: dict[str, Any]) -> "EmbedSettings":
        """From a run's fingerprint (`Embedder.fingerprint()` plus "dtype", "content_hash")."""
        return cls(
            model={"reference": fp.get("model"), "commit": fp.get("commit"), "weights": fp.get("weights"),
                   "weights_sha256": fp.get("weights_sha256"), "precision": fp.get("precision", "fp32")},
            preprocessing=fp.get("preprocessing") or {},
            decode={"fast_jpeg": bool(fp.get("fast_jpeg", False)), "max_pixels": fp.get("max_pixels")},
            dtype=str(fp.get("dtype", "float32")),
            normalize=bool(fp.get("normalize", False)),
            content_hash="sha256" if fp.get("content_hash") else None,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EmbedSettings":
        """From a header (or any dict with the same keys)."""
        model = data.get("model") or {}
        return cls(
            model={k: model.get(k) for k in _MODEL_KEYS},
            preprocessing=dict(data.get("preprocessing") or {}),
            decode={"fast_jpeg": bool((data.get("decode") or {}).get("fast_jpeg", False)),
                    "max_pixels": (data.get("decode") or {}).get("max_pixels")},
            dtype=str(data.get("dtype", "float32")),
            normalize=bool(data.get("normalize", False)),
            content_hash=data.get("content_hash"),
        )

    @staticmethod
    def runtime(fp: dict[str, Any]) -> dict[str, Any]:
        """A run's fingerprint's keys that are not settings: the device, batch size and convolution
        path (informative in a header; in a run record, a resume repeats them for byte-identical rows)."""
        return {k: fp[k] for k in RUNTIME_KEYS if k in fp}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists, so two records compare as their JSON does)."""
        record = {"model": {k: self.model.get(k) for k in _MODEL_KEYS}, "preprocessing": self.preprocessing,
                  "decode": self.decode, "dtype": self.dtype, "normalize": self.normalize,
                  "content_hash": self.content_hash}
        return json.loads(json.dumps(record))

    def diff(self, now: "EmbedSettings") -> list[str]:
        """The row settings that differ, `self` then and `now`: ["normalize True then, False now", ...]."""
        theirs, mine = self.to_json(), now.to_json()
        return differences({k: theirs[k] for k in self.ROW_KEYS}, {k: mine[k] for k in self.ROW_KEYS})

    def model_reference(self) -> str:
        """What `bitcli.load` takes to get the same weights: `repo@commit`, or the local path."""
        reference = str(self.model.get("reference"))
        commit = self.model.get("commit")
        return f"{reference.split('@', 1)[0]}@{commit}" if commit else reference

    def options(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """As `bit embed`'s options, with those `given` on the command line instead (`--update` and
        `--resume` take the rest from here; a given one that differs is refused by the check)."""
        given = given or {}
        recorded = {"normalize": self.normalize, "dtype": self.dtype, "content_hash": self.content_hash is not None,
                    "precision": self.model.get("precision") or "fp32", "fast_jpeg": bool(self.decode.get("fast_jpeg")),
                    "max_pixels": self.decode.get("max_pixels") or 0}
        return {**recorded, **given, "model": given.get("model") or self.model_reference()}

    def model_changed(self, now: "EmbedSettings") -> bool:
        """The same model reference, other weights: a local checkpoint retrained in place (or a
        header from before bitcli recorded the content: unknown, so not the same)."""
        a, b = self.model, now.model
        return (a.get("reference"), a.get("commit")) == (b.get("reference"), b.get("commit")) and a.get("weights_sha256") != b.get("weights_sha256")


def differences(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str] = ("then", "now"), *,
                skip: tuple[str, ...] = ("inputs",)) -> list[str]:
    """Every setting that differs, in `first`'s order: "normalize True then, False now" (nested
    objects by dotted key, a run record's `settings` and `runtime` by their own keys; `skip`: top-level keys
    left out). The one wording of a difference: a collection, a resumed run, a shard alike."""
    a, b = _flatten(first), _flatten(second)
    keys = [*a, *(k for k in b if k not in a)]
    if a.get("model.weights_sha256") and a.get("model.weights_sha256") == b.get("model.weights_sha256"):
        skip = (*skip, "model.reference")  # a local model is its content: a moved or copied folder is the same model
    return [f"{k} {a.get(k)!r} {names[0]}, {b.get(k)!r} {names[1]}" for k in keys
            if k.split(".", 1)[0] not in skip and k not in skip and a.get(k) != b.get(k)]


def describe_difference(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str] = ("then", "now"), *,
                        most: int = 3, skip: tuple[str, ...] = ("inputs",)) -> str | None:
    """The first `most` of `differences`, joined; None when nothing differs."""
    return "; ".join(differences(first, second, names, skip=skip)[:most]) or None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix if key in ("settings", "runtime") else f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_made_alike(theirs: dict[str, Any], mine: dict[str, Any], fix: Callable[[str | None], Exception],
                     names: tuple[str, str] = ("then", "now")) -> None:
    """Raise `fix(difference)` unless the rows recorded as `theirs` were made as `mine` would make
    them, compared on `mine`'s keys: the settings' difference in words, None when only the inputs differ."""
    theirs = {k: theirs.get(k) for k in mine}
    difference = describe_difference(theirs, mine, names)  # None: the same (a moved local model too)
    if difference is not None or theirs.get("inputs") != mine.get("inputs"):
        raise fix(difference)
