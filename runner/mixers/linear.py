"""Linear attention ("Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
Katharopoulos, Vyas, Pappas & Fleuret, ICML 2020).

Per token x (B, T, d_model), with H heads of key size K and value size V = K * expand_v:

    q, k, v = W_q x, W_k x, W_v x;    phi(u) = elu(u) + 1 > 0
    S_t = S_{t-1} + phi(k_t) v_t^T,    z_t = z_{t-1} + phi(k_t)
    o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)                   (no query scale: it would only weigh eps)
    y   = W_o RMSNorm(o)                                             (per-head RMSNorm, then the output projection)

The recurrence is computed by ``runner.ops.linear_attn`` (the normaliser rides in the chunked kernel of
``runner.ops.simple_gla`` as an extra value column of ones).

Calls of fewer than 8 tokens (decoding) use the recurrent form, longer ones the chunked form (same results).

State after n tokens: ``{"S": (B, H, K, V), "z": (B, H, K)}`` (``normalize=False``: S alone) in float32 (float64
for a float64 model), whatever the model dtype; its size does not grow with n.

Departures from the paper: the per-head output RMSNorm (``output_norm``, on by default; flash-linear-attention's
linear-attention layer has the same) keeps the output scale comparable with the other mixers; the paper has none.
``normalize=False`` drops the denominator (then the output norm is what keeps the scale in check). No short
convolution, no feature-map choice (phi is the paper's elu + 1). Projections have no bias.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.mixers.base import Mixer, MixerConfig, RMSNorm, State, dtype_bytes
from runner.ops.linear_attn import recurrent_linear_attn

_RECURRENT_BELOW = 8  # calls shorter than this (decoding) use the recurrent form: same result, less overhead


@dataclass
class LinearAttentionConfig(MixerConfig):
    name: str = "linear"
    expand_v: float = 1.0      # value head size = head_dim * expand_v
    normalize: bool = True     # divide by phi(q)^T z + eps (the paper); false = no denominator, no z state
    eps: float = 1e-6          # epsilon of the denominator
    output_norm: bool = True   # per-head RMSNorm on the output before the output projection
    norm_eps: float = 1e-6     # epsilon of that RMSNorm
    chunk_size: int = 64       # chunk length of the parallel form; any value >= 1 gives the same result

    def validate(self) -> None:
        n = self.name
        if self.head_dim is not None:
            hv = self.head_dim * self.expand_v
            if not self.expand_v > 0 or abs(hv - round(hv)) > 1e-6 or round(hv) < 1:
                raise ValueError(f"{n}: expand_v={self.expand_v!r} must be > 0 with head_dim * expand_v a positive "
                                 f"integer (head_dim={self.head_dim})")
        if not self.eps > 0:
            raise ValueError(f"{n}: eps={self.eps!r} must be > 0, e.g. 1e-6")
        if not self.norm_eps > 0:
            raise ValueError(f"{n}: norm_eps={self.norm_eps!r} must be > 0, e.g. 1e-6")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"{n}: chunk_size={self.chunk_size!r} must be an integer >= 1, e.g. 64")


def feature_map(u: torch.Tensor) -> torch.Tensor:
    """phi(u) = elu(u) + 1, positive everywhere (the paper's choice)."""
    return F.elu(u) + 1.0


class LinearAttention(Mixer):
    """Katharopoulos et al. linear attention with the elu + 1 feature map and the normaliser."""

    residual_out = ("o_proj",)  # the projection back into the residual stream (scaled init)

    quadratic = False

    def __init__(self, d_model: int, cfg: LinearAttentionConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        if cfg.num_heads is None or cfg.head_dim is None:
            raise ValueError(f"{cfg.name}: num_heads and head_dim must be set (make_config fills them from the model)")
        cfg.validate()
        self.cfg, self.d_model, self.layer_idx = cfg, d_model, layer_idx
        H, K = cfg.num_heads, cfg.head_dim
        V = int(round(K * cfg.expand_v))
        self.H, self.K, self.V = H, K, V
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = RMSNorm(V, cfg.norm_eps) if cfg.output_norm else None
        self.o_proj = nn.Linear(H * V, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        B, T, _ = x.shape
        H, K, V = self.H, self.K, self.V
        q = feature_map(self.q_proj(x).view(B, T, H, K))
        k = feature_map(self.k_proj(x).view(B, T, H, K))
        v = self.v_proj(x).view(B, T, H, V)
        s0 = None
        if state is not None:
            s0 = (state["S"], state["z"]) if self.cfg.normalize else state["S"]
        kw = dict(scale=1.0, initial_state=s0, output_final_state=need_state, normalize=self.cfg.normalize,
                  eps=self.cfg.eps)
        if T < _RECURRENT_BELOW:
            o, final = recurrent_linear_attn(q, k, v, **kw)
        else:
            o, final = self.chunk_op("chunk_linear_attn")(q, k, v, chunk_size=self.cfg.chunk_size, **kw)
        if self.norm is not None:
            o = self.norm(o)
        y = self.o_proj(o.reshape(B, T, H * V))
        if not need_state:
            return y, None
        return y, ({"S": final[0], "z": final[1]} if self.cfg.normalize else {"S": final})

    def build_step_tensors(self):
        """For :meth:`step_token`: the q/k/v projections as one (d_model, P) matrix and o_proj with the output
        norm's gain (times sqrt(V)) folded in."""
        W = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]).t().contiguous()
        W_o = self.o_proj.weight
        if self.norm is not None:
            W_o = W_o * (self.norm.weight * math.sqrt(self.V)).repeat(self.H)
        return W, W_o.t().contiguous(), None if self.norm is None else self.V * self.norm.eps

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step (runner/mixers/base.py): S += phi(k) v^T, z += phi(k),
        o = phi(q)^T S / (phi(q)^T z + eps)."""
        W, W_o, eps_o = tensors
        B = x.shape[0]
        H, K, V = self.H, self.K, self.V
        qk, v = (x.reshape(B, -1) @ W).split([2 * H * K, H * V], dim=1)
        q, k = feature_map(qk).view(B, 2, H, K).unbind(1)  # (B, H, K) each
        S = torch.addcmul(state["S"], k.unsqueeze(-1), v.view(B, H, 1, V))  # + phi(k) v^T, a new tensor
        o = (q.unsqueeze(-2) @ S).view(B, H, V)
        new_state = {"S": S}
        if self.cfg.normalize:
            z = state["z"] + k
            o = o / (torch.linalg.vecdot(q, z).unsqueeze(-1) + self.cfg.eps)
            new_state["z"] = z
        if eps_o is not None:  # per-head RMSNorm, its gain in W_o
            o = o * torch.linalg.vecdot(o, o).add_(eps_o).rsqrt_().unsqueeze(-1)
        return (o.reshape(B, H * V) @ W_o).view(B, 1, -1), new_state

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        b = dtype_bytes(torch.float64 if dtype == torch.float64 else torch.float32)
        per_head = self.K * self.V + (self.K if self.cfg.normalize else 0)
        return batch * self.H * per_head * b

    def flops_per_token(self, n: int) -> int:
        """Projections plus the chunked form per head (the normaliser adds one value column, V' = V + 1):
        q S and k^T v against the state (2 K V' each) and the intra-chunk Q K^T and P V' over
        c = min(chunk_size, n) positions (2 c K and 2 c V', full blocks as computed)."""
        c = max(1, min(self.cfg.chunk_size, n))
        Vp = self.V + (1 if self.cfg.normalize else 0)
        return self.proj_flops() + self.H * (4 * self.K * Vp + 2 * c * (self.K + Vp))
