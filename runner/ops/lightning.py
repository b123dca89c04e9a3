"""Lightning attention (MiniMax-01, arXiv 2501.08313; MiniMax-M1): linear attention with a fixed decay per head.

Per head h, with a constant decay rate s_h >= 0 and state S of shape (K, V):

    S_t = exp(-s_h) S_{t-1} + k_t v_t^T,        o_t = S_t^T (scale * q_t)

No normaliser (MiniMax normalises the output with an RMSNorm instead). This is
:mod:`runner.ops.simple_gla` with the constant decay g_gamma = -s (Gamma built once for all chunks); the
chunked form is MiniMax's block-wise "lightning" computation (intra-block masked Q K^T with decay,
inter-block through the state).

``scale=None`` means K**-0.5 as for every op here; MiniMax applies no scale (its mixer passes ``scale=1``).

:func:`lightning_decay_rates` gives MiniMax's rates for layer l of L with H heads:

    s_h = (2^(-8/H))^(h+1) * (1 - l / (L - 1 + 1e-5) + 1e-5),        h = 0 .. H-1

the ALiBi-style slopes 2^(-8(h+1)/H) scaled down linearly with depth, with the two 1e-5 terms of the released
code (transformers' ``MiniMaxLightningAttention.get_slope_rate``): they keep the single-layer case L = 1 finite
(factor 1 + 1e-5, the full slopes) and leave the last layer a tiny positive decay (factor about 1e-5 (1 + 1/(L-1)))
instead of none, i.e. the last layer is almost plain (unnormalised) linear attention.
"""
from __future__ import annotations

from typing import Optional

import torch

from .precision import full_precision
from .simple_gla import chunk_simple_gla, recurrent_simple_gla


def lightning_decay_rates(num_heads: int, layer_idx: int, n_layers: int, dtype=torch.float64,
                          device=None) -> torch.Tensor:
    """MiniMax's per-head decay rates s (H,) for layer ``layer_idx`` of ``n_layers`` (module docstring)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if n_layers < 1 or not 0 <= layer_idx < n_layers:
        raise ValueError(f"layer_idx must be in [0, n_layers); got layer_idx={layer_idx}, n_layers={n_layers}")
    base = 2.0 ** (-8.0 / num_heads)
    slopes = base ** torch.arange(1, num_heads + 1, dtype=torch.float64, device=device)  # (H,)
    factor = 1.0 - layer_idx / (n_layers - 1 + 1e-5) + 1e-5
    return (slopes * factor).to(dtype)


def _log_decay(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The constant per-step log decay -s (H,) in the compute dtype."""
    H = q.shape[2]
    if s.shape != (H,):
        raise ValueError(f"the decay rates s must be (H,) = ({H},); got {tuple(s.shape)}")
    if (s < 0).any():
        raise ValueError("the decay rates s must be >= 0 (the decay per step is exp(-s))")
    return -s.to(torch.float64 if q.dtype == torch.float64 else torch.float32)


@full_precision
def recurrent_lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
):
    """One step at a time. q, k (B, T, H, K); v (B, T, H, V); s (H,) decay rates >= 0.
    Returns (o (B, T, H, V), final state (B, H, K, V) or None)."""
    return recurrent_simple_gla(q, k, v, None, scale, initial_state, output_final_state, g_gamma=_log_decay(q, s))


@full_precision
def chunk_lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
):
    """Chunked (block-wise) form; same arguments and results as :func:`recurrent_lightning_attn`."""
    return chunk_simple_gla(q, k, v, None, scale, initial_state, output_final_state, chunk_size,
                            g_gamma=_log_decay(q, s))
