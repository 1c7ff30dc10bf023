"""The library API: load a BiT model, then classify or embed images in batches (docs/usage.md).

Inputs are paths, directories or globs, or `InputItem`s / `InputError`s; results come back in
input order, failed inputs in their place (`error` set). Batch k is always inputs
[k * B, (k + 1) * B): which rows share a forward pass never depends on which files are broken,
so `--resume`, `--shard` and the Ray engine reproduce one run's bytes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from bitcli.engine.plan import resolve_device
from bitcli.errors import BitError, CheckpointError, InputError, UsageError
from bitcli.results import ClassifyResult, EmbedResult, Prediction, short_float
from bitcli.util import DEFAULT_MAX_PIXELS, first_line

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bitcli.checkpoint.loading import LoadedModel
    from bitcli.inputs import InputItem
    from bitcli.labels import Labels

DEFAULT_MODEL = "google/bit-50"
DEFAULT_BATCH_SIZE = 8

InputLike = Union[str, Path, "InputItem", InputError]
# NaN or infinite scores or embeddings (weights overflowing float32 on an image) fail that input.
NON_FINITE = "non-finite model output (NaN or infinity) for this image"
ModelLike = Union[str, Path, "LoadedModel"]


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs besides the model and its inputs.

    `device` / `precision`: None is "auto" / "fp32" when loading, and accepts an already loaded
    model as it is (another value for one is a UsageError). `max_pixels`: larger images fail before
    decoding (None: no limit). `fast_jpeg`: JPEGs decode at a reduced scale (not pixel-identical)."""

    device: str | None = None  # auto, cpu, cuda, cuda:N, mps
    precision: str | None = None  # fp32, bf16, fp16 (GPUs)
    offline: bool | None = None  # None: follow HF_HUB_OFFLINE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None  # decoding threads; None: one per core
    fast_jpeg: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError("max_pixels must be at least 1, or None for no limit (--max-pixels 0 on the command line)")
        if self.precision is not None:
            check_precision(self.precision)

    @classmethod
    def merge(cls, options: RunOptions | None, overrides: dict[str, Any]) -> RunOptions:
        """`options` (or the defaults) with keyword overrides; an unknown keyword is a TypeError."""
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        return replace(options or cls(), **overrides)


def load(
    model: ModelLike = DEFAULT_MODEL,
    *,
    device: str | None = None,
    offline: bool | None = None,
    progress: bool = False,
    precision: str | None = None,
) -> LoadedModel:
    """Resolve a model reference (downloading it at most once) and load it on `device`.

    precision: "fp32" (None), "bf16" or "fp16" (GPUs). A `LoadedModel` comes back as it is when
    `device` and `precision` agree with it. ModelError (exit 3) when it cannot load; UsageError for
    an unavailable device or precision."""
    from bitcli.checkpoint.loading import LoadedModel, load_model

    if precision is not None:
        check_precision(precision)
    if isinstance(model, LoadedModel):
        return check_loaded(model, device, precision)
    from bitcli import hub

    torch_device = resolve_device(device)
    check_precision(precision or "fp32", torch_device.type)
    resolved = hub.resolve_model(str(model), offline=offline, progress=progress)
    try:
        return load_model(resolved.path, device=torch_device, precision=precision or "fp32", resolved=resolved)
    except BitError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{model}: cannot load the checkpoint ({first_line(exc)})") from exc


def check_loaded(model: LoadedModel, device: str | None, precision: str | None) -> LoadedModel:
    """`model`, when an explicitly asked device and precision agree with how it was loaded."""
    if device is not None and resolve_device(device).type != model.device.type:
        raise UsageError(
            f"{model.name} is already loaded on {model.device.type}, not {device}; "
            "pass device= to bitcli.load instead"
        )
    if precision is not None and precision != model.precision:
        raise UsageError(
            f"{model.name} is already loaded in {model.precision}, not {precision}; "
            "pass precision= to bitcli.load instead"
        )
    return model


