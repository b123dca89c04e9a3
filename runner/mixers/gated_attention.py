"""Gated attention, the full-attention layer of Qwen3-Next ("Gated Attention for Large Language Models:
Non-linearity, Sparsity, and Attention-Sink-Free", Qiu et al., arXiv 2505.06708).

Softmax GQA attention (shared with ``softmax.py``, which this subclasses) plus:

* the query projection also yields an output gate: per head it produces [query | gate], each head_dim wide
  (Qwen3-Next's q_proj layout); the attention output is multiplied elementwise by sigmoid(gate) before the
  output projection: y = o_proj(SDPA(q, k, v) * sigmoid(gate));
* QK-norm with zero-centred RMSNorm (x_hat * (1 + w), w initialised at 0) over each head's channels;
* partial RoPE: Qwen3-Next rotates 25% of each head's channels (``rope_fraction = 0.25``).

State and ``state_bytes`` are those of ``SoftmaxAttention`` (the KV cache; the gate needs no state).
Departures from Qwen3-Next: no dropout; RoPE base defaults to 10000 (the released model uses a larger base;
set ``rope_theta``); the optional sliding window is not part of Qwen3-Next.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .softmax import SoftmaxAttention, SoftmaxConfig


@dataclass
class GatedAttentionConfig(SoftmaxConfig):
    name: str = "gated_attention"
    num_kv_heads: Optional[int] = None  # key/value heads (Qwen3-Next: 16 query heads, 2 kv heads)
    rope_fraction: float = 0.25  # Qwen3-Next's partial RoPE
    qk_norm: bool = True  # zero-centred RMSNorm on q and k


class GatedAttention(SoftmaxAttention):
    """Qwen3-Next gated attention: softmax GQA attention with a sigmoid output gate from the query projection."""

    zero_centered_qk_norm = True
    q_gate = True

