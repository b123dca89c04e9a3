"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, "Gated Delta Networks", ICLR 2025), laid out as the linear layer of
Qwen3-Next (transformers' ``Qwen3NextGatedDeltaNet``).

    q, k, v = SiLU(ShortConv(W_q x, W_k x, W_v x))          causal depthwise conv, kernel conv_size (4)
    q, k    = l2norm(q), l2norm(k)                         and the scale head_dim**-0.5 on q, inside the op
    g       = -exp(A_log) * softplus(W_a x + dt_bias)      per value head, log decay <= 0
    beta    = sigmoid(W_b x)                               per value head
    S_t     = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t
    y       = W_o GatedRMSNorm(o, W_z x)                   RMSNorm per value head times SiLU(z)

``num_v_heads`` may be a multiple of ``num_heads``: each q/k head then serves num_v_heads // num_heads
consecutive value heads (Qwen3-Next: 16 q/k heads, 32 value heads); ``expand_v`` sets head_v_dim =
head_dim * expand_v. Initialisation: A ~ U(0, 16) stored as log (floored at 1e-4 so the log is finite),
dt log-uniform in [1e-3, 1e-1] stored as its inverse softplus in dt_bias (as flash-linear-attention; Qwen3-Next's
own init sets dt_bias = 1).

Departures from Qwen3-Next: separate q/k/v/z/a/b projections instead of the fused, head-interleaved
``in_proj_qkvz`` / ``in_proj_ba`` (the same parameters, permuted); one short conv over the concatenated q, k, v
channels, as theirs. Options: ``use_short_conv=False`` replaces the conv by a plain SiLU (as
flash-linear-attention), ``use_gate=False`` drops z and uses a plain RMSNorm, ``mode='recurrent'`` uses the
token-by-token op everywhere (otherwise the chunked op, and the recurrent op for pieces of at most
``RECURRENT_MAX_T`` tokens, i.e. decoding); ``keep_factors=True`` makes the chunked op keep its intra-chunk
factors for the backward instead of recomputing them (runner/ops/gated_delta_rule.py: the op's fwd+bwd about
1.13x faster for about three times its memory). ``allow_neg_eigval=True`` takes beta = 2 sigmoid(W_b x) in (0, 2),
so the transition I - beta k k^T has the eigenvalue 1 - beta in (-1, 1) along k: negative eigenvalues let the layer
track state such as parity at every length, which it cannot with beta in (0, 1) (Grazzi et al., "Unlocking
State-Tracking in Linear RNNs Through Negative Eigenvalues", ICLR 2025; flash-linear-attention's
``allow_neg_eigval``; experiment=state_tracking).

State: ``{"conv": (B, 2*H*K + HV*Vh, conv_size - 1) in the input dtype (absent without short conv),
"S": (B, HV, K, Vh) in float32 (float64 for float64 inputs)}``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.mixers.base import GatedRMSNorm, Mixer, MixerConfig, RMSNorm, ShortConv, conv_step, dtype_bytes
from runner.ops.gated_delta_rule import recurrent_gated_delta_rule
from runner.ops.norms import gated_rms_norm_linear

RECURRENT_MAX_T = 8  # pieces this short (decoding) run the token-by-token op, which is cheaper there


@dataclass
class GatedDeltaNetConfig(MixerConfig):
    name: str = "gated_deltanet"
    num_v_heads: Optional[int] = None  # value heads; None = num_heads; must be a multiple of num_heads
    expand_v: float = 1.0  # head_v_dim = head_dim * expand_v
    use_short_conv: bool = True
    conv_size: int = 4
    chunk_size: int = 64
    use_gate: bool = True  # output gate: RMSNorm(o) * SiLU(W_z x); False: RMSNorm(o)
    mode: str = "chunk"  # 'chunk' | 'recurrent'
    norm_eps: float = 1e-6
    keep_factors: bool = False  # chunked op keeps its intra-chunk factors for the backward (faster, ~3x memory)
    allow_neg_eigval: bool = False  # beta = 2 sigmoid(W_b x) in (0, 2): I - beta k k^T may have eigenvalue < 0

    def validate(self):
        _validate_common(self)


def _validate_common(cfg):
    name = cfg.name
    if cfg.num_v_heads is not None and cfg.num_heads is not None:
        if cfg.num_v_heads < 1 or cfg.num_v_heads % cfg.num_heads:
            raise ValueError(f"{name}: num_v_heads={cfg.num_v_heads} must be a positive multiple of "
                             f"num_heads={cfg.num_heads}")
    if not cfg.expand_v > 0:
        raise ValueError(f"{name}: expand_v={cfg.expand_v} must be > 0")
    if cfg.head_dim is not None:
        hv = cfg.head_dim * cfg.expand_v
        if hv != int(hv) or hv < 1:
            raise ValueError(f"{name}: expand_v={cfg.expand_v} times head_dim={cfg.head_dim} must be a positive "
                             f"integer (the value head size)")
    if cfg.conv_size < 1:
        raise ValueError(f"{name}: conv_size={cfg.conv_size} must be >= 1")
    if cfg.chunk_size < 1:
        raise ValueError(f"{name}: chunk_size={cfg.chunk_size} must be >= 1")
    if cfg.mode not in ("chunk", "recurrent"):
        raise ValueError(f"{name}: mode={cfg.mode!r} is not one of 'chunk', 'recurrent'")
    if not cfg.norm_eps > 0:
        raise ValueError(f"{name}: norm_eps={cfg.norm_eps} must be > 0")
    if not isinstance(cfg.allow_neg_eigval, bool):
        raise ValueError(f"{name}: allow_neg_eigval={cfg.allow_neg_eigval!r} must be true or false")


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class GatedDeltaNet(Mixer):

    residual_out = ("out_proj",)  # the projection back into the residual stream (scaled init)
    quadratic = False
    gated_decay = True  # DeltaNet (runner.mixers.deltanet) sets False: no a/A_log/dt_bias, g = 0

    def __init__(self, d_model: int, cfg: GatedDeltaNetConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        if cfg.num_heads is None:
            raise ValueError(f"{cfg.name}: num_heads is not set")
        if cfg.head_dim is None:
            cfg = dataclasses.replace(cfg, head_dim=d_model // cfg.num_heads)
        cfg.validate()
        self.cfg, self.d_model, self.layer_idx = cfg, d_model, layer_idx
        self.num_heads = H = cfg.num_heads
        self.num_v_heads = HV = cfg.num_v_heads or cfg.num_heads
        self.head_dim = K = cfg.head_dim
        self.head_v_dim = Vh = int(cfg.head_dim * cfg.expand_v)
        self.key_dim, self.value_dim = H * K, HV * Vh

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, HV, bias=False)
        if self.gated_decay:
            self.a_proj = nn.Linear(d_model, HV, bias=False)
            A = torch.empty(HV).uniform_(0, 16).clamp_min_(1e-4)
            self.A_log = nn.Parameter(A.log())
            dt = torch.exp(torch.empty(HV).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min_(1e-4)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.conv = ShortConv(2 * self.key_dim + self.value_dim, cfg.conv_size, activation="silu") \
            if cfg.use_short_conv else None
        if cfg.use_gate:
            self.z_proj = nn.Linear(d_model, self.value_dim, bias=False)
            self.norm = GatedRMSNorm(Vh, eps=cfg.norm_eps, activation="silu")
        else:
            self.norm = RMSNorm(Vh, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _decay(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-step log decay g (B, T, HV) in float32 (float64 for float64 inputs)."""
        a = self.a_proj(x).to(_state_dtype(x.dtype))
        return -self.A_log.to(a.dtype).exp() * F.softplus(a + self.dt_bias.to(a.dtype))

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, *, need_state: bool = True):
        B, T, _ = x.shape
        cfg = self.cfg
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # (B, T, 2*H*K + HV*Vh)
        new_state = {}
        if self.conv is not None:
            qkv, tail = self.conv(qkv, None if state is None else state["conv"])
            new_state["conv"] = tail
        else:
            qkv = F.silu(qkv)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        cdt = _state_dtype(x.dtype)
        # q and k are l2-normalised inside the op, so that the chunked op's backward keeps the views of qkv (one
        # activation) rather than normalised copies
        q = q.reshape(B, T, self.num_heads, self.head_dim)  # (B, T, H, K)
        k = k.reshape(B, T, self.num_heads, self.head_dim)  # (B, T, H, K)
        v = v.reshape(B, T, self.num_v_heads, self.head_v_dim)  # (B, T, HV, Vh)
        beta = torch.sigmoid(self.b_proj(x).to(cdt))  # (B, T, HV)
        if cfg.allow_neg_eigval:
            beta = beta * 2.0  # in (0, 2)
        g = self._decay(x) if self.gated_decay else torch.zeros_like(beta)  # (B, T, HV)

        S0 = None if state is None else state["S"]
        if cfg.mode == "recurrent" or T <= RECURRENT_MAX_T:
            o, S = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=need_state,
                                              use_qk_l2norm_in_kernel=True)
        else:
            chunk = self.chunk_op("chunk_gated_delta_rule")
            kw = {"keep_factors": True} if cfg.keep_factors else {}
            o, S = chunk(q, k, v, g, beta, initial_state=S0, output_final_state=need_state, chunk_size=cfg.chunk_size,
                         use_qk_l2norm_in_kernel=True, **kw)
        o = o.to(x.dtype)  # (B, T, HV, Vh)
        if cfg.use_gate:  # out_proj(GatedRMSNorm(o, z)) as one step: its input is recomputed in the backward
            z = self.z_proj(x).reshape(B, T, self.num_v_heads, self.head_v_dim)
            y = gated_rms_norm_linear(o, z, self.norm.weight, self.norm.eps, self.norm.activation,
                                      self.out_proj.weight)
        else:
            y = self.out_proj(self.norm(o).reshape(B, T, self.value_dim))
        if not need_state:
            return y, None
        new_state["S"] = S
        return y, new_state

    def build_step_tensors(self):
        """For :meth:`step_token`: one (d_model, P) matrix of every input projection [q k v | z | b | a] with dt_bias
        as the bias of the a columns, the conv taps, the constants (c, eps * c) of the l2 norm that also applies q's
        head_dim ** -0.5 (rsqrt(c (|x|^2 + eps)), c = head_dim for q, 1 for k), -exp(A_log), and out_proj
        (value_dim, d_model) with the output norm's gain folded in (times sqrt(head_v_dim), as the step's norm
        takes the sum of squares, not the mean)."""
        H, HV, Vh = self.num_heads, self.num_v_heads, self.head_v_dim
        rows = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]
        rows += [self.z_proj.weight] if self.cfg.use_gate else []
        rows += [self.b_proj.weight] + ([self.a_proj.weight] if self.gated_decay else [])
        W = torch.cat(rows).t().contiguous()
        bias = neg_A = None
        if self.gated_decay:
            bias = W.new_zeros(W.shape[1])
            bias[-HV:] = self.dt_bias
            neg_A = -self.A_log.exp()
        taps = self.conv.taps() if self.conv is not None else None
        c = W.new_tensor([[float(self.head_dim)] * H, [1.0] * H]).view(2, 1, H)
        gain = (self.norm.weight * math.sqrt(Vh)).repeat(HV)
        W_out = (self.out_proj.weight * gain).t().contiguous()
        split = [2 * self.key_dim + self.value_dim, self.value_dim if self.cfg.use_gate else 0, HV,
                 HV if self.gated_decay else 0]
        return W, bias, taps, c, c * 1e-6, neg_A, W_out, Vh * self.norm.eps, split

    def step_token(self, x: torch.Tensor, state: dict, tensors):
        """One token of the decode step (runner/mixers/base.py): the recurrent form of :meth:`forward` in few ops,
        batched over (batch, value head)."""
        W, bias, taps, c, eps_c, neg_A, W_out, eps_o, split = tensors
        B = x.shape[0]
        H, HV, K, Vh, kd, vd = self.num_heads, self.num_v_heads, self.head_dim, self.head_v_dim, self.key_dim, \
            self.value_dim
        x2 = x.reshape(B, -1)
        p = x2 @ W if bias is None else torch.addmm(bias, x2, W)  # (B, P)
        qkv, z, b, a = p.split(split, dim=1)
        new_state = {}
        if taps is not None:
            qkv, new_state["conv"] = conv_step(qkv, state["conv"], taps)
        else:
            qkv = F.silu(qkv)
        qk = qkv[:, :2 * kd].view(B, 2, H, K).transpose(0, 1)  # (2, B, H, K)
        # l2 norm, q scaled; the factor first, so the product comes out (2, B, H, K)-contiguous
        qk = torch.addcmul(eps_c, torch.linalg.vecdot(qk, qk), c).rsqrt_().unsqueeze(-1) * qk
        qk = qk.repeat_interleave(HV // H, dim=2) if HV != H else qk.contiguous()  # (2, B, HV, K)
        q, k = qk.view(2, B * HV, 1, K).unbind(0)
        S = state["S"].reshape(B * HV, K, Vh)
        if neg_A is not None:
            S = S * F.softplus(a).mul_(neg_A).exp_().view(B * HV, 1, 1)  # decayed: a new tensor, the input is kept
        v = qkv[:, 2 * kd:].reshape(B * HV, 1, Vh)
        beta = torch.sigmoid(b).mul_(2.0) if self.cfg.allow_neg_eigval else torch.sigmoid(b)
        delta = torch.baddbmm(v, k, S, alpha=-1.0).mul_(beta.view(B * HV, 1, 1))  # beta (v - S^T k)
        k = k.view(B * HV, K, 1)
        S = S.addcmul_(k, delta) if neg_A is not None else torch.addcmul(S, k, delta)  # + k delta^T
        o = torch.bmm(q, S).view(B, HV, Vh)  # S^T q
        y = o.mul_(torch.linalg.vecdot(o, o).add_(eps_o).rsqrt_().unsqueeze(-1))  # output RMSNorm, gain in W_out
        if self.cfg.use_gate:
            y.mul_(F.silu(z).view(B, HV, Vh))
        new_state["S"] = S.view(B, HV, K, Vh)
        return (y.view(B, vd) @ W_out).view(B, 1, -1), new_state

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        S = batch * self.num_v_heads * self.head_dim * self.head_v_dim * dtype_bytes(_state_dtype(dtype))
        conv = self.conv.state_bytes(batch, dtype) if self.conv is not None else 0
        return S + conv

    def flops_per_token(self, n: int) -> int:
        """Projections + short conv + the chunked form's matmuls per token (chunk C = min(chunk_size, n)):
        per value head and chunk, q k^T, kb k^T, T = (I + L)^-1 (~C^3/3), T (kb E), T (beta v), P W, P U,
        kc^T W, kc^T U, Qs S and the scan's A S."""
        C = max(1, min(self.cfg.chunk_size, n))
        K, V = self.head_dim, self.head_v_dim
        per_chunk = 2 * C * C * K * 4 + 2 * C * C * V * 2 + 2 * C * K * K + 2 * C * K * V * 2 + 2 * K * K * V \
            + (2 * C ** 3) // 3
        conv = self.conv.flops_per_token() if self.conv is not None else 0
        return self.proj_flops() + conv + self.num_v_heads * per_chunk // C