def check_precision(precision: str, device_type: str | None = None) -> None:
    """UsageError for an unknown precision, or (given the device type) one the device cannot run."""
    from bitcli.engine.plan import check_precision as check

    try:
        check(precision, device_type)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def as_items(inputs: Iterable[InputLike]) -> Iterator["InputItem | InputError"]:
    """Paths (expanded like the command line: directories, globs, `-`), items and errors, in order."""
    from bitcli.inputs import InputItem, expand_inputs

    index = 0
    for value in inputs:
        if isinstance(value, InputError):
            yield value
            continue
        expanded = [value] if isinstance(value, InputItem) else expand_inputs([str(value)])
        for item in expanded:
            if isinstance(item, InputItem):
                yield InputItem(index=index, path=item.path)
                index += 1
            else:
                yield item


class _Runner:
    """Shared batching: loader output -> batches through the model under inference mode."""

    def __init__(self, model: ModelLike, options: RunOptions) -> None:
        self.options = options
        self.model = load(model, device=options.device, precision=options.precision, offline=options.offline)

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def _groups(self, inputs: Iterable[InputLike], failure: Any) -> Iterator[list[Any]]:
        """One list per batch: `_result` per image, `failure(path=, error=)` per failed input, in its place."""
        from bitcli.loader import default_workers, image_loader, load_ordered

        opts = self.options
        load_fn = image_loader(self.model.preprocess, max_pixels=opts.max_pixels, fast_jpeg=opts.fast_jpeg)
        workers = opts.workers or default_workers()
        stream = load_ordered(as_items(inputs), load_fn, workers=workers, lookahead=max(2 * self.batch_size, 2 * workers))
        for group in iter(lambda: list(itertools.islice(stream, self.batch_size)), []):
            outputs = self._outputs([entry.tensor for entry in group if not isinstance(entry, InputError)])
            results = []
            row = 0
            for entry in group:
                if isinstance(entry, InputError):
                    results.append(failure(path=entry.path, error=entry.reason))
                    continue
                ok = outputs[-1][row]  # every _forward ends its outputs with a finiteness mask
                results.append(self._result(entry.path, outputs, row) if ok else failure(path=entry.path, error=NON_FINITE))
                row += 1
            yield results

    def _outputs(self, tensors: list[Any]) -> Any:
        """`_forward` of the batch's images, a pass per run of one tensor shape (None for no image)."""
        import numpy as np

        outs = [self._forward(list(run)) for _, run in itertools.groupby(tensors, key=lambda t: t.shape)]
        if len(outs) > 1:  # join the passes: arrays, or each of classify's (scores, indices)
            outs = [tuple(map(np.concatenate, zip(*outs))) if isinstance(outs[0], tuple) else np.concatenate(outs)]
        return outs[0] if outs else None

    def _features(self, tensors: list[Any]) -> "torch.Tensor":
        """Pooled features [N, C] (float32, on the model's device) for a list of [3, H, W] tensors."""
        import torch

        x = torch.stack(tensors).to(self.model.device).contiguous(memory_format=torch.channels_last)
        _, pooled = self.model.model.forward_features(x)
        return pooled.float()

    def _forward(self, tensors: list[Any]) -> Any:
        raise NotImplementedError

    def _result(self, path: str, outputs: Any, row: int) -> Any:
        raise NotImplementedError


class Classifier(_Runner):
    """Top-k softmax predictions per image. `labels`: a `--labels` file, a list of names or `Labels`."""

    def __init__(
        self,
        model: ModelLike = DEFAULT_MODEL,
        *,
        top_k: int = 5,
        labels: str | Path | Sequence[str] | Labels | None = None,
        options: RunOptions | None = None,
        **overrides: Any,
    ) -> None:
        """`options` and/or keyword overrides of its fields (device=, batch_size=, ...: see `RunOptions`)."""
        super().__init__(model, RunOptions.merge(options, overrides))
        num_classes = int(self.model.config.num_labels)
        if num_classes < 1:
            raise UsageError(f"{self.model.name} has no classifier head (features only); use `bit embed` instead")
        if top_k < 1:
            raise UsageError("--top-k must be at least 1")
        self.top_k = min(top_k, num_classes)
        self.labels = self._labels(labels, num_classes)

    def _labels(self, labels: Any, num_classes: int) -> "Labels":
        from bitcli.labels import Labels

        if isinstance(labels, Labels):
            return labels
        if labels is None or isinstance(labels, (str, Path)):
            return self.model.labels(labels)
        names = [str(n) for n in labels]
        if len(names) != num_classes:
            raise UsageError(f"{len(names)} labels given, but the model's head has {num_classes} classes")
        return Labels(names, "given list")

    def _forward(self, tensors: list[Any]) -> Any:
        import torch

        with torch.inference_mode():
            logits = self.model.model.forward_head(self._features(tensors)).float()
            scores, indices = torch.softmax(logits, dim=-1).topk(self.top_k, dim=-1)
            finite = torch.isfinite(logits).all(dim=-1) & torch.isfinite(scores).all(dim=-1)
        return scores.cpu().numpy(), indices.cpu().numpy(), finite.cpu().numpy()

    def _result(self, path: str, outputs: Any, row: int) -> ClassifyResult:
        scores, indices, _ = outputs
        preds = [
            Prediction(rank=r + 1, index=int(i), label=self.labels.names[int(i)], score=short_float(s))
            for r, (s, i) in enumerate(zip(scores[row], indices[row]))
        ]
        return ClassifyResult(path=path, predictions=preds)

    def classify_groups(self, inputs: Iterable[InputLike]) -> Iterator[list[ClassifyResult]]:
        """One list of results per batch, in input order (failures in their place)."""
        return self._groups(inputs, ClassifyResult)

    def classify(self, inputs: Iterable[InputLike]) -> Iterator[ClassifyResult]:
        """One result per input, in input order."""
        for group in self.classify_groups(inputs):
            yield from group


