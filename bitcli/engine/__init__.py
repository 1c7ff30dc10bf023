"""Inference engine settings: how a loaded BiT runs fastest on this machine with the same numbers.

The package imports nothing (no torch): `plan.py` and `machine.py` are read before torch is
imported. `checkpoint.load_model` calls `runtime.prepare` once, after the weights are loaded (and weight
standardization folded into them). `prepare` changes the model in place and returns an
`EngineRecord` of what it chose; `LoadedModel.engine` keeps it, and `bit embed --resume`'s
fingerprint reads it. What is done on which device is decided by `plan.make_plan` (testable
without the device); on a CPU (numbers in docs/speed.md and docs/engine.md):

- channels-last weights: oneDNN's convolutions run on NHWC without reordering activations;
  GroupNorm on NHWC takes `model.groupnorm` (PyTorch's own channels-last kernel loses
  precision on flat images);
- batch slicing (`slicing.SlicedBackbone`): a 448 px image's stem and first stages write 6-13
  MB per activation, so a batch of 8 streams every GroupNorm, ReLU and add through DRAM (and
  every >32 MB tensor is a fresh mmap: ~460k page faults per batch-8 forward); run one image at
  a time there, and larger slices in the late stages, whose cost is reading their (large)
  weights. The budget is fixed per machine ("auto", `machine.py`): eight times one core's L2
  cache. Same numbers up to summation order (<= 1e-4 on logits);
- precision "bf16" (opt-in, `to_bfloat16`): the convolutions after the stem in bfloat16 on
  the AVX512-BF16/AMX units; the stem, GroupNorm and the head in float32;
- on one thread, oneDNN convolutions called directly (`StdConv2d.onednn`, a private op probed
  first, `native.py`; `BIT_TORCH_PRIVATE_OPS=0` turns it off): PyTorch would send the 1x1 convolutions of a small slice to a GEMM that is ~1.5x
  slower on this CPU (1.60 vs 2.45 CPU-seconds per batch of 8). With more threads PyTorch picks
  oneDNN itself. The thread count is read once, here, when the model is prepared (`--threads`
  is applied before loading), never in the forward pass;
- compile (opt-in): `torch.compile` of the backbone (inductor). Slow to start (35 s here) and
  slower than this eager engine on this CPU (7.2 vs 9.5 images/s at batch 8); kept for
  machines where it is not.

On CUDA and MPS nothing CPU-specific runs (no slicing, no oneDNN calls); fp32 turns cuDNN's
TF32 off, "bf16"/"fp16" are autocast (see plan.py). Untested on real GPUs.

Tried and left out (measured, see docs/speed.md): TorchScript freeze / optimize_for_inference
(<= 1.06x), oneDNN fused conv + residual add (no gain once activations stay in cache).
"""
