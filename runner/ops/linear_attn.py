"""Linear attention with the normaliser ("Transformers are RNNs", Katharopoulos, Vyas, Pappas & Fleuret, ICML 2020).

Per head, with q, k already passed through the feature map (phi = elu + 1 is applied by the mixer, not here):

    S_t = S_{t-1} + k_t v_t^T,    z_t = z_{t-1} + k_t,    o_t = (scale q_t)^T S_t / ((scale q_t)^T z_t + eps)

Both forms are thin wrappers of :mod:`runner.ops.simple_gla` with no decay (g = None), and both carry the
normaliser in the same kernel: v is extended by a column of ones, so the last column of the (K, V + 1) state
is z and the last output column is the denominator (the chunked kernel adds the column, divides and
differentiates the division itself, segment by segment, so no full-size temporaries are made).

``normalize=False`` drops the denominator (o_t = (scale q_t)^T S_t; then the state is S alone).

State. With ``normalize=True`` the state (``initial_state`` and the returned final state) is the tuple
``(S, z)`` with S (B, H, K, V) and z (B, H, K); with ``normalize=False`` it is the tensor S (B, H, K, V).
``scale=None`` means K**-0.5; with the normaliser the scale only changes the weight of ``eps``
(the mixer passes scale=1, as in the paper). The outputs are returned in v's dtype, the state in the compute
dtype (float32, or float64 for float64 inputs).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .precision import full_precision
from .simple_gla import _chunked, chunk_simple_gla, recurrent_simple_gla

LinearState = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _check_state(initial_state, normalize):
    if initial_state is None:
        return None, None
    if not normalize:
        if isinstance(initial_state, (tuple, list)):
            raise ValueError("with normalize=False the state is the tensor S (B, H, K, V), not a tuple (S, z)")
        return initial_state, None
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise ValueError("with normalize=True the state is the tuple (S (B, H, K, V), z (B, H, K))")
    S, z = initial_state
    if z.shape != S.shape[:-1]:
        raise ValueError(f"z must be (B, H, K) = {tuple(S.shape[:-1])}; got {tuple(z.shape)}")
    return S, z


@full_precision
def recurrent_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[LinearState] = None,
    output_final_state: bool = False,
    normalize: bool = True,
    eps: float = 1e-6,
):
    """One step at a time. q, k (B, T, H, K) already featurised; v (B, T, H, V).
    Returns (o (B, T, H, V), final state ((S, z) with the normaliser, else S) or None).
    The normaliser is carried as an extra value column of ones: [S | z] is the (K, V + 1) state."""
    S, z = _check_state(initial_state, normalize)
    if not normalize:
        return recurrent_simple_gla(q, k, v, None, scale, S, output_final_state)
    V = v.shape[-1]
    s0 = None if S is None else torch.cat([S, z.unsqueeze(-1).to(S.dtype)], -1)  # (B, H, K, V + 1)
    v1 = F.pad(v, (0, 1), value=1.0)                                     # (B, T, H, V + 1): [v | 1]
    o1, final = recurrent_simple_gla(q, k, v1, None, scale, s0, output_final_state)
    o1 = o1.to(torch.float64 if o1.dtype == torch.float64 else torch.float32)
    o = (o1[..., :V] / (o1[..., V:] + eps)).to(v.dtype)                 # numerator / (scale q^T z + eps)
    if final is not None:
        final = (final[..., :V].contiguous(), final[..., V].contiguous())  # (S, z)
    return o, final


@full_precision
def chunk_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[LinearState] = None,
    output_final_state: bool = False,
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: int = 64,
):
    """Chunked parallel form; same arguments and results as :func:`recurrent_linear_attn`. The normaliser rides
    in the chunked kernel as an extra value column of ones, added and divided out inside it."""
    S, z = _check_state(initial_state, normalize)
    if not normalize:
        return chunk_simple_gla(q, k, v, None, scale, S, output_final_state, chunk_size)
    s0 = None if S is None else torch.cat([S, z.unsqueeze(-1).to(S.dtype)], -1)  # (B, H, K, V + 1)
    o, final = _chunked(q, k, v, None, None, s0, scale, output_final_state, chunk_size, norm_eps=eps)
    V = v.shape[-1]
    if final is not None:
        final = (final[..., :V].contiguous(), final[..., V].contiguous())  # (S, z)
    return o, final
