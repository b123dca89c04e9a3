"""Lightning attention, the linear-attention layer of MiniMax-01 / MiniMax-M1 (MiniMax, arXiv 2501.08313 and
2506.13585), as in transformers' ``MiniMaxLightningAttention``.

Per token x (B, T, d_model), with H heads of size D:

    q, k, v = SiLU(W_qkv x)                        (one projection; per head the layout is [q | k | v])
    S_t     = exp(-s_h) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t      (no query scale, no normaliser)
    y       = W_out [ sigmoid(W_g x) * RMSNorm(o) ]                 (RMSNorm over all H * D channels)

The decay rate of head h in layer l of L is fixed, s_h = (2^(-8/H))^(h+1) * (1 - l/(L-1+1e-5) + 1e-5)
(``runner.ops.lightning.lightning_decay_rates``: ALiBi-like slopes, the decay weakening with depth down to almost
none in the last layer; that is why the mixer needs layer_idx and n_layers). The recurrence is computed by
``runner.ops.lightning`` (the chunked form of ``runner.ops.simple_gla``).

Parameter names follow transformers so its weights load one to one: qkv_proj, output_gate, norm (its weight),
out_proj. The rates are not parameters: they are computed in float64 and used in the compute dtype (float32, or
float64 for a float64 model), so a bfloat16 model does not round them (transformers keeps float32 buffers
``slope_rate`` (H, 1, 1) and block-decay tables, which this module does not need).

State after n tokens: ``{"S": (B, H, D, D)}`` in float32 (float64 for a float64 model), whatever the model
dtype; its size does not grow with n.

Calls of fewer than 8 tokens (decoding) use the recurrent form, longer ones the chunked form (same results).

Departures: the block (chunk) size defaults to 64 instead of MiniMax's 256 (``chunk_size``, same results); no
padding mask (the runner has none); the norm epsilon is an option (transformers: 1e-6, the default here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.mixers.base import GatedRMSNorm, Mixer, MixerConfig, State
from runner.ops.lightning import lightning_decay_rates, recurrent_lightning_attn

_RECURRENT_BELOW = 8  # calls shorter than this (decoding) use the recurrent form: same result, less overhead


@dataclass
class LightningConfig(MixerConfig):
    name: str = "lightning"
    chunk_size: int = 64      # block length of the chunked form (MiniMax: 256); any value >= 1 gives the same result
    norm_eps: float = 1e-6    # epsilon of the output RMSNorm

    def validate(self) -> None:
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"lightning: chunk_size={self.chunk_size!r} must be an integer >= 1, e.g. 64")
        if not self.norm_eps > 0:
            raise ValueError(f"lightning: norm_eps={self.norm_eps!r} must be > 0, e.g. 1e-6")


class LightningAttention(Mixer):
    """MiniMax lightning attention: SiLU q, k, v; a fixed per-head decay set by depth; gated RMSNorm output."""

    residual_out = ("out_proj",)  # the projection back into the residual stream (scaled init)

    quadratic = False

    def __init__(self, d_model: int, cfg: LightningConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        if cfg.num_heads is None or cfg.head_dim is None:
            raise ValueError("lightning: num_heads and head_dim must be set (make_config fills them from the model)")
        cfg.validate()
        self.cfg, self.d_model, self.layer_idx, self.n_layers = cfg, d_model, layer_idx, n_layers
        H, D = cfg.num_heads, cfg.head_dim
        self.H, self.D = H, D
        self.qkv_proj = nn.Linear(d_model, 3 * H * D, bias=False)
        self.output_gate = nn.Linear(d_model, H * D, bias=False)
        self.norm = GatedRMSNorm(H * D, eps=cfg.norm_eps, activation="sigmoid")
        self.out_proj = nn.Linear(H * D, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        B, T, _ = x.shape
        H, D = self.H, self.D
        qkv = F.silu(self.qkv_proj(x)).view(B, T, H, 3 * D)
        q, k, v = qkv.split(D, dim=-1)                                   # (B, T, H, D) each
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        s = lightning_decay_rates(H, self.layer_idx, self.n_layers, cdt, x.device)  # (H,) fixed decay rates
        s0 = None if state is None else state["S"]
        if T < _RECURRENT_BELOW:
            o, S = recurrent_lightning_attn(q, k, v, s, scale=1.0, initial_state=s0, output_final_state=need_state)
        else:
            chunk = self.chunk_op("chunk_lightning_attn")
            o, S = chunk(q, k, v, s, scale=1.0, initial_state=s0, output_final_state=need_state,
                         chunk_size=self.cfg.chunk_size)
        y = self.out_proj(self.norm(o.reshape(B, T, H * D), self.output_gate(x)))
        return y, ({"S": S} if need_state else None)

    def build_step_tensors(self):
        """For :meth:`step_token`: [qkv_proj | output_gate] as one (d_model, 4 H D) matrix, the per-step decay
        exp(-s) (1, H, 1, 1) in the compute dtype, and out_proj with the norm's gain (times sqrt(H D))."""
        W = torch.cat([self.qkv_proj.weight, self.output_gate.weight]).t().contiguous()
        cdt = torch.float64 if W.dtype == torch.float64 else torch.float32
        s = lightning_decay_rates(self.H, self.layer_idx, self.n_layers, cdt, W.device)
        W_out = (self.out_proj.weight * (self.norm.weight * math.sqrt(self.H * self.D))).t().contiguous()
        return W, (-s).exp().view(1, self.H, 1, 1), W_out, self.H * self.D * self.norm.eps

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step (runner/mixers/base.py): S = exp(-s) S + k v^T, o = S^T q, batched over
        (batch, head)."""
        W, decay, W_out, eps_o = tensors
        B = x.shape[0]
        H, D = self.H, self.D
        qkv, gate = (x.reshape(B, -1) @ W).split([3 * H * D, H * D], dim=1)
        q, k, v = F.silu(qkv).view(B * H, 3, D).split(1, dim=1)  # per head [q | k | v], each (B H, 1, D)
        S = (state["S"] * decay).reshape(B * H, D, D)  # a new tensor: the input is kept
        S.addcmul_(k.transpose(1, 2), v)  # + k v^T
        o = torch.bmm(q, S).view(B, H * D)
        y = (o * torch.linalg.vecdot(o, o).add_(eps_o).rsqrt_().unsqueeze(-1)).mul_(torch.sigmoid(gate))
        return (y @ W_out).view(B, 1, -1), {"S": S.view(B, H, D, D)}

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return batch * self.H * self.D * self.D * torch.empty((), dtype=state_dtype).element_size()

    def flops_per_token(self, n: int) -> int:
        """Projections plus the chunked form per head: q S and k^T v against the state (2 D^2 each) and the
        intra-chunk Q K^T and P V over c = min(chunk_size, n) positions (2 c D each, full blocks as computed)."""
        c = max(1, min(self.cfg.chunk_size, n))
        return self.proj_flops() + self.H * (4 * self.D * self.D + 4 * c * self.D)
