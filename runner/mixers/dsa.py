"""DeepSeek Sparse Attention (DSA), DeepSeek-V3.2 ("DeepSeek-V3.2: Pushing the Frontier of Open Large Language
Models", DeepSeek-AI 2025), built on MLA (``mla.py``, as in V3.2; not on plain MHA).

A lightning indexer with a few small heads (``index_n_heads`` x ``index_head_dim``) scores every causal key s
for query t:

    I_{t,s} = sum_j w_{t,j} * ReLU(q^I_{t,j} . k^I_s * index_head_dim ** -0.5),   w_t = W_w x_t * index_n_heads ** -0.5

with q^I from the query latent (q_lora_rank; from x when q_lora_rank is null), one key k^I_s = LayerNorm(W_k x_s)
shared by the indexer heads, and RoPE (rotate-half) on the first qk_rope_head_dim channels of q^I and k^I.
Each query then attends (MLA) only to its ``index_topk`` best-scored keys; when t + 1 <= index_topk that is every
previous key. Ties at the k-th score go to the most recent keys, so the choice does not depend on how a sequence
is split between calls. With index_topk >= the context the layer is exactly MLA (at inference the indexer's
scores are then not even computed).

Indexer training (the paper's two stages, chosen by ``indexer_warmup``):

* ``indexer_warmup: true`` (dense warm-up): the main attention stays dense (the layer computes MLA); the indexer
  learns the main attention's distribution over all causal keys.
* ``indexer_warmup: false`` (sparse stage, the default): the main attention uses the top-k selection; the indexer
  learns the main attention's distribution restricted to the selected keys S_t.

In both, in training mode, the target p_{t,.} is the main attention probabilities summed over heads and
L1-normalised (computed without gradient from the detached q and expanded k), and
``self.aux_loss = mean_t KL(p_{t,.} || softmax(I_{t,.}))`` over the same key set (causal keys, or S_t), averaged
over batch and query positions. The indexer's inputs (x and the query latent) are detached from the main graph,
so the aux loss trains only the indexer and the top-k selection (not differentiable) gives the LM loss no path
into it. ``self.aux_loss`` is None in eval mode. Unlike the paper's warm-up, the rest of the model is not frozen
here: freezing it is the trainer's choice.

State, after n tokens of a batch of B: ``"kv"`` (B, n, kv_lora_rank + qk_rope_head_dim), MLA's latent cache, and
``"index_k"`` (B, n, index_head_dim), the indexer keys; state_bytes =
B * n * (kv_lora_rank + qk_rope_head_dim + index_head_dim) * bytes.

Departures: the sparse attention is computed as dense SDPA with a boolean top-k mask (pure PyTorch), so its actual
cost on our hardware is that of dense attention; ``flops_per_token`` reports the algorithm's FLOPs (indexer over n
keys, always counted, attention over min(n, index_topk) keys, or n in the warm-up stage). No FP8 scoring and no Hadamard rotation of the indexer's q and k
(an orthogonal rotation of both leaves their dot products unchanged). The KL is averaged over query positions,
not summed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import State, apply_rope, dtype_bytes, rope_step, rope_tables
from .kv_cache import append_time
from .mla import MLAConfig, MultiHeadLatentAttention
from .softmax import causal_mask


@dataclass
class DSAConfig(MLAConfig):
    name: str = "dsa"
    index_n_heads: int = 4  # lightning-indexer heads (DeepSeek-V3.2: 64)
    index_head_dim: Optional[int] = None  # channels per indexer head; None = head_dim (DeepSeek-V3.2: 128)
    index_topk: int = 64  # keys each query attends to (DeepSeek-V3.2: 2048)
    indexer_warmup: bool = False  # True: dense attention, indexer trained on all causal keys (warm-up stage)

    def validate(self) -> None:
        super().validate()
        n = self.name
        if self.index_n_heads < 1:
            raise ValueError(f"{n}: index_n_heads={self.index_n_heads} must be >= 1")
        if self.index_head_dim is not None and self.index_head_dim < 1:
            raise ValueError(f"{n}: index_head_dim={self.index_head_dim} must be >= 1 (or null for head_dim)")
        if self.index_topk < 1:
            raise ValueError(f"{n}: index_topk={self.index_topk} must be >= 1")


class LightningIndexer(nn.Module):
    """Scores I_{t,s} = sum_j w_{t,j} ReLU(q_{t,j} . k_s / sqrt(D)); keys are shared by the indexer heads."""

    def __init__(self, d_model: int, q_in: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.q_proj = nn.Linear(q_in, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.w_proj = nn.Linear(d_model, n_heads, bias=False)

    def keys(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        """x (B, T, d_model) -> indexer keys (B, T, D)."""
        k = self.k_norm(self.k_proj(x))
        if rope is not None:
            k = apply_rope(k[:, :, None], *rope)[:, :, 0]
        return k

    def scores(self, x: torch.Tensor, q_in: torch.Tensor, k: torch.Tensor, rope=None) -> torch.Tensor:
        """Scores (B, T, n) of the T new queries against all n keys k (B, n, D)."""
        B, T, _ = x.shape
        q = self.q_proj(q_in).view(B, T, self.n_heads, self.head_dim)  # (B, T, Hi, D)
        if rope is not None:
            q = apply_rope(q, *rope)
        w = self.w_proj(x) * self.n_heads ** -0.5  # (B, T, Hi)
        s = F.relu(torch.einsum("bthd,bsd->bths", q, k) * self.head_dim ** -0.5)  # (B, T, Hi, n)
        return torch.einsum("bths,bth->bts", s, w)


class DeepSeekSparseAttention(MultiHeadLatentAttention):
    """MLA whose queries attend only to the top-k keys chosen by a lightning indexer (DeepSeek-V3.2)."""

    target_chunk = 256  # query rows per block when building the KL target (bounds its memory)

    def __init__(self, d_model: int, cfg: DSAConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, cfg, layer_idx, n_layers)
        self.index_head_dim = cfg.index_head_dim or cfg.head_dim
        self.index_topk = cfg.index_topk
        if cfg.rope and self.index_head_dim < self.qk_rope_head_dim:
            raise ValueError(f"{cfg.name}: index_head_dim={self.index_head_dim} must be >= qk_rope_head_dim="
                             f"{self.qk_rope_head_dim} (RoPE rotates that many indexer channels)")
        self.indexer = LightningIndexer(d_model, cfg.q_lora_rank or d_model, cfg.index_n_heads, self.index_head_dim)
        self.aux_loss: Optional[torch.Tensor] = None

    def select(self, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Top-k mask (B, T, n) among the allowed (causal) keys of each query; ties at the k-th score go to the
        most recent keys, so the choice does not depend on how the sequence was split into calls."""
        masked = scores.masked_fill(~allowed, float("-inf"))
        k = min(self.index_topk, scores.shape[-1])
        kth = masked.topk(k, dim=-1).values[..., -1:]  # (B, T, 1)
        above = masked > kth
        tied = (masked == kth) & allowed
        need = k - above.sum(-1, keepdim=True)  # tied keys still to take
        rank_from_end = tied.flip(-1).cumsum(-1, dtype=torch.int32).flip(-1)  # 1 = the most recent tied key
        return above | (tied & (rank_from_end <= need))

    @torch.no_grad()
    def attention_target(self, q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Main attention probabilities over the allowed keys, summed over heads and L1-normalised: (B, T, n).
        q (B, T, H, Dk), k (B, n, H, Dk), allowed (B, T, n)."""
        B, T, H, _ = q.shape
        p = q.new_empty(B, T, k.shape[1])
        for t0 in range(0, T, self.target_chunk):
            t1 = min(T, t0 + self.target_chunk)
            logits = torch.einsum("bthd,bshd->bhts", q[:, t0:t1], k) * self.scale  # (B, H, t, n)
            logits = logits.masked_fill(~allowed[:, None, t0:t1], float("-inf"))
            p[:, t0:t1] = logits.softmax(-1).sum(1) / H
        return p

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        self.refuse_state_when_noncausal(state)
        B, T, _ = x.shape
        start = 0 if state is None else state["kv"].shape[1]
        n = start + T
        q, latent, q_lat, rope = self.project(x, start)
        xi = x.detach()  # the indexer's inputs are cut from the main graph
        qi = xi if q_lat is None else q_lat.detach()
        index_k = self.indexer.keys(xi, rope)  # (B, T, Di)
        if state is not None:
            latent = append_time(state["kv"], latent)  # (B, n, r + dr)
            index_k = append_time(state["index_k"], index_k)  # (B, n, Di)

        sparse = not self.cfg.indexer_warmup and self.index_topk < n
        scores = self.indexer.scores(xi, qi, index_k, rope) if (sparse or self.training) else None  # (B, T, n)
        # the keys each query may use: the causal ones, or every key when non-causal (masked diffusion)
        allowed = (causal_mask(T, n, device=x.device) if self.causal
                   else torch.ones(T, n, dtype=torch.bool, device=x.device))[None].expand(B, T, n)  # (B, T, n)
        if sparse:
            allowed = self.select(scores.detach(), allowed)
        k, v = self.expand(latent)  # (B, n, H, dn + dr), (B, n, H, dv)
        y = self.output(q, k, v, mask=allowed[:, None] if sparse else None)

        self.aux_loss = None
        if self.training:
            p = self.attention_target(q.detach(), k.detach(), allowed)  # (B, T, n), no gradient
            log_i = scores.masked_fill(~allowed, float("-inf")).log_softmax(-1).masked_fill(~allowed, 0.0)
            kl = (torch.xlogy(p, p) - p * log_i).sum(-1)  # (B, T)
            self.aux_loss = kl.mean()

        if not need_state:
            return y, None
        return y, {"kv": latent, "index_k": index_k}

    # -- the decode step (runner/mixers/base.py) ---------------------------------------------------------------
    def step_ready(self) -> bool:
        return not self.training  # training also builds the indexer's loss: forward does that

    def build_step_tensors(self):
        """MLA's step tensors (absorbed form) with the indexer's projections appended: its key and weight
        projections (and, with a full-rank query, its query projection) as the last columns of the input
        projection, its query projection from the query latent as the last columns of the second one."""
        W_in, bias, W_q2, W_ov, b_o = super().build_step_tensors()
        ix = self.indexer
        extra = [ix.k_proj.weight, ix.w_proj.weight] + ([] if W_q2 is not None else [ix.q_proj.weight])
        extra = torch.cat(extra)
        W_in = torch.cat([W_in, extra.t()], 1)
        if bias is not None:
            bias = torch.cat([bias, bias.new_zeros(extra.shape[0])])
        if W_q2 is not None:
            W_q2 = torch.cat([W_q2, ix.q_proj.weight.t()], 1)
        return W_in.contiguous(), bias, W_q2 if W_q2 is None else W_q2.contiguous(), W_ov, b_o

    def step_token(self, x: torch.Tensor, state: State, tensors):
        """One token of the decode step: MLA's absorbed step over the keys the indexer selects."""
        q, latent, p, q2 = self.latent_step(x, state, tensors)
        ix, B = self.indexer, x.shape[0]
        Hi, Di, dr = ix.n_heads, ix.head_dim, self.qk_rope_head_dim
        start = latent.shape[1] - 1
        rope = None
        if self.cfg.rope and dr:
            cos, sin, perm = rope_tables(start + 1, dr, Di, 0, self.cfg.rope_theta, p.dtype, p.device)
            rope = (cos[start:start + 1], sin[start:start + 1], perm)
        n_mla = p.shape[1] - Di - Hi - (0 if q2 is not None else Hi * Di)
        k_i = F.layer_norm(p[:, n_mla:n_mla + Di], (Di,), ix.k_norm.weight, ix.k_norm.bias, ix.k_norm.eps)
        if rope is not None:
            k_i = rope_step(k_i.view(B, 1, 1, Di), *rope)
        index_k = append_time(state["index_k"], k_i.view(B, 1, Di))  # (B, n, Di)
        n = index_k.shape[1]
        mask = None
        if not self.cfg.indexer_warmup and self.index_topk < n:
            w = p[:, n_mla + Di:n_mla + Di + Hi] * Hi ** -0.5  # (B, Hi)
            q_i = q2[:, q2.shape[1] - Hi * Di:] if q2 is not None else p[:, n_mla + Di + Hi:]
            q_i = q_i.reshape(B, 1, Hi, Di)
            if rope is not None:
                q_i = rope_step(q_i, *rope)
            s = torch.bmm(q_i.view(B, Hi, Di), index_k.transpose(1, 2)).mul_(Di ** -0.5).relu_()  # (B, Hi, n)
            scores = torch.bmm(w.unsqueeze(1), s)  # (B, 1, n)
            mask = self.select(scores, torch.ones_like(scores, dtype=torch.bool))
        return self.latent_attend(q, latent, tensors, mask), {"kv": latent, "index_k": index_k}

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        return batch * n * (self.latent_dim() + self.index_head_dim) * dtype_bytes(dtype)

    def flops_per_token(self, n: int) -> int:
        indexer = 2 * n * self.indexer.n_heads * (self.index_head_dim + 1)  # q.k per head, then the weighted sum
        m = n if self.cfg.indexer_warmup else min(n, self.index_topk)
        return self.proj_flops() + indexer + self.attention_flops(m)
