"""Will it fit: the least memory a configuration's training needs, against what the machine has, before any work.

The floor counts what training cannot do without: the parameters with their gradients and AdamW's two moments
(4 x 4 bytes per parameter in float32) and the logits of one batch with their gradient (2 x 4 bytes per token and
vocabulary entry), once per deep-supervision step for a recursive model (recursion=trm keeps every step's logits
until the backward, and at the start of training, before its halting head has learnt to stop, every step runs).
Activations come on top, so a configuration under the floor can still run out of memory later
(that is reported as such, runner/errors.py); one above it cannot run and is refused here. The parameters are
counted exactly, on a model built on PyTorch's meta device (no memory, milliseconds).
"""
from __future__ import annotations

import os
from typing import Optional

from . import recursion

BYTES_PER_PARAM = 16  # float32 weight, gradient, and AdamW's first and second moments
BYTES_PER_LOGIT = 8  # float32 logit and its gradient


def machine_memory(device_type: str) -> tuple[Optional[int], str]:
    """Total memory of the device the run uses: the GPU's, or this machine's RAM (None when unknown)."""
    if device_type == "cuda":
        import torch

        try:
            return int(torch.cuda.get_device_properties(0).total_memory), "the GPU's"
        except Exception:  # noqa: BLE001
            return None, "the GPU's"
    found = []
    try:
        found.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found.append((soft, "this process's limit (ulimit -v) of"))
    except (ImportError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                v = f.read().strip()
            if v.isdigit() and int(v) < 1 << 60:
                found.append((int(v), "this container's limit of"))
        except OSError:
            pass
    return min(found) if found else (None, "this machine's")


def vocab_size(cfg) -> int:
    """The data's vocabulary, known before loading: the source's own (runner/sources) or the tokenizer's."""
    from . import sources

    d = cfg.data
    own = getattr(sources.get(d.name), "vocab_size", None)
    if own is not None:
        return int(own(cfg))
    return int(d.vocab_size) if d.tokenizer == "bpe" else 256


def count_params(cfg, layer_types) -> int:
    from .model import build_model

    return build_model(cfg, vocab_size(cfg), layer_types, device="meta").n_params()


def problem(cfg, facts: dict, device_type: str) -> Optional[str]:
    """Why the configuration cannot fit the machine, or None."""
    if "train" not in cfg.stages:
        return None
    total, whose = machine_memory(device_type)
    if not total:
        return None
    n = count_params(cfg, facts["layer_types"])
    tc = cfg.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rec = recursion.settings(cfg.model.get("recursion"))
    copies = rec.supervision_steps if rec is not None else 1
    logits = copies * tc.batch_size // max(1, world) * cfg.seq_len * vocab_size(cfg) * BYTES_PER_LOGIT
    params = n * BYTES_PER_PARAM // (world if cfg.parallel == "fsdp" else 1)
    need = params + logits
    if need <= total:
        return None
    each = f" x {copies} supervision steps" if rec is not None else ""
    fewer = ", fewer model.recursion.supervision_steps" if rec is not None else ""
    return (f"this training cannot fit {whose} {total / 1e9:.1f} GB of memory: it needs at least {need / 1e9:.1f} "
            f"GB before any activation ({n:,} parameters x {BYTES_PER_PARAM} bytes for weights, gradients and AdamW "
            f"state = {params / 1e9:.1f} GB, and {logits / 1e9:.1f} GB of logits for train.batch_size="
            f"{tc.batch_size} x seq_len={cfg.seq_len} x {vocab_size(cfg)} tokens{each}). Choose a smaller model "
            f"(model=..., model.d_model, model.n_layers), a smaller train.batch_size{fewer} or a shorter seq_len")
