"""The delta rule (DeltaNet: Schlag, Irie & Schmidhuber 2021; Yang et al., "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length", NeurIPS 2024).

Per head, with state S of shape (K, V):

    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,        o_t = S_t^T (scale * q_t)

This is the gated delta rule with no decay (g = 0), so both forms are thin wrappers around
:mod:`runner.ops.gated_delta_rule` (same conventions: (batch, time, heads, dim) tensors, ``beta`` (B, T, HV),
``scale=None`` meaning K**-0.5, ``initial_state`` (B, HV, K, V), returns ``(o, final_state_or_None)``).
"""
from __future__ import annotations

from typing import Optional

import torch

from runner.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from runner.ops.precision import full_precision


def _no_decay(beta: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(beta, dtype=torch.float64 if beta.dtype == torch.float64 else torch.float32)


@full_precision
def recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
):
    """One step at a time. q, k (B, T, H, K); v (B, T, HV, V); beta (B, T, HV)."""
    return recurrent_gated_delta_rule(q, k, v, _no_decay(beta), beta, scale=scale, initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)


@full_precision
def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
):
    """Chunked parallel form (WY/UT transform); same arguments and results as :func:`recurrent_delta_rule`."""
    return chunk_gated_delta_rule(q, k, v, _no_decay(beta), beta, scale=scale, initial_state=initial_state,
                                  output_final_state=output_final_state,
                                  use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, chunk_size=chunk_size)