class Embedder(_Runner):
    """Pooled feature vectors (after the final norm, before the head), optionally L2-normalized."""

    def __init__(
        self,
        model: ModelLike = DEFAULT_MODEL,
        *,
        normalize: bool = False,
        options: RunOptions | None = None,
        **overrides: Any,
    ) -> None:
        """`options` and/or keyword overrides of its fields (device=, batch_size=, ...: see `RunOptions`)."""
        super().__init__(model, RunOptions.merge(options, overrides))
        self.normalize = normalize

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the rows' bytes (for `bit embed --resume`)."""
        opts = self.options
        return {
            **self.model.fingerprint(),  # weights, preprocessing, device, precision, convolution path
            "normalize": self.normalize,
            "batch_size": opts.batch_size,
            "fast_jpeg": opts.fast_jpeg,
            "max_pixels": opts.max_pixels,  # an image over the limit is a failure, not a row
        }

    def _forward(self, tensors: list[Any]) -> Any:
        import torch

        with torch.inference_mode():
            pooled = self._features(tensors)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            finite = torch.isfinite(pooled).all(dim=1)
        return pooled.cpu().numpy(), finite.cpu().numpy()

    def _result(self, path: str, outputs: Any, row: int) -> EmbedResult:
        return EmbedResult(path=path, vector=outputs[0][row])

    def embed_groups(self, inputs: Iterable[InputLike]) -> Iterator[list[EmbedResult]]:
        """One list of results per batch, in input order (failures in their place)."""
        return self._groups(inputs, EmbedResult)

    def embed(self, inputs: Iterable[InputLike]) -> Iterator[EmbedResult]:
        """One result per input, in input order; `vector` is float32 [feature_dim]."""
        for group in self.embed_groups(inputs):
            yield from group


@dataclass
class Embeddings:
    """All rows at once (for in-memory use; `bit embed` streams to disk instead)."""

    vectors: "np.ndarray"  # float32 [N, D], row i belongs to paths[i]
    paths: list[str]
    errors: list[tuple[str, str]]  # (path, reason) of inputs that failed


def classify(inputs: Iterable[InputLike], model: ModelLike = DEFAULT_MODEL, *, top_k: int = 5, **options: Any) -> list[ClassifyResult]:
    """Classify images; one result per input, in order. Options as for `Classifier`."""
    return list(Classifier(model, top_k=top_k, **options).classify(inputs))


def embed(inputs: Iterable[InputLike], model: ModelLike = DEFAULT_MODEL, *, normalize: bool = False, **options: Any) -> Embeddings:
    """Embed images into one in-memory matrix. Options as for `Embedder`."""
    import numpy as np

    embedder = Embedder(model, normalize=normalize, **options)
    rows, paths, errors = [], [], []
    for r in embedder.embed(inputs):
        if r.ok:
            rows.append(r.vector)
            paths.append(r.path)
        else:
            errors.append((r.path, str(r.error)))
    vectors = np.stack(rows) if rows else np.zeros((0, embedder.feature_dim), dtype=np.float32)
    return Embeddings(vectors=vectors, paths=paths, errors=errors)
