"""Inference engine settings: how a loaded BiT runs fastest on this machine with the same numbers.

The package imports no torch (`plan.py` and `machine.py` are read before it is). After the
weights load, `checkpoint.load_model` calls `runtime.prepare`, which changes the model in place
and returns an `EngineRecord` of its choices (in `bit embed --resume`'s fingerprint); what runs
on which device is decided by `plan.make_plan`. On a CPU: channels-last weights and the accurate
channels-last GroupNorm (`model.groupnorm`); batch slicing for cache residency
(`slicing.py`, budget from `machine.py`); opt-in bf16 after the stem; on one thread, oneDNN
convolutions called directly (`native.py`); opt-in `torch.compile`. On CUDA and MPS nothing
CPU-specific runs (see plan.py). The figures are in docs/speed.md and docs/engine.md."""
