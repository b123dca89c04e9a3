"""Multi-head latent attention (MLA), DeepSeek-V2 ("DeepSeek-V2: A Strong, Economical, and Efficient
Mixture-of-Experts Language Model", arXiv 2405.04434), also the full-attention layer of Kimi Linear
(arXiv 2510.26692), which uses it without RoPE (``rope: false``).

Per token x (d_model):

* queries: q = W_q x, or low-rank q = W_qb RMSNorm(W_qa x) when ``q_lora_rank`` is set; per head q splits into
  q_nope (qk_nope_head_dim) and q_rope (qk_rope_head_dim);
* keys/values: one projection W_kva x gives the latent c (kv_lora_rank), RMSNorm-ed, and a decoupled key part
  k_rope (qk_rope_head_dim) shared by all heads; W_kvb c gives per head k_nope (qk_nope_head_dim) and
  v (v_head_dim);
* RoPE (rotate-half convention) on q_rope and k_rope only; the key of head h is [k_nope_h | k_rope];
* causal softmax attention with scale (qk_nope_head_dim + qk_rope_head_dim) ** -0.5, then o_proj.

State, after n tokens of a batch of B: ``"kv"`` (B, n, kv_lora_rank + qk_rope_head_dim) in the input dtype:
the normalised latent and the rotated shared key. That is all MLA caches (its point: per token
kv_lora_rank + qk_rope_head_dim numbers instead of 2 * heads * head_dim); state_bytes =
B * n * (kv_lora_rank + qk_rope_head_dim) * bytes. The position of the next token is the cache length.

Departures: decoding re-expands the whole cached latent through W_kvb at every call (simple, exact, O(n) extra
work per step); the "absorbed" form that folds W_kvb into the query and output projections and attends directly
over the latent is not implemented. ``flops_per_token`` counts the prefill/training form (each latent expanded
once). RoPE uses rotate-half rather than DeepSeek's interleaved pairs (a fixed permutation of the rope
channels of W_q and W_kva, so the two are equivalent). ``rope: false`` keeps the shared qk_rope_head_dim key
channels unrotated, as Kimi Linear does. No YaRN scaling, no dropout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerConfig, RMSNorm, State, apply_rope, dtype_bytes, rope_cos_sin, rope_step, rope_tables
from .kv_cache import append_time
from .softmax import attend


@dataclass
class MLAConfig(MixerConfig):
    name: str = "mla"
    q_lora_rank: Optional[int] = None  # low-rank query (DeepSeek-V2: 1536); None = full-rank q_proj (Kimi Linear)
    kv_lora_rank: Optional[int] = None  # width of the cached KV latent; None = 4 * head_dim (DeepSeek-V2: 512)
    qk_nope_head_dim: Optional[int] = None  # per-head key/query channels without RoPE; None = head_dim
    qk_rope_head_dim: Optional[int] = None  # decoupled RoPE key channels shared by heads; None = head_dim // 2
    v_head_dim: Optional[int] = None  # per-head value channels; None = head_dim
    rope: bool = True  # rotate the decoupled key/query channels; False = NoPE (Kimi Linear)
    rope_theta: float = 10000.0  # RoPE base
    bias: bool = False  # biases in q_a / kv_a / o projections (DeepSeek's attention_bias)
    norm_eps: float = 1e-6  # epsilon of the latent RMSNorms

    def validate(self) -> None:
        n = self.name
        for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            val = getattr(self, key)
            if val is not None and val < 1:
                raise ValueError(f"{n}: {key}={val} must be >= 1 (or null for the default)")
        if self.qk_rope_head_dim is not None and self.qk_rope_head_dim < 0:
            raise ValueError(f"{n}: qk_rope_head_dim={self.qk_rope_head_dim} must be >= 0 (or null for head_dim // 2)")
        if self.qk_rope_head_dim is not None and self.qk_rope_head_dim % 2:
            raise ValueError(f"{n}: qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)")
        if self.rope_theta <= 0:
            raise ValueError(f"{n}: rope_theta={self.rope_theta} must be > 0")
        if self.norm_eps <= 0:
            raise ValueError(f"{n}: norm_eps={self.norm_eps} must be > 0")


class MultiHeadLatentAttention(Mixer):
    """DeepSeek-V2 MLA; the cache holds only the KV latent and the shared RoPE key."""

    residual_out = ("o_proj",)  # the projection back into the residual stream (scaled init)

    quadratic = True
    native_noncausal = True  # causal=False: no mask (masked diffusion's denoiser sees the whole sequence)

    def __init__(self, d_model: int, cfg: MLAConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        if cfg.num_heads is None:
            raise ValueError(f"{cfg.name}: num_heads is not set (build the mixer with runner.mixers.build_mixer)")
        cfg.head_dim = cfg.head_dim or d_model // cfg.num_heads
        cfg.validate()
        self.cfg, self.d_model, self.layer_idx, self.n_layers = cfg, d_model, layer_idx, n_layers
        hd = cfg.head_dim
        self.num_heads = H = cfg.num_heads
        self.kv_lora_rank = r = cfg.kv_lora_rank or 4 * hd
        self.qk_nope_head_dim = dn = cfg.qk_nope_head_dim or hd
        self.qk_rope_head_dim = dr = hd // 2 // 2 * 2 if cfg.qk_rope_head_dim is None else cfg.qk_rope_head_dim
        self.v_head_dim = dv = cfg.v_head_dim or hd
        self.qk_head_dim = dn + dr
        self.scale = self.qk_head_dim ** -0.5
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(d_model, cfg.q_lora_rank, bias=cfg.bias)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * (dn + dr), bias=False)
        else:
            self.q_proj = nn.Linear(d_model, H * (dn + dr), bias=False)
        self.kv_a_proj = nn.Linear(d_model, r + dr, bias=cfg.bias)
        self.kv_a_norm = RMSNorm(r, cfg.norm_eps)
        self.kv_b_proj = nn.Linear(r, H * (dn + dv), bias=False)
        self.o_proj = nn.Linear(H * dv, d_model, bias=cfg.bias)

    # -- pieces shared with DeepSeekSparseAttention --------------------------------------------------------------
    def project(self, x: torch.Tensor, start: int):
        """Queries and the new latent of tokens at positions start, start + 1, ...

        Returns q (B, T, H, dn + dr), latent (B, T, r + dr), the query latent (B, T, q_lora_rank) or None, and
        the RoPE (cos, sin) of the new positions or None."""
        B, T, _ = x.shape
        dr = self.qk_rope_head_dim
        if self.cfg.q_lora_rank:
            q_lat = self.q_a_norm(self.q_a_proj(x))  # (B, T, q_lora_rank)
            q = self.q_b_proj(q_lat)
        else:
            q_lat, q = None, self.q_proj(x)
        q = q.view(B, T, self.num_heads, self.qk_head_dim)  # (B, T, H, dn + dr)
        c, k_rope = self.kv_a_proj(x).split([self.kv_lora_rank, dr], dim=-1)  # (B, T, r), (B, T, dr)
        c = self.kv_a_norm(c)
        rope = None
        if self.cfg.rope and dr:
            pos = torch.arange(start, start + T, device=x.device)
            rope = rope_cos_sin(pos, dr, self.cfg.rope_theta, dtype=q.dtype)  # 2 x (T, dr // 2)
            q_nope, q_rope = q.split([self.qk_nope_head_dim, dr], dim=-1)
            q = torch.cat([q_nope, apply_rope(q_rope, *rope)], dim=-1)
            k_rope = apply_rope(k_rope[:, :, None], *rope)[:, :, 0]
        return q, torch.cat([c, k_rope], dim=-1), q_lat, rope

    def expand(self, latent: torch.Tensor):
        """Latent (B, n, r + dr) -> keys (B, n, H, dn + dr) and values (B, n, H, dv)."""
        B, n, _ = latent.shape
        c, k_rope = latent.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(c).view(B, n, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None].expand(B, n, self.num_heads, self.qk_rope_head_dim)], dim=-1)
        return k, v

    def output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Causal attention of q (B, T, H, dn + dr) over the expanded k, v (B, n, H, .), then o_proj."""
        B, T = q.shape[:2]
        o = attend(q, k, v, mask=mask, scale=self.scale, causal=self.causal)  # (B, T, H, dv)
        return self.o_proj(o.reshape(B, T, self.num_heads * self.v_head_dim))

    # -- the mixer contract -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        self.refuse_state_when_noncausal(state)
        start = 0 if state is None else state["kv"].shape[1]
        q, latent, _, _ = self.project(x, start)
        if state is not None:
            latent = append_time(state["kv"], latent)  # (B, n, r + dr)
        y = self.output(q, *self.expand(latent))
        return y, ({"kv": latent} if need_state else None)

    # -- the decode step (runner/mixers/base.py), in the absorbed form -------------------------------------------
    def build_step_tensors(self):
        """For the decode step, MLA's absorbed form (DeepSeek-V2, section 2.1.2): W_kvb's key part folds into the
        query projection (q_h . W_kb_h c = (W_kb_h^T q_h) . c) and its value part into o_proj, so a step attends
        over the cached latent directly, with no re-expansion of the cache.

        Returns the input projection (d_model, P) with columns [q latent | c | k_rope] (low-rank q) or
        [W_kb^T q_nope (H r) | c | q_rope (H dr) | k_rope] (full-rank q) and its bias, the low-rank query's second
        projection [W_kb^T q_nope | q_rope] (q_lora_rank, H (r + dr)) or None, and o_proj composed with the value
        part of W_kvb, (H r, d_model), with its bias."""
        H, r, dn, dr, dv = self.num_heads, self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim, \
            self.v_head_dim
        W_kv = self.kv_b_proj.weight.view(H, dn + dv, r)
        W_kb, W_vb = W_kv[:, :dn], W_kv[:, dn:]  # (H, dn, r), (H, dv, r)
        low_rank = bool(self.cfg.q_lora_rank)
        W_q = (self.q_b_proj if low_rank else self.q_proj).weight.view(H, dn + dr, -1)  # (H, dn + dr, source)
        q_abs = torch.einsum("hnr,hns->hrs", W_kb, W_q[:, :dn]).reshape(H * r, W_q.shape[2])
        q_rope = W_q[:, dn:].reshape(H * dr, W_q.shape[2])
        W_kva, b_kva = self.kv_a_proj.weight, self.kv_a_proj.bias
        zeros = W_kva.new_zeros
        if low_rank:
            W_in = torch.cat([self.q_a_proj.weight, W_kva])
            bias = torch.cat([self.q_a_proj.bias, b_kva]) if self.cfg.bias else None
            W_q2 = torch.cat([q_abs, q_rope]).t().contiguous()
        else:
            W_in = torch.cat([q_abs, W_kva[:r], q_rope, W_kva[r:]])
            bias = torch.cat([zeros(H * r), b_kva[:r], zeros(H * dr), b_kva[r:]]) if self.cfg.bias else None
            W_q2 = None
        W_ov = torch.einsum("dhv,hvr->hrd", self.o_proj.weight.view(-1, H, dv), W_vb).reshape(H * r, self.d_model)
        return W_in.t().contiguous(), bias, W_q2, W_ov.contiguous(), self.o_proj.bias

    def latent_step(self, x: torch.Tensor, state: State, tensors):
        """The new token's queries in the absorbed form q (B, H, r + dr), the cache with its latent appended
        (B, n, r + dr), and the outputs of the input projection (B, P) and of the low-rank query's second
        projection (or None)."""
        W_in, bias, W_q2 = tensors[:3]
        B = x.shape[0]
        H, r, dr, ql = self.num_heads, self.kv_lora_rank, self.qk_rope_head_dim, self.cfg.q_lora_rank or 0
        x2 = x.reshape(B, -1)
        p = x2 @ W_in if bias is None else torch.addmm(bias, x2, W_in)
        q2 = None
        if W_q2 is None:
            q_abs, c, qk_rope = p[:, :H * r], p[:, H * r:H * r + r], p[:, H * r + r:(H + 1) * (r + dr)]
        else:
            q2 = F.rms_norm(p[:, :ql], (ql,), self.q_a_norm.weight, self.q_a_norm.eps) @ W_q2
            q_abs, q_rope = q2[:, :H * r], q2[:, H * r:H * (r + dr)]
            c, k_rope = p[:, ql:ql + r], p[:, ql + r:ql + r + dr]
            qk_rope = torch.cat([q_rope, k_rope], 1)  # (B, (H + 1) dr): the heads' rope channels, then the key's
        c = F.rms_norm(c, (r,), self.kv_a_norm.weight, self.kv_a_norm.eps)
        qk_rope = qk_rope.reshape(B, 1, H + 1, dr)
        start = state["kv"].shape[1]
        if self.cfg.rope and dr:
            cos, sin, perm = rope_tables(start + 1, dr, dr, 0, self.cfg.rope_theta, p.dtype, p.device)
            qk_rope = rope_step(qk_rope, cos[start:start + 1], sin[start:start + 1], perm)
        qk_rope = qk_rope.view(B, H + 1, dr)
        latent = append_time(state["kv"], torch.cat([c, qk_rope[:, H]], 1).view(B, 1, r + dr))
        return torch.cat([q_abs.view(B, H, r), qk_rope[:, :H]], 2), latent, p, q2

    def latent_attend(self, q: torch.Tensor, latent: torch.Tensor, tensors, mask: Optional[torch.Tensor] = None):
        """Softmax attention of the absorbed queries q (B, H, r + dr) over the latent cache (B, n, r + dr), keys
        allowed by ``mask`` (B, 1, n) or all, then o_proj: y (B, 1, d_model)."""
        W_ov, b_o = tensors[3:5]
        B = q.shape[0]
        scores = torch.bmm(q, latent.transpose(1, 2)).mul_(self.scale)  # (B, H, n)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        o = torch.bmm(torch.softmax(scores, -1), latent[..., :self.kv_lora_rank]).view(B, -1)  # (B, H r)
        return (o @ W_ov if b_o is None else torch.addmm(b_o, o, W_ov)).view(B, 1, -1)

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step (runner/mixers/base.py), attending over the latent cache directly."""
        q, latent, _, _ = self.latent_step(x, state, tensors)
        return self.latent_attend(q, latent, tensors), {"kv": latent}

    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        return batch * n * self.latent_dim() * dtype_bytes(dtype)

    def attention_flops(self, m: int) -> int:
        """q.k and p.v of one query over m keys."""
        return 2 * m * self.num_heads * (self.qk_head_dim + self.v_head_dim)

    def flops_per_token(self, n: int) -> int:
        return self.proj_flops() + self.attention_flops(n)
