"""The optional speed path, all off by default so a CPU run needs none of it:

* ``precision=bf16``: bf16 autocast around every forward (training, evaluation, benchmark). Projections, MLPs and
  softmax attention run in bf16; the residual stream, the losses and the linear mixers' recurrences stay in
  float32 (the ``torch`` ops turn autocast off inside, runner/ops/precision.py; fla's kernels accumulate in
  float32).
* ``compile=true``: ``torch.compile`` of the training step's forward and backward; evaluation and the benchmark
  run the model eagerly. On a CPU, inductor needs a C++ compiler.
* ``kernels=fla``: flash-linear-attention's Triton kernels for the linear mixers' chunked ops
  (:mod:`runner.ops.backends`), NVIDIA GPUs only.
* ``parallel=fsdp``: under torchrun, shard parameters, gradients and optimizer state (FSDP2 ``fully_shard``,
  one unit per block) instead of replicating them (``ddp``); :mod:`runner.distributed`.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")
PARALLEL = ("ddp", "fsdp")


def problems(c, device_type: str) -> list[str]:
    """What is wrong with the speed-path settings of config ``c`` for a run on ``device_type``."""
    from .ops.backends import KERNELS, fla_problem

    out = []
    if c.precision not in PRECISIONS:
        out.append(f"precision={c.precision!r} is not supported; allowed: {list(PRECISIONS)} (bf16 = bf16 autocast)")
    if c.kernels not in KERNELS:
        out.append(f"kernels={c.kernels!r} is not a kernel backend; allowed: {list(KERNELS)}")
    elif c.kernels == "fla":
        why = fla_problem(device_type)
        if why:
            out.append(why)
    if c.parallel not in PARALLEL:
        out.append(f"parallel={c.parallel!r} is not supported; allowed: {list(PARALLEL)} (used under torchrun)")
    if not isinstance(c.compile, bool):
        out.append(f"compile={c.compile!r} must be true or false")
    elif c.compile and device_type == "cpu":
        import shutil

        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            out.append("compile=true on a CPU needs a C++ compiler (g++ or clang++) for torch.compile's inductor; "
                       "install one or use compile=false")
    return out


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def for_training(module, enabled: bool):
    """The callable the training steps run: ``torch.compile(module)`` (the model, or its DDP / FSDP wrapper) when
    enabled, else the module itself. The module is not changed, so periodic validation, evaluation, benchmarks
    and checkpoints use the plain model (its parameter names are unchanged)."""
    return torch.compile(module) if enabled else module
