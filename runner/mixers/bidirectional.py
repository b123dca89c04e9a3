"""A causal linear mixer run over the whole sequence: a forward and a reversed causal pass, averaged.

For a non-causal objective (masked diffusion, runner/objectives/mdlm.py) every position must see every other. A
linear-time recurrence is causal by construction, so, as bidirectional Mamba (Vim, Zhu et al. 2024) and Caduceus
(Schiff et al. 2024) do, the sequence is mixed twice: once left to right and once right to left (the mixer on the
time-reversed input, its output reversed back), and the two are averaged:

    y = (M(x) + flip(M(flip(x)))) / 2

The two directions share every parameter (one mixer, as Caduceus ties its two Mamba passes), so a non-causal model
has exactly the parameters of its causal twin and a sweep over ``objective=`` compares equal models; the price is
two passes of compute (``flops_per_token`` doubles). Averaging rather than adding keeps the residual branch at the
causal model's scale. Each direction is the mixer's own causal form, so each is tested against the same references;
a non-causal mixer keeps no decode state (diffusion sampling reruns the whole block, runner/generate.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import Mixer, State


class Bidirectional(Mixer):
    """Wraps a causal mixer ``inner``: (inner(x) + flip(inner(flip(x)))) / 2, parameters shared."""

    causal = False

    def __init__(self, inner: Mixer):
        super().__init__()
        self.inner = inner
        self.d_model = inner.d_model
        self.quadratic = inner.quadratic
        self.residual_out = tuple(f"inner.{n}" for n in inner.residual_out)

    @property
    def kernels(self) -> str:
        return self.inner.kernels

    @property
    def aux_loss(self) -> Optional[torch.Tensor]:
        return self.inner.aux_loss

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        self.refuse_state_when_noncausal(state)
        fwd, _ = self.inner(x, None, need_state=False)
        bwd, _ = self.inner(x.flip(1), None, need_state=False)
        return (fwd + bwd.flip(1)) * 0.5, None

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        return 0  # no decode state: every call mixes the whole sequence

    def flops_per_token(self, n: int) -> int:
        return 2 * self.inner.flops_per_token(n)
