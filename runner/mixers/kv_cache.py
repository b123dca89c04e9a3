"""Appending to a KV cache along time without copying the whole cache every step.

``torch.cat([cache, new], dim=1)`` copies all n cached tokens to add one: at n = 16384 that copy was almost half
of the all-softmax small model's decode time per token (17.1 ms with it, 9.5 ms without; batch 2, 2-core CPU),
which made the quadratic layers look slower next to the linear ones than they are. :func:`append_time` writes the new
tokens into spare room after the cache instead, and returns a view of ``buffer[:, start:end]``, so the state
the mixers hand out is still an ordinary (B, n, ...) tensor. When the room runs out it moves the cache into a
buffer 25% (at least 256 tokens) larger than needed, so each token is copied O(1) times on average; the spare
room is not counted in ``state_bytes`` (it is at most a quarter of the cache, and a paged cache would not hold
it either).

Continuing twice from the same state is safe: a buffer remembers how far it is filled, and a cache view that
does not end there (an older state) gets a fresh buffer instead of overwriting the other continuation's
tokens. With gradients flowing into the cache (training through a state) it falls back to ``torch.cat``.
"""
from __future__ import annotations

from typing import Optional

import torch

MIN_SPARE = 256  # tokens of room added at least when a buffer is (re)allocated
GROWTH = 0.25  # and at least this share of the tokens held


def _room(prev: torch.Tensor, T: int):
    """(buffer, start, end) when ``prev`` is the filled end of a cache buffer with room for T more tokens."""
    buf = prev._base
    if buf is None or getattr(buf, "_cache_end", None) is None:
        return None
    if buf.dtype != prev.dtype or buf.shape[0] != prev.shape[0] or buf.shape[2:] != prev.shape[2:] \
            or prev.stride() != buf.stride():
        return None
    offset = prev.storage_offset() - buf.storage_offset()
    if offset % buf.stride(1):
        return None
    start = offset // buf.stride(1)
    end = start + prev.shape[1]
    if buf._cache_end != end or end + T > buf.shape[1]:
        return None
    return buf, start, end


def append_time(prev: Optional[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """``prev`` followed by ``new`` along dim 1 (time): the same values as ``torch.cat([prev, new], 1)``."""
    if prev is None:
        return new
    if torch.is_grad_enabled() and (prev.requires_grad or new.requires_grad):
        return torch.cat([prev, new.to(prev.dtype)], dim=1)
    T = new.shape[1]
    room = _room(prev, T)
    if room is not None:
        buf, start, end = room
        buf[:, end:end + T] = new
        buf._cache_end = end + T
        return buf[:, start:end + T]
    n = prev.shape[1] + T
    buf = prev.new_empty(prev.shape[0], n + max(MIN_SPARE, int(GROWTH * n)), *prev.shape[2:])
    buf[:, :prev.shape[1]] = prev
    buf[:, prev.shape[1]:n] = new
    buf._cache_end = n
    return buf[:, :n]
