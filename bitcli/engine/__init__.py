"""Inference engine settings: how a loaded BiT runs fastest on this machine with the same numbers.

The package imports nothing (no torch): `plan.py` and `machine.py` are read before torch is
imported. `checkpoint.load_model` calls `runtime.prepare` once, after the weights are loaded (and
weight standardization folded into them); `prepare` changes the model in place and returns an
`EngineRecord` of what it chose (kept on `LoadedModel.engine`, read by `bit embed --resume`'s
fingerprint). What is done on which device is decided by `plan.make_plan`, testable without the
device. On a CPU:

- channels-last weights: oneDNN's convolutions run on NHWC without reordering activations;
  GroupNorm on NHWC takes `model.groupnorm` (PyTorch's channels-last kernel loses precision on
  flat images);
- batch slicing (`slicing.SlicedBackbone`): small slices in the early stages, whose activations
  would otherwise leave the cache, larger ones later; the budget is fixed per machine
  (`machine.py`). Same numbers up to summation order (<= 1e-4);
- precision "bf16" (opt-in, `to_bfloat16`): the convolutions after the stem in bfloat16, the
  stem, GroupNorm and the head in float32;
- on one thread, oneDNN convolutions called directly (`native.py`: a private op, probed first;
  `BIT_TORCH_PRIVATE_OPS=0` turns it off). The thread count is read once, when the model is prepared;
- compile (opt-in): `torch.compile` of the backbone.

On CUDA and MPS nothing CPU-specific runs; fp32 turns cuDNN's TF32 off, "bf16"/"fp16" are
autocast (see plan.py). The figures behind each choice, and what was tried and left out, are in
docs/speed.md and docs/engine.md.
"""
