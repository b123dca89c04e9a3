"""Softmax attention: causal multi-head / grouped-query attention with RoPE and an optional sliding window.

Follows the Llama / Qwen family of decoder attention ("Attention Is All You Need"; GQA from Ainslie et al. 2023,
"GQA: Training Generalized Multi-Query Transformer Models"; RoPE from Su et al. 2021, "RoFormer"; sliding-window
attention as in Mistral 7B). ``num_kv_heads`` key/value heads are shared by groups of query heads
(``num_kv_heads == num_heads`` is MHA, 1 is MQA). RoPE rotates the first ``rope_fraction`` of each head's channels
in the rotate-half convention (``rope=False`` gives NoPE). ``qk_norm`` adds a per-head RMSNorm on q and k
(Qwen3, OLMo2). The attention itself is ``torch.nn.functional.scaled_dot_product_attention``.

State (the KV cache), after n tokens of a batch of B:

* ``"k"``, ``"v"``: (B, m, num_kv_heads, head_dim) in the input dtype, keys after QK-norm and RoPE.
  Without a window m = n: the cache grows linearly, 2 * B * n * num_kv_heads * head_dim * bytes.
  With ``window = W`` only the last m = min(n, W) keys are kept, so the cache is bounded by the window.
* ``"pos"`` (only with a window): (B,) int64, the absolute position of the next token (n), needed for RoPE once
  the cache has been truncated; 8 * B bytes. Without a window the position is the cache length.

The window counts the token itself: query t attends to keys s with t - W < s <= t (the Hugging Face / Mistral
convention). Keeping W keys (one more than strictly needed) follows Mistral's rolling-buffer cache.

Departures: no dropout, no attention sinks or soft-capping, no RoPE scaling variants (YaRN etc.).

The module-level helpers (``causal_mask``, ``attend``, ``rotary_dim``) are shared by the other quadratic mixers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerConfig, RMSNorm, State, apply_rope, dtype_bytes, rope_cos_sin, rope_step, rope_tables
from .kv_cache import append_time


@dataclass
class SoftmaxConfig(MixerConfig):
    name: str = "softmax"
    num_kv_heads: Optional[int] = None  # key/value heads (GQA); None = num_heads (MHA); must divide num_heads
    rope: bool = True  # rotary position embedding; False = NoPE
    rope_fraction: float = 1.0  # share of each head's channels that RoPE rotates, in (0, 1]
    rope_theta: float = 10000.0  # RoPE base
    window: Optional[int] = None  # sliding window (keys per query, the query included); None = full causal
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE
    bias: bool = False  # biases in the q/k/v/o projections
    norm_eps: float = 1e-6  # epsilon of the QK-norm

    def validate(self) -> None:
        validate_attention(self)


def validate_attention(cfg) -> None:
    """Checks shared by the softmax-style configs (softmax, gated attention)."""
    n = cfg.name
    if cfg.num_kv_heads is not None:
        if cfg.num_kv_heads < 1:
            raise ValueError(f"{n}: num_kv_heads={cfg.num_kv_heads} must be >= 1 (or null for num_heads)")
        if cfg.num_heads is not None and cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"{n}: num_kv_heads={cfg.num_kv_heads} must divide num_heads={cfg.num_heads}")
    if not 0.0 < cfg.rope_fraction <= 1.0:
        raise ValueError(f"{n}: rope_fraction={cfg.rope_fraction} must be in (0, 1]")
    if cfg.rope_theta <= 0:
        raise ValueError(f"{n}: rope_theta={cfg.rope_theta} must be > 0")
    if cfg.rope and cfg.head_dim is not None and rotary_dim(cfg.head_dim, cfg.rope_fraction) < 2:
        raise ValueError(f"{n}: rope_fraction={cfg.rope_fraction} of head_dim={cfg.head_dim} rotates fewer than 2 "
                         f"channels (head_dim: the mixer's own, else model.d_model / its heads); raise "
                         f"rope_fraction, head_dim or model.d_model, or set rope: false")
    if cfg.window is not None and cfg.window < 1:
        raise ValueError(f"{n}: window={cfg.window} must be >= 1 (or null for full causal attention)")
    if cfg.norm_eps <= 0:
        raise ValueError(f"{n}: norm_eps={cfg.norm_eps} must be > 0")


def rotary_dim(head_dim: int, fraction: float) -> int:
    """Channels RoPE rotates: int(head_dim * fraction) rounded down to an even number."""
    return int(head_dim * fraction) // 2 * 2


def causal_mask(T: int, n: int, window: Optional[int] = None, device=None) -> torch.Tensor:
    """Boolean (T, n) mask, True = may attend, for the last T of n consecutive positions as queries."""
    i = torch.arange(T, device=device)[:, None] + (n - T)  # query positions in key coordinates
    j = torch.arange(n, device=device)[None, :]
    m = j <= i
    if window is not None:
        m = m & (j > i - window)
    return m


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: Optional[int] = None,
           mask: Optional[torch.Tensor] = None, scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """Causal softmax attention of T queries that are the last T of n consecutive positions (``causal=False``:
    every query sees every key, no window).

    q (B, T, H, Dk), k (B, n, Hkv, Dk), v (B, n, Hkv, Dv) with Hkv dividing H -> (B, T, H, Dv).
    ``mask`` (broadcastable to (B, H, T, n), True = may attend) is combined with the causal (and window) mask.
    ``scale=None`` means Dk ** -0.5.
    """
    T, n = q.shape[1], k.shape[1]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, time, D)
    gqa = kh.shape[1] != qh.shape[1]
    attn_mask, is_causal = None, False
    if not causal:
        attn_mask = mask  # the whole sequence (and the caller's mask, if any)
    elif mask is None and window is None and n == T:
        is_causal = T > 1
    elif mask is None and window is None and T == 1:
        pass  # one new token sees every cached key
    else:
        attn_mask = causal_mask(T, n, window, q.device)
        if mask is not None:
            attn_mask = attn_mask & mask
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                       enable_gqa=gqa)  # (B, H, T, Dv)
    return o.transpose(1, 2)


class SoftmaxAttention(Mixer):
    """Causal MHA/GQA softmax attention with (partial) RoPE, optional QK-norm and sliding window."""

    residual_out = ("o_proj",)  # the projection back into the residual stream (scaled init)

    quadratic = True
    native_noncausal = True  # causal=False: no mask (masked diffusion's denoiser sees the whole sequence)
    zero_centered_qk_norm = False  # GatedAttention: Qwen3-Next's (1 + w) norm
    q_gate = False  # GatedAttention: q_proj also yields an output gate

    def __init__(self, d_model: int, cfg: SoftmaxConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        if cfg.num_heads is None:
            raise ValueError(f"{cfg.name}: num_heads is not set (build the mixer with runner.mixers.build_mixer)")
        cfg.head_dim = cfg.head_dim or d_model // cfg.num_heads
        validate_attention(cfg)
        self.cfg, self.d_model, self.layer_idx, self.n_layers = cfg, d_model, layer_idx, n_layers
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.num_kv_heads = cfg.num_kv_heads or cfg.num_heads
        self.window = cfg.window
        self.rotary_dim = rotary_dim(self.head_dim, cfg.rope_fraction) if cfg.rope else 0
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(d_model, H * D * (2 if self.q_gate else 1), bias=cfg.bias)
        self.k_proj = nn.Linear(d_model, Hkv * D, bias=cfg.bias)
        self.v_proj = nn.Linear(d_model, Hkv * D, bias=cfg.bias)
        self.o_proj = nn.Linear(H * D, d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.norm_eps, zero_centered=self.zero_centered_qk_norm)
            self.k_norm = RMSNorm(D, cfg.norm_eps, zero_centered=self.zero_centered_qk_norm)
        else:
            self.q_norm = self.k_norm = None

    def _queries(self, x: torch.Tensor):
        """q (B, T, H, D) and the output gate (B, T, H, D) or None."""
        B, T, _ = x.shape
        if not self.q_gate:
            return self.q_proj(x).view(B, T, self.num_heads, self.head_dim), None
        # per head: [query | gate], the layout of Qwen3-Next's q_proj
        q, gate = self.q_proj(x).view(B, T, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
        return q, gate

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        self.refuse_state_when_noncausal(state)
        B, T, _ = x.shape
        q, gate = self._queries(x)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)

        # absolute position of the first new token
        if state is None:
            start = torch.zeros(1, dtype=torch.long, device=x.device)
        elif self.window is None:
            start = torch.full((1,), state["k"].shape[1], dtype=torch.long, device=x.device)
        else:
            start = state["pos"][:1]
        if self.rotary_dim:
            pos = start + torch.arange(T, device=x.device)  # (T,)
            cos, sin = rope_cos_sin(pos, self.rotary_dim, self.cfg.rope_theta, dtype=q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if state is not None:
            k = append_time(state["k"], k)  # (B, n, Hkv, D), written into the cache's spare room
            v = append_time(state["v"], v)
        o = attend(q, k, v, window=self.window, causal=self.causal)  # (B, T, H, D)
        if gate is not None:
            o = o * torch.sigmoid(gate)
        y = self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))

        if not need_state:
            return y, None
        if self.window is None:
            return y, {"k": k, "v": v}
        keep = min(k.shape[1], self.window)
        new_state = {"k": k[:, k.shape[1] - keep:], "v": v[:, v.shape[1] - keep:],
                     "pos": (start + T).expand(B).clone()}  # (B,) int64
        return y, new_state

    def build_step_tensors(self):
        """For :meth:`step_token`: the q/k/v projections as one (d_model, P) matrix and bias, out_proj as (H * D,
        d_model) and its bias, and the QK-norm gains (a zero-centred norm's as 1 + w)."""
        lin = (self.q_proj, self.k_proj, self.v_proj)
        W = torch.cat([m.weight for m in lin]).t().contiguous()
        bias = torch.cat([m.bias for m in lin]) if self.cfg.bias else None
        gains = None
        if self.q_norm is not None:
            gains = tuple(n.weight + 1.0 if n.zero_centered else n.weight.detach() for n in (self.q_norm, self.k_norm))
        return W, bias, self.o_proj.weight.t().contiguous(), self.o_proj.bias, gains

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step (runner/mixers/base.py): one projection matmul, RoPE from shared tables,
        the KV cache appended in place (``append_time``) and SDPA of the one query over its keys (no mask)."""
        W, bias, W_o, b_o, gains = tensors
        B = x.shape[0]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        x2 = x.reshape(B, -1)
        p = (x2 @ W if bias is None else torch.addmm(bias, x2, W)).view(B, 1, -1)
        nq = H * D * (2 if self.q_gate else 1)
        q, k, v = p.split([nq, Hkv * D, Hkv * D], dim=2)
        gate = None
        if self.q_gate:  # per head [query | gate]
            q, gate = q.view(B, 1, H, 2 * D).split(D, dim=3)
        q, k, v = q.view(B, 1, H, D), k.view(B, 1, Hkv, D), v.view(B, 1, Hkv, D)
        if gains is not None:
            q, k = F.rms_norm(q, (D,), gains[0], self.q_norm.eps), F.rms_norm(k, (D,), gains[1], self.k_norm.eps)
        if self.rotary_dim:
            # the position: the cache length, or with a window the state's counter (read back: a sync on a GPU)
            start = state["k"].shape[1] if self.window is None else int(state["pos"][0])
            cos, sin, perm = rope_tables(start + 1, self.rotary_dim, D, 0, self.cfg.rope_theta, p.dtype, p.device)
            qk = p[..., :nq + Hkv * D].view(B, 1, H + Hkv, D) if gains is None and gate is None \
                else torch.cat([q, k], 2)  # (B, 1, H + Hkv, D)
            q, k = rope_step(qk, cos[start:start + 1], sin[start:start + 1], perm).split([H, Hkv], dim=2)
        k = append_time(state["k"], k)  # (B, n, Hkv, D), written into the cache's spare room
        v = append_time(state["v"], v)
        n = k.shape[1]
        m = n if self.window is None else min(n, self.window)  # the keys the query sees, its own included
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k[:, n - m:].transpose(1, 2),
                                           v[:, n - m:].transpose(1, 2), enable_gqa=Hkv != H)  # (B, H, 1, D)
        if gate is not None:
            o = o * torch.sigmoid(gate).transpose(1, 2)
        o = o.reshape(B, H * D)
        y = (o @ W_o if b_o is None else torch.addmm(b_o, o, W_o)).view(B, 1, -1)
        if self.window is None:
            return y, {"k": k, "v": v}
        return y, {"k": k[:, n - m:], "v": v[:, n - m:], "pos": state["pos"] + 1}

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        m = n if self.window is None else min(n, self.window)
        kv = 2 * batch * m * self.num_kv_heads * self.head_dim * dtype_bytes(dtype)
        return kv if self.window is None else kv + batch * dtype_bytes(torch.int64)

    def flops_per_token(self, n: int) -> int:
        m = n if self.window is None else min(n, self.window)
        return self.proj_flops() + 4 * m * self.num_heads * self.head_dim  # q.k and p.v over m keys
