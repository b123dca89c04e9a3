"""The UT transform's inverse, T = (I + L)^-1 for a strictly lower triangular L, by blocks.

The chunked delta-rule ops need T for every chunk (C x C, C = 64 by default). A batched triangular solve against
the identity (``torch.linalg.solve_triangular``) does C^3 multiply-adds per matrix, a third of them on zeros, and
runs slowly batched on a CPU. Block inversion instead: with the chunk halved into L (first) and R (second)
halves,

    (I + L)^-1 = [[T_L, 0], [T_RL, T_R]],        T_RL = -T_R L_RL T_L,

where T_L and T_R are the halves' own inverses. Applied bottom-up, every level is two batched matmuls over all
the blocks of that size; the smallest blocks (``base`` wide) are inverted by the triangular solve, where it is
cheap. This is exact algebra (the same result up to float rounding). For 32 matrices of 64 x 64 on a 2-core CPU
it took 0.34-0.59 ms against the solve's 0.71-0.79 (blocks of 16; noisy machine), and the gated delta rule's
fwd+bwd 0.93-0.98x the time with the solve (T 8192, B 2, H 4, D 64, one and two threads, interleaved runs).

:func:`off_block` gives the views of the blocks at one level, for this and for the KDA op, which assembles its
blocks level by level (runner/ops/kda.py).
"""
from __future__ import annotations

import torch


def off_block(x: torch.Tensor, s: int, rows: int = 1, cols: int = 0) -> torch.Tensor:
    """(Bt, C, C) -> (Bt, M, s, s) view of the blocks (rows R, cols L) of the 2s x 2s diagonal blocks, M = C / 2s
    (rows = cols = 0: their L diagonal blocks, rows = cols = 1: their R ones)."""
    Bt, C = x.shape[0], x.shape[-1]
    st = x.stride()
    return x.as_strided((Bt, C // (2 * s), s, s), (st[0], 2 * s * (st[1] + st[2]), st[1], st[2]),
                        x.storage_offset() + s * (rows * st[1] + cols * st[2]))


def unit_lower_inverse(L: torch.Tensor, base: int = 16) -> torch.Tensor:
    """(I + L)^-1 for L (..., C, C) of which only the strictly lower triangle is read (its diagonal and upper
    part are ignored, as ``solve_triangular(..., unitriangular=True)`` does). Returns a new contiguous tensor of
    L's shape, lower triangular with a unit diagonal. By blocks (module docstring) when C is ``base`` (or less)
    times a power of two, else by the triangular solve."""
    C = L.shape[-1]
    b = min(base, C)
    m = C // b
    Lf = L.reshape(-1, C, C)
    Bt = Lf.shape[0]
    if C % b or m & (m - 1):
        eye = torch.eye(C, dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(Lf, eye.expand_as(Lf), upper=False,
                                           unitriangular=True).reshape(L.shape).contiguous()
    T = Lf.new_zeros(Bt, C, C)
    diag = Lf.view(Bt, m, b, m, b).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)  # (Bt, m, b, b) diagonal blocks
    eye = torch.eye(b, dtype=L.dtype, device=L.device)
    Td = torch.linalg.solve_triangular(diag, eye.expand_as(diag), upper=False, unitriangular=True)
    T.view(Bt, m, b, m, b).diagonal(dim1=1, dim2=3).copy_(Td.permute(0, 2, 3, 1))
    s = b
    while s < C:
        M = C // (2 * s)
        tR = off_block(T, s, 1, 1).reshape(Bt * M, s, s)
        tL = off_block(T, s, 0, 0).reshape(Bt * M, s, s)
        lRL = off_block(Lf, s).reshape(Bt * M, s, s)
        torch.neg(torch.bmm(torch.bmm(tR, lRL), tL).view(Bt, M, s, s), out=off_block(T, s))
        s *= 2
    return T.view(L.shape)
