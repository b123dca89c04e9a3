"""An MLP over positions: token mixing of a fixed-size grid, as TRM mixes the 81 cells of a Sudoku ("Less is More:
Recursive Reasoning with Tiny Networks", arXiv 2510.04871, its TRM-MLP variant), after MLP-Mixer's token-mixing MLP
(Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision").

For x (B, T, d_model) with T = ``length``, every channel c mixes its T values with one SwiGLU over positions,
shared by the channels:

    u = x[:, :, c]  (B, T);   y[:, :, c] = W_down (silu(W_gate u) * (W_up u)),   W_gate, W_up: (h, T), W_down: (T, h)

with h = round(expansion * T). Every position sees every other one: the mixer runs only non-causally
(``objective=fill``), at exactly ``length`` positions (conf/attention/position_mlp.yaml sets it to ``seq_len``),
and keeps no state. Departures: no bias (TRM's SwiGLU has none either), the runner's pre-norm block around it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerConfig, State


@dataclass
class PositionMLPConfig(MixerConfig):
    name: str = "position_mlp"
    length: Optional[int] = None  # the positions it mixes: the run's seq_len (the conf interpolates ${seq_len})
    expansion: float = 4.0  # hidden positions = round(expansion * length)

    def validate(self) -> None:
        n = self.name
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"{n}: length={self.length!r} must be the number of positions it mixes (seq_len, e.g. 81 "
                             f"for data=sudoku)")
        if not isinstance(self.expansion, (int, float)) or not self.expansion > 0 or round(
                self.expansion * self.length) < 1:
            raise ValueError(f"{n}: expansion={self.expansion!r} must be > 0 (hidden positions = expansion * "
                             f"length), e.g. 4")


class PositionMLP(Mixer):
    """A SwiGLU over the positions of a fixed-length input, one per model layer, shared by the channels."""

    residual_out = ("down",)
    quadratic = False
    bidirectional = True
    native_noncausal = True

    def __init__(self, d_model: int, cfg: PositionMLPConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        self.d_model, self.length = d_model, int(cfg.length)
        self.hidden = round(cfg.expansion * self.length)
        self.gate_up = nn.Linear(self.length, 2 * self.hidden, bias=False)
        self.down = nn.Linear(self.hidden, self.length, bias=False)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        if self.causal:
            raise ValueError("position_mlp mixes every position with every other: it runs only non-causally "
                             "(objective=fill)")
        self.refuse_state_when_noncausal(state)
        if x.shape[1] != self.length:
            raise ValueError(f"position_mlp mixes exactly {self.length} positions (attention.length); this input has "
                             f"{x.shape[1]}")
        g, u = self.gate_up(x.transpose(1, 2)).chunk(2, dim=-1)  # (B, d, h) each
        return self.down(F.silu(g) * u).transpose(1, 2), None

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        return 0

    def flops_per_token(self, n: int) -> int:
        """Per position: each of the d_model channels takes 3 h multiply-adds into and out of the hidden positions."""
        return 2 * 3 * self.hidden * self.d_model
