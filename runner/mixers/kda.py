"""Kimi Delta Attention (KDA), the linear-attention layer of Kimi Linear (Kimi Team, arXiv 2510.26692).

Per token x (B, T, d_model):

    q, k, v = SiLU(ShortConv(W_q x)), SiLU(ShortConv(W_k x)), SiLU(ShortConv(W_v x))   (causal depthwise, size 4)
    q, k    = l2norm(q), l2norm(k)                                   (per head; q then scaled by head_dim**-0.5)
    g       = -exp(A_log) * softplus(W_fb W_fa x + dt_bias)          per head AND per channel, (B, T, H, K)
    beta    = sigmoid(W_b x)                                         (B, T, H)
    S_t     = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T q_t
    y       = W_o [ RMSNorm(o_t) * sigmoid(W_gb W_ga x) ]            (per head norm, low-rank output gate)

The recurrence is computed by ``runner.ops.kda`` (chunked form for training and prefill, recurrent form for
short continuations). Parameter names and layout follow transformers' ``KimiLinearDeltaAttention`` so its
weights load one to one: q_proj, k_proj, v_proj, conv (= its conv1d over [q, k, v]), f_a_proj, f_b_proj,
A_log (H,), dt_bias (H * K,), b_proj, g_a_proj, g_b_proj, o_norm, o_proj. A_log ~ log U(1, 16) and dt_bias =
softplus^-1(dt), dt log-uniform in [1e-3, 1e-1], as in transformers' / flash-linear-attention's initialisation.

Departures and choices:

* One short convolution over the concatenated [q, k, v] channels (transformers' layout; flash-linear-attention
  keeps three separate ones, the same maths). With ``use_short_conv=False``, q, k, v = SiLU(W x) (FLA).
* The decay's low rank is head_dim and the output gate's is ``gate_low_rank_dim`` (default head_dim), both
  without bias, as in transformers and Kimi's released model; flash-linear-attention uses head_v_dim for both
  and a bias on the gate's second projection.
* ``expand_v`` (value head size head_dim * expand_v) and ``num_v_heads`` > num_heads (grouped value heads:
  each q/k head, its decay and beta, serve num_v_heads // num_heads consecutive value heads) follow
  flash-linear-attention; transformers has neither.
* The recurrent state is kept in float32 (float64 for a float64 model), as both references do.
* ``mode="chunk"`` still runs a call of fewer than ``_RECURRENT_BELOW`` tokens (decoding) with the recurrent
  form: same result, far less work than padding to a whole chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.mixers.base import GatedRMSNorm, Mixer, MixerConfig, ShortConv, State, conv_step, dtype_bytes
from runner.ops.kda import kda_log_decay, recurrent_kda
from runner.ops.norms import gated_rms_norm_linear

_MODES = ("chunk", "recurrent")
_RECURRENT_BELOW = 16  # calls shorter than this use the recurrent form in "chunk" mode


@dataclass
class KDAConfig(MixerConfig):
    name: str = "kda"
    num_v_heads: Optional[int] = None        # value heads; None = num_heads; a multiple of num_heads (GVA)
    expand_v: float = 1.0                    # value head size = head_dim * expand_v
    use_short_conv: bool = True              # causal depthwise conv + SiLU on q, k, v
    conv_size: int = 4                       # kernel of the short convolution
    chunk_size: int = 32                     # chunk length of the parallel form (a power of two)
    gate_low_rank_dim: Optional[int] = None  # rank of the output gate's projection; None = head_dim
    mode: str = "chunk"                      # "chunk" (parallel form) or "recurrent" (token by token)
    norm_eps: float = 1e-5                   # epsilon of the gated output RMSNorm

    def validate(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"kda: mode={self.mode!r} is not allowed; use one of {list(_MODES)}")
        c = self.chunk_size
        if not isinstance(c, int) or c < 1 or c & (c - 1):
            raise ValueError(f"kda: chunk_size={c!r} must be a power of two, e.g. 32 or 64")
        if not isinstance(self.conv_size, int) or self.conv_size < 1:
            raise ValueError(f"kda: conv_size={self.conv_size!r} must be an integer >= 1, e.g. 4")
        if self.num_heads is not None and self.head_dim is not None:
            hv = self.head_dim * self.expand_v
            if self.expand_v <= 0 or abs(hv - round(hv)) > 1e-6:
                raise ValueError(f"kda: expand_v={self.expand_v!r} must be > 0 with head_dim * expand_v an integer "
                                 f"(head_dim={self.head_dim})")
            nv = self.num_v_heads
            if nv is not None and (nv < self.num_heads or nv % self.num_heads):
                raise ValueError(f"kda: num_v_heads={nv!r} must be a multiple of num_heads={self.num_heads} "
                                 f"(or null for num_heads)")
        if self.gate_low_rank_dim is not None and self.gate_low_rank_dim < 1:
            raise ValueError(f"kda: gate_low_rank_dim={self.gate_low_rank_dim!r} must be >= 1 or null (= head_dim)")
        if not self.norm_eps > 0:
            raise ValueError(f"kda: norm_eps={self.norm_eps!r} must be > 0, e.g. 1e-5")


class KimiDeltaAttention(Mixer):

    residual_out = ("o_proj",)  # the projection back into the residual stream (scaled init)
    quadratic = False

    def __init__(self, d_model: int, cfg: KDAConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        if cfg.num_heads is None or cfg.head_dim is None:
            raise ValueError("kda: num_heads and head_dim must be set (make_config fills them from the model)")
        cfg.validate()
        self.cfg, self.d_model, self.layer_idx = cfg, d_model, layer_idx
        H, K = cfg.num_heads, cfg.head_dim
        HV = cfg.num_v_heads or H
        VD = int(round(K * cfg.expand_v))
        self.H, self.HV, self.K, self.VD = H, HV, K, VD
        key_dim, value_dim = H * K, HV * VD

        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.conv = ShortConv(2 * key_dim + value_dim, cfg.conv_size) if cfg.use_short_conv else None
        # per-channel decay from a rank-K projection
        self.f_a_proj = nn.Linear(d_model, K, bias=False)
        self.f_b_proj = nn.Linear(K, key_dim, bias=False)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1.0, 16.0).log())
        dt = torch.empty(key_dim).uniform_(math.log(1e-3), math.log(1e-1)).exp().clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.b_proj = nn.Linear(d_model, H, bias=False)
        # output gate from a low-rank projection, applied inside the per-head RMSNorm
        r = cfg.gate_low_rank_dim or K
        self.g_a_proj = nn.Linear(d_model, r, bias=False)
        self.g_b_proj = nn.Linear(r, value_dim, bias=False)
        self.o_norm = GatedRMSNorm(VD, eps=cfg.norm_eps, activation="sigmoid")
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        B, T, _ = x.shape
        H, HV, K, VD = self.H, self.HV, self.K, self.VD
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)  # (B, T, 2HK + HV VD)
        tail = None
        if self.conv is not None:
            qkv, tail = self.conv(qkv, None if state is None else state["conv"])
        else:
            qkv = F.silu(qkv)
        q, k, v = qkv.split([H * K, H * K, HV * VD], -1)
        q, k = q.reshape(B, T, H, K), k.reshape(B, T, H, K)
        v = v.reshape(B, T, HV, VD)
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32    # gates in fp32 (fp64 models: fp64)
        f = self.f_b_proj(self.f_a_proj(x)).to(cdt) + self.dt_bias.to(cdt)    # (B, T, H K)
        g = kda_log_decay(f.view(B, T, H, K), self.A_log)                       # (B, T, H, K), <= 0
        beta = torch.sigmoid(self.b_proj(x).to(cdt))                           # (B, T, H)
        if HV != H:
            q, k, g = (t.repeat_interleave(HV // H, dim=2) for t in (q, k, g))
            beta = beta.repeat_interleave(HV // H, dim=2)
        s0 = None if state is None else state["S"]
        if self.cfg.mode == "recurrent" or T < _RECURRENT_BELOW:
            o, S = recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=need_state,
                                 use_qk_l2norm_in_kernel=True)
        else:
            o, S = self.chunk_op("chunk_kda")(q, k, v, g, beta, initial_state=s0, output_final_state=need_state,
                                              use_qk_l2norm_in_kernel=True, chunk_size=self.cfg.chunk_size)
        gate = self.g_b_proj(self.g_a_proj(x)).view(B, T, HV, VD)
        # o_proj(o_norm(o, gate)) as one step: its input is recomputed in the backward, not kept
        y = gated_rms_norm_linear(o.to(x.dtype), gate, self.o_norm.weight, self.o_norm.eps, self.o_norm.activation,
                                  self.o_proj.weight)
        if not need_state:
            return y, None
        new_state = {"S": S}
        if tail is not None:
            new_state["conv"] = tail
        return y, new_state

    def build_step_tensors(self):
        """For :meth:`step_token`: one (d_model, P) matrix of the input projections [q k v | b | f_a g_a], the
        decay's and the gate's second projections as one block-diagonal (K + r, H K + HV VD) matrix with dt_bias
        as the bias of the decay columns, the conv taps, the l2 norm's constants (c, eps * c) that also apply
        q's head_dim ** -0.5, -exp(A_log) (H, 1), and o_proj with the output norm's gain (times sqrt(VD))."""
        H, HV, K, VD = self.H, self.HV, self.K, self.VD
        W = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.b_proj.weight,
                       self.f_a_proj.weight, self.g_a_proj.weight]).t().contiguous()
        r = self.g_a_proj.out_features
        W2 = W.new_zeros(K + r, H * K + HV * VD)
        W2[:K, :H * K] = self.f_b_proj.weight.t()
        W2[K:, H * K:] = self.g_b_proj.weight.t()
        bias2 = torch.cat([self.dt_bias, W.new_zeros(HV * VD)])
        taps = self.conv.taps() if self.conv is not None else None
        c = W.new_tensor([[float(K)] * H, [1.0] * H]).view(2, 1, H)
        W_o = (self.o_proj.weight * (self.o_norm.weight * math.sqrt(VD)).repeat(HV)).t().contiguous()
        split = [2 * H * K + HV * VD, H, K + r]
        return W, W2, bias2, taps, c, c * 1e-6, -self.A_log.exp().view(H, 1), W_o, VD * self.o_norm.eps, split

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step (runner/mixers/base.py): the recurrent form of :meth:`forward` in few ops,
        batched over (batch, value head)."""
        W, W2, bias2, taps, c, eps_c, neg_A, W_o, eps_o, split = tensors
        B = x.shape[0]
        H, HV, K, VD = self.H, self.HV, self.K, self.VD
        qkv, b, fg = (x.reshape(B, -1) @ W).split(split, dim=1)
        f, gate = torch.addmm(bias2, fg, W2).split([H * K, HV * VD], dim=1)
        new_state = {}
        if taps is not None:
            qkv, tail = conv_step(qkv, state["conv"], taps)
        else:
            qkv = F.silu(qkv)
        qk = qkv[:, :2 * H * K].view(B, 2, H, K).transpose(0, 1)  # (2, B, H, K)
        # l2 norm, q scaled; the factor first, so the product comes out (2, B, H, K)-contiguous
        qk = torch.addcmul(eps_c, torch.linalg.vecdot(qk, qk), c).rsqrt_().unsqueeze(-1) * qk
        alpha = F.softplus(f.view(B, H, K)).mul_(neg_A).exp_()  # per-channel decay exp(g)
        beta = torch.sigmoid(b)  # (B, H)
        if HV != H:  # each q/k head, its decay and beta serve HV // H consecutive value heads
            g = HV // H
            qk, alpha, beta = qk.repeat_interleave(g, 2), alpha.repeat_interleave(g, 1), beta.repeat_interleave(g, 1)
        else:
            qk = qk.contiguous()
        q, k = qk.view(2, B * HV, 1, K).unbind(0)
        S = state["S"].reshape(B * HV, K, VD) * alpha.view(B * HV, K, 1)  # a new tensor: the input is kept
        v = qkv[:, 2 * H * K:].reshape(B * HV, 1, VD)
        delta = torch.baddbmm(v, k, S, alpha=-1.0).mul_(beta.reshape(B * HV, 1, 1))  # beta (v - S^T k)
        S.addcmul_(k.view(B * HV, K, 1), delta)  # + k delta^T
        o = torch.bmm(q, S).view(B, HV, VD)  # S^T q
        y = o.mul_(torch.linalg.vecdot(o, o).add_(eps_o).rsqrt_().unsqueeze(-1))  # output RMSNorm, gain in W_o
        y.mul_(torch.sigmoid(gate).view(B, HV, VD))
        new_state["S"] = S.view(B, HV, K, VD)
        if taps is not None:
            new_state["conv"] = tail
        return (y.view(B, HV * VD) @ W_o).view(B, 1, -1), new_state

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        """The recurrent state (B, HV, K, VD) in float32 (float64 for a float64 model) plus the short
        convolution's tail (B, 2HK + HV VD, conv_size - 1) in the model dtype; independent of n."""
        s_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        total = batch * self.HV * self.K * self.VD * dtype_bytes(s_dtype)
        if self.conv is not None:
            total += self.conv.state_bytes(batch, dtype)
        return total

    def flops_per_token(self, n: int) -> int:
        """Projections + short conv + the matmuls of the chunked form per token (independent of n): per value
        head and chunk of C, the tree's P and A blocks C (C - 1) K / 2 each, the inverse's blocks about C^3 / 3,
        T [bK, bV] and P [W, U] C^2 (K + V) each, Kc^T [W, U] C K (K + V), Q~ S C K V, the state scan K K V."""
        C, K, V = self.cfg.chunk_size, self.K, self.VD
        macs = (C - 1) * K + C * C / 3 + 2 * C * (K + V) + K * (K + V) + K * V + K * K * V / C
        flops = self.proj_flops() + 2 * macs * self.HV
        if self.conv is not None:
            flops += self.conv.flops_per_token()
        return int(flops)
