"""The ops compute in float32 (float64 for float64 inputs) even under bf16 autocast (``precision=bf16``): the
decayed recurrences and the triangular solves of the chunked forms lose too much in bf16, and the state they
carry from chunk to chunk must not be rounded. Every public op is wrapped in :func:`full_precision`."""
from __future__ import annotations

import functools

import torch


def full_precision(fn):
    """Run ``fn`` with autocast off on every device type; the op promotes its inputs itself."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # always entered, never skipped on is_autocast_enabled(): under torch.compile the backward is traced
        # where that query does not see the autocast state the graph will run with
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper
