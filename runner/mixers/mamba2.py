"""The Mamba2 block ("Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State
Space Duality", Dao & Gu, ICML 2024), as in mamba_ssm's ``Mamba2`` and transformers' ``Mamba2Mixer``.

Per token x (B, T, d_model), with d_inner = expand * d_model split into H heads of size P (head_dim), G groups
and state size N (d_state):

    [z, xBC, dt] = W_in x                          z: d_inner, xBC: d_inner + 2 G N, dt: H
    xBC          = SiLU(ShortConv(xBC))            causal depthwise conv (conv_size, with bias) over x, B and C
    [x, B, C]    = xBC                             x (H, P), B and C (G, N), group of head h: h // (H / G)
    dt           = softplus(dt + dt_bias);  A = -exp(A_log)
    h_t          = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,   y_t = h_t^T C_t + D x_t      (SSD, per head)
    out          = W_out RMSNorm_G(y * SiLU(z))    (gate first, then RMSNorm over each of the G groups of channels)

The scan is computed by ``runner.ops.ssd`` (Mamba2's SSD written as scalar-decay linear attention, the chunked
kernel of ``runner.ops.simple_gla``).

Heads. ``num_heads`` None (the default) means num_heads = expand * d_model / head_dim, as in Mamba2, where the
head count follows from the inner width. Because the registry fills a missing ``num_heads`` with the model's
n_heads before the mixer is built, the config records at construction whether ``num_heads`` was given, and the
mixer then derives it (and writes the derived value back into the config). A ``num_heads`` given explicitly must
satisfy num_heads * head_dim == expand * d_model.

Parameter names follow transformers so its weights load one to one: in_proj, conv1d (weight (C, 1, k), bias),
dt_bias, A_log, D, norm (its weight), out_proj. Initialisation as mamba_ssm: A ~ U(1, 16) stored as log, D = 1,
dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored at 1e-4).

Calls of fewer than 8 tokens (decoding) use the recurrent form, longer ones the chunked form (same results).

State after n tokens: ``{"S": (B, H, N, P)}`` in float32 (float64 for a float64 model; the transpose of
mamba_ssm's (B, H, P, N) layout) and, with the short convolution, ``"conv": (B, d_inner + 2 G N, conv_size - 1)``
in the model dtype (the last inputs of the convolution). Neither grows with n.

Departures: no dt clamp (mamba_ssm's dt_limit, default (0, inf), is not an option); the chunk size defaults to 64
instead of 256 (same results); ``use_short_conv=False`` (not in Mamba2) drops the convolution and keeps the SiLU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.mixers.base import Mixer, MixerConfig, ShortConv, State, conv_step, dtype_bytes
from runner.ops.ssd import recurrent_ssd

_RECURRENT_BELOW = 8  # calls shorter than this (decoding) use the recurrent form: same result, less overhead


@dataclass
class Mamba2Config(MixerConfig):
    name: str = "mamba2"
    num_heads: Optional[int] = None   # SSM heads; None = expand * d_model / head_dim (Mamba2)
    head_dim: Optional[int] = 64      # channels per head (P); Mamba2's default 64
    d_state: int = 128                # state size per head (N); mamba_ssm's default 128
    expand: float = 2                 # inner width d_inner = expand * d_model
    n_groups: int = 1                 # groups sharing B and C (G); must divide num_heads
    use_short_conv: bool = True       # causal depthwise conv over x, B, C (Mamba2 always has it)
    conv_size: int = 4                # kernel of the short convolution
    conv_bias: bool = True            # bias in the short convolution (Mamba2: yes)
    bias: bool = False                # biases in in_proj and out_proj (Mamba2: no)
    chunk_size: int = 64              # chunk length of the parallel form; any value >= 1 gives the same result
    dt_min: float = 0.001             # dt initialisation range (log-uniform)
    dt_max: float = 0.1
    norm_eps: float = 1e-5            # epsilon of the gated group RMSNorm

    def __post_init__(self):
        # remembered (as a plain attribute, not an option) before the registry fills num_heads with the model's
        # head count
        self.derive_heads = self.num_heads is None

    def validate(self) -> None:
        n = self.name
        for key in ("d_state", "n_groups", "conv_size", "chunk_size"):
            val = getattr(self, key)
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{n}: {key}={val!r} must be an integer >= 1")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ValueError(f"{n}: head_dim={self.head_dim!r} must be an integer >= 1, e.g. 64")
        if not self.expand > 0:
            raise ValueError(f"{n}: expand={self.expand!r} must be > 0, e.g. 2")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"{n}: dt_min={self.dt_min!r}, dt_max={self.dt_max!r} must satisfy 0 < dt_min <= dt_max")
        if not self.norm_eps > 0:
            raise ValueError(f"{n}: norm_eps={self.norm_eps!r} must be > 0, e.g. 1e-5")

    def resolve(self, d_model: int) -> tuple[int, int]:
        """(d_inner, num_heads) for a model width, with errors naming the keys."""
        n = self.name
        d_inner = self.expand * d_model
        if abs(d_inner - round(d_inner)) > 1e-9:
            raise ValueError(f"{n}: expand={self.expand!r} times d_model={d_model} must be an integer")
        d_inner = int(round(d_inner))
        P = self.head_dim
        if P is None:
            raise ValueError(f"{n}: head_dim must be set")
        if getattr(self, "derive_heads", False) or self.num_heads is None:
            if d_inner % P:
                raise ValueError(f"{n}: expand * d_model = {d_inner} is not divisible by head_dim={P}; choose a "
                                 f"head_dim dividing {d_inner} or set num_heads")
            H = d_inner // P
        else:
            H = self.num_heads
            if H * P != d_inner:
                raise ValueError(f"{n}: num_heads={H} * head_dim={P} = {H * P} must equal expand * d_model = "
                                 f"{d_inner}; set num_heads to null to derive it")
        if H % self.n_groups:
            raise ValueError(f"{n}: n_groups={self.n_groups} must divide the number of heads {H}")
        return d_inner, H


class GatedGroupRMSNorm(nn.Module):
    """Mamba2's output norm: RMSNorm(y * SiLU(z)) over each of ``groups`` equal slices of the channels, times a
    learned gain (gate applied before the norm, unlike base.GatedRMSNorm). Computed in float32 (float64 for
    float64 inputs)."""

    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.groups, self.eps = groups, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
        h = y.to(cdt) * F.silu(z.to(cdt))
        hg = h.unflatten(-1, (self.groups, -1))
        hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + self.eps)
        return (hg.flatten(-2) * self.weight.to(cdt)).to(y.dtype)


class Mamba2(Mixer):
    """The Mamba2 block: in_proj -> short conv -> SSD (+ D skip) -> gated group RMSNorm -> out_proj."""

    residual_out = ("out_proj",)  # the projection back into the residual stream (scaled init)

    quadratic = False

    def __init__(self, d_model: int, cfg: Mamba2Config, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        cfg.validate()
        d_inner, H = cfg.resolve(d_model)
        cfg.num_heads = H
        self.cfg, self.d_model, self.layer_idx = cfg, d_model, layer_idx
        G, N, P = cfg.n_groups, cfg.d_state, cfg.head_dim
        self.H, self.P, self.G, self.N, self.d_inner = H, P, G, N, d_inner
        self.conv_dim = d_inner + 2 * G * N
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + H, bias=cfg.bias)
        self.conv1d = ShortConv(self.conv_dim, cfg.conv_size, bias=cfg.conv_bias) if cfg.use_short_conv else None
        dt = torch.exp(torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))       # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1.0, 16.0).log())
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedGroupRMSNorm(d_inner, G, cfg.norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        B, T, _ = x.shape
        H, P, G, N = self.H, self.P, self.G, self.N
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        tail = None
        if self.conv1d is not None:
            xBC, tail = self.conv1d(xBC, None if state is None else state["conv"])
        else:
            xBC = F.silu(xBC)
        xs, Bm, Cm = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        dt = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))                    # (B, T, H)
        A = -self.A_log.to(cdt).exp()                                         # (H,)
        args = (xs.reshape(B, T, H, P), dt, A, Bm.reshape(B, T, G, N), Cm.reshape(B, T, G, N), self.D.to(cdt))
        s0 = None if state is None else state["S"]
        if T < _RECURRENT_BELOW:
            y, S = recurrent_ssd(*args, initial_state=s0, output_final_state=need_state)
        else:
            y, S = self.chunk_op("chunk_ssd")(*args, initial_state=s0, output_final_state=need_state,
                                              chunk_size=self.cfg.chunk_size)
        out = self.out_proj(self.norm(y.reshape(B, T, self.d_inner), z))
        if not need_state:
            return out, None
        new_state = {"S": S}
        if tail is not None:
            new_state["conv"] = tail
        return out, new_state

    def build_step_tensors(self):
        """For :meth:`step_token`: in_proj as (d_model, P) with dt_bias added to the dt columns' bias, the conv
        taps and bias, A = -exp(A_log), D (H, 1), and out_proj with the norm's gain (times sqrt of the group
        size) folded in, and its bias."""
        H, G = self.H, self.G
        W = self.in_proj.weight.t().contiguous()
        bias = W.new_zeros(W.shape[1]) if self.in_proj.bias is None else self.in_proj.bias.clone()
        bias[-H:] += self.dt_bias
        conv = (self.conv1d.taps(), self.conv1d.bias) if self.conv1d is not None else None
        gs = self.d_inner // G
        W_out = (self.out_proj.weight * (self.norm.weight * math.sqrt(gs))).t().contiguous()
        split = [self.d_inner, G * self.N, G * self.N]  # x, B, C of the conv's output
        return W, bias, conv, -self.A_log.exp(), self.D.view(H, 1), W_out, self.out_proj.bias, gs * self.norm.eps, \
            split

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step (runner/mixers/base.py): h = exp(dt A) h + dt B x^T, y = h^T C + D x,
        batched over (batch, group, head of the group)."""
        W, bias, conv, A, D, W_out, b_out, eps_o, split = tensors
        B = x.shape[0]
        H, P, G, N = self.H, self.P, self.G, self.N
        p = torch.addmm(bias, x.reshape(B, -1), W)
        z, xBC, dt = p.split([self.d_inner, self.conv_dim, H], dim=1)
        new_state = {}
        if conv is not None:
            xBC, tail = conv_step(xBC, state["conv"], *conv)
        else:
            xBC = F.silu(xBC)
        xs, Bm, Cm = xBC.split(split, dim=1)
        dt = F.softplus(dt)  # (B, H), dt_bias inside
        k = Bm.view(B, G, 1, N) * dt.view(B, G, H // G, 1)  # dt B per head (B, G, H / G, N)
        S = (state["S"] * (dt * A).exp_().view(B, H, 1, 1)).contiguous()  # a new tensor: the input is kept
        S.view(B, G, H // G, N, P).addcmul_(k.unsqueeze(-1), xs.view(B, G, H // G, 1, P))
        y = (Cm.view(B, G, 1, 1, N) @ S.view(B, G, H // G, N, P)).view(B, H, P)  # h^T C
        h = torch.addcmul(y, xs.view(B, H, P), D).view(B, G, -1).mul_(F.silu(z).view(B, G, -1))  # gate, then norm
        h = (h * torch.linalg.vecdot(h, h).add_(eps_o).rsqrt_().unsqueeze(-1)).view(B, -1)
        out = h @ W_out if b_out is None else torch.addmm(b_out, h, W_out)
        new_state["S"] = S
        if conv is not None:
            new_state["conv"] = tail
        return out.view(B, 1, -1), new_state

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        ssm = batch * self.H * self.N * self.P * dtype_bytes(torch.float64 if dtype == torch.float64 else torch.float32)
        conv = self.conv1d.state_bytes(batch, dtype) if self.conv1d is not None else 0
        return ssm + conv

    def flops_per_token(self, n: int) -> int:
        """Projections, the short convolution and the chunked SSD per head: C h and (dt B)^T x against the state
        (2 N P each) and the intra-chunk C B^T and scores-times-x over c = min(chunk_size, n) positions
        (2 c N and 2 c P, full blocks as computed)."""
        c = max(1, min(self.cfg.chunk_size, n))
        conv = self.conv1d.flops_per_token() if self.conv1d is not None else 0
        return self.proj_flops() + conv + self.H * (4 * self.N * self.P + 2 * c * (self.N + self.P))
