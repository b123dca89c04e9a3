"""Mamba2's state-space duality layer (SSD; Dao & Gu, "Transformers are SSMs", ICML 2024) in Mamba2's own layout,
computed by the scalar-decay linear-attention kernel of :mod:`runner.ops.simple_gla`.

Per head h (state size N, head dim P) with the discretised step dt_t > 0 and A_h < 0:

    h_t = exp(dt_t A_h) h_{t-1} + (dt_t B_t) x_t^T,        y_t = h_t^T C_t + D_h x_t

i.e. simple GLA with q = C, k = dt * B, v = x, g = dt * A and scale 1 (plus the D skip). The inputs:
x (b, T, H, P); dt (b, T, H), already through softplus (and any bias / clamp); A (H,) negative; B, C
(b, T, G, N) with G groups shared by H / G consecutive heads each (head h uses group h // (H / G), as in
mamba_ssm and transformers); D (H,) or None.

State layout: (b, H, N, P), the (K, V) convention of runner/ops. mamba_ssm and transformers store the
transpose, (b, H, P, N). Outputs are returned in x's dtype, the state in the compute dtype (float32, or float64
for float64 inputs).
"""
from __future__ import annotations

from typing import Optional

import torch

from .precision import full_precision
from .simple_gla import chunk_simple_gla, recurrent_simple_gla


def _map(x, dt, A, B, C):
    """(x, dt, A, B, C) -> (q, k, v, g) of simple GLA."""
    if x.dim() != 4:
        raise ValueError(f"x must be (b, T, H, P); got {tuple(x.shape)}")
    b, T, H, P = x.shape
    if dt.shape != (b, T, H):
        raise ValueError(f"dt must be (b, T, H) = {(b, T, H)}; got {tuple(dt.shape)}")
    if A.shape != (H,):
        raise ValueError(f"A must be (H,) = ({H},); got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, T) or C.shape != B.shape:
        raise ValueError(f"B and C must both be (b, T, G, N) with b={b}, T={T}; got {tuple(B.shape)}, {tuple(C.shape)}")
    G = B.shape[2]
    if H % G:
        raise ValueError(f"the number of groups G={G} must divide the number of heads H={H}")
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dt = dt.to(cdt)
    C = C.to(cdt)
    if G == 1:                                                           # one group: broadcast views, no copies
        B, C = B.expand(b, T, H, B.shape[-1]), C.expand(b, T, H, C.shape[-1])
    elif G != H:
        B = B.repeat_interleave(H // G, dim=2)                           # (b, T, H, N)
        C = C.repeat_interleave(H // G, dim=2)
    k = B.to(cdt) * dt.unsqueeze(-1)                                     # (b, T, H, N): dt_t B_t
    g = dt * A.to(cdt)                                                   # (b, T, H): log decay, <= 0
    return C, k, x, g


def _skip(y, x, D):
    if D is None:
        return y
    return (y.to(torch.promote_types(y.dtype, D.dtype)) + x * D[:, None]).to(x.dtype)


@full_precision
def recurrent_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
):
    """One step at a time (module docstring for the shapes). Returns (y (b, T, H, P), state (b, H, N, P) or None)."""
    q, k, v, g = _map(x, dt, A, B, C)
    y, S = recurrent_simple_gla(q, k, v, g, 1.0, initial_state, output_final_state)
    return _skip(y, x, D), S


@full_precision
def chunk_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
):
    """Chunked form; same arguments and results as :func:`recurrent_ssd`."""
    q, k, v, g = _map(x, dt, A, B, C)
    y, S = chunk_simple_gla(q, k, v, g, 1.0, initial_state, output_final_state, chunk_size)
    return _skip(y, x, D), S
