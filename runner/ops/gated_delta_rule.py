"""The gated delta rule (Gated DeltaNet, Yang, Kautz & Hatamizadeh, ICLR 2025; the linear layer of Qwen3-Next).

Per head, with state S of shape (K, V):

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,        o_t = S_t^T (scale * q_t)

Two forms with the same signature and results:

* :func:`recurrent_gated_delta_rule`: one token at a time, the obviously correct reference (and the cheap path
  for decoding a few tokens).
* :func:`chunk_gated_delta_rule`: the chunked parallel form. Inside a chunk of C steps, with d the cumulative log
  decay from the chunk start and Gamma_ij = exp(d_i - d_j) (i >= j, masked before the exp), the UT transform
  T = (I + strictly_lower(diag(beta) K K^T * Gamma))^-1 gives the pseudo-values U_new = U - W S_0 with
  U = T diag(beta) V and W = T diag(beta) (K * exp(d)). Substituting into the chunk's output and end state:

      O     = (Q * exp(d) - P W) S_0 + P U,          P = tril(Q K^T * Gamma)   (diagonal included)
      S_end = (exp(d_C) I - Kc^T W) S_0 + Kc^T U,    Kc = K * exp(d_C - d)

  so every chunk's terms (P, U, W, the K x K transition A and the K x V input B) come from batched matmuls and
  one batched triangular solve, and the only sequential work is the state scan S <- A S + B, one small matmul
  per chunk; each chunk's outputs then take two batched matmuls.

Speed notes (CPU). The chunks are processed in groups (all matmuls batched over the group's chunks and heads),
the group sized so its (chunks, B*H, C, C) tensors stay in the CPU caches; this was about 1.5x faster than one
batch over all chunks at T=8192. The backward is written by hand (``_ChunkGatedDeltaRule``): one reversed pass
over the groups with the mirror-image scan G <- A^T G + Qs^T dO, reusing the forward's T = (I + L)^-1 so no
triangular solve is needed backwards. The pairwise exponents d_i - d_j are clamped to <= 0 before the exp (the
masked upper triangle never overflows, so strong decays give finite gradients), and every exponent is floored at
-60 (-600 in fp64): exp(-60) ~ 1e-26 is zero for all purposes, while true underflowing values are denormal
numbers, which made exp() and the matmuls tens of times slower.

Conventions (runner/ops): tensors are (batch, time, heads, dim); ``g`` is the per-step log decay (<= 0);
``beta`` in (0, 1); ``scale=None`` means K**-0.5; ``initial_state`` is (B, HV, K, V). Any length T works (the
chunked form pads with identity steps). Computation runs in float32 for float32/bfloat16/float16 inputs and in
float64 for float64 inputs; outputs are returned in the input dtype, the final state in the compute dtype.
The value heads HV may be a multiple of the query/key heads H: each q/k head then serves HV // H consecutive
value heads (Qwen3-Next's grouping); ``g`` and ``beta`` are per value head.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .precision import full_precision


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel):
    """Shared argument checks, dtype promotion, q/k head repetition, l2norm and scaling."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, T, H, K); got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"v must be (B, T, HV, V) with B={B}, T={T}; got {tuple(v.shape)}")
    HV = v.shape[2]
    if HV % H:
        raise ValueError(f"the number of value heads ({HV}) must be a multiple of the q/k heads ({H})")
    for name, t in (("g", g), ("beta", beta)):
        if t.shape != (B, T, HV):
            raise ValueError(f"{name} must be (B, T, HV) = {(B, T, HV)}; got {tuple(t.shape)}")
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    if initial_state is not None and initial_state.shape != (B, HV, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, HV, K, V) = {(B, HV, K, v.shape[-1])}; "
                         f"got {tuple(initial_state.shape)}")
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    if HV != H:
        q = q.repeat_interleave(HV // H, dim=2)
        k = k.repeat_interleave(HV // H, dim=2)
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    q = q * (K ** -0.5 if scale is None else scale)
    s0 = None if initial_state is None else initial_state.to(dt)
    return q, k, v, g, beta, s0


@full_precision
def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
):
    """One step at a time. q, k (B, T, H, K); v (B, T, HV, V); g, beta (B, T, HV).
    Returns (o (B, T, HV, V), final state (B, HV, K, V) or None)."""
    out_dtype = v.dtype
    q, k, v, g, beta, S = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    B, T, HV, K = q.shape
    if S is None:
        S = q.new_zeros(B, HV, K, v.shape[-1])  # (B, HV, K, V)
    alpha = g.exp()
    outs = []
    for t in range(T):
        kt, vt, qt = k[:, t], v[:, t], q[:, t]  # (B, HV, K), (B, HV, V), (B, HV, K)
        S = S * alpha[:, t, :, None, None]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)  # what the decayed state already returns for k_t
        delta = beta[:, t, :, None] * (vt - pred)  # (B, HV, V)
        S = S + kt[..., :, None] * delta[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, HV, v.shape[-1])
    return o.to(out_dtype), (S if output_final_state else None)


def _exp_floor(dtype: torch.dtype) -> float:
    """Exponents are clamped from below at this value before exp(): exp(-60) ~ 1e-26 (float32) and exp(-600)
    ~ 1e-261 (float64) are zero for every practical purpose, but unlike the true values they are not denormal
    numbers, which the CPU handles tens of times more slowly."""
    return -600.0 if dtype == torch.float64 else -60.0


# chunks are processed in groups so that each group's (chunks, B*H, C, C) tensors stay in the CPU caches
_GROUP_ELEMS = 1 << 17


def _group_size(BH: int, C: int, D: int) -> int:
    return max(1, _GROUP_ELEMS // (BH * C * max(C, D)))


def _decays(d: torch.Tensor, lo: float, causal: torch.Tensor):
    """From the cumulative log decay d (n, BH, C): E = exp(d), Ec = exp(d_C - d), e = exp(d_C) and
    Gamma_ij = exp(d_i - d_j) (i >= j, else 0). Exponents are floored at lo before the exp, and the pairwise
    differences capped at 0 (the masked upper triangle would otherwise overflow)."""
    d_end = d[..., -1:]
    E = d.clamp(min=lo).exp()  # (n, BH, C) decay from the chunk start to each step
    Ec = (d_end - d).clamp_(min=lo).exp_()  # (n, BH, C) decay from each step to the chunk end
    e = d_end.clamp(min=lo).exp()  # (n, BH, 1) decay of the whole chunk
    gamma = (d[..., :, None] - d[..., None, :]).clamp_(lo, 0.0).exp_().mul_(causal)  # (n, BH, C, C)
    return E, Ec, e, gamma


def _f3(x):
    """(n, BH, a, b) -> (n * BH, a, b) as a view (an error, never a silent copy, for in-place baddbmm_)."""
    return x.view(-1, *x.shape[2:])


def _chunk_forward(q, k, v, g, beta, s0, keep: bool):
    """Forward of the chunked form on chunk-major tensors: q, k (N, BH, C, K) with q already scaled;
    v (N, BH, C, V); g, beta (N, BH, C); s0 (BH, K, V) or None. Returns o (N, BH, C, V), the final state
    (BH, K, V) and, if ``keep``, the per-chunk tensors the backward needs (else None).

    Per chunk (names as in the module docstring): L = (kb k^T) * Gamma with kb = beta k, T = (I + L)^-1,
    W = T (kb E), U = T (beta v), P = (q k^T) * Gamma, Qs = q E - P W, kc = k Ec, A = e I - kc^T W,
    B = kc^T U; S_{n+1} = A_n S_n + B_n; o = Qs S_n + P U. The work goes one group of chunks at a time, all
    matmuls batched over the group's chunks and heads, so that the group's tensors stay in the CPU caches."""
    N, BH, C, K = q.shape
    V = v.shape[-1]
    dt, dev = q.dtype, q.device
    lo = _exp_floor(dt)
    causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
    eye_c = torch.eye(C, dtype=dt, device=dev)
    d = g.cumsum(-1)  # (N, BH, C) cumulative log decay from each chunk's start, non-increasing
    G = _group_size(BH, C, max(K, V))
    shapes = dict(L=(C, C), Tm=(C, C), P=(C, C), W=(C, K), Qs=(C, K), kc=(C, K), U=(C, V), A=(K, K), S0=(K, V))
    full = {name: q.new_empty(N, BH, *sh) for name, sh in shapes.items()} if keep else None
    o = q.new_empty(N, BH, C, V)
    S = q.new_zeros(BH, K, V) if s0 is None else s0
    for a in range(0, N, G):
        s = slice(a, min(a + G, N))
        n = s.stop - a
        if keep:
            L, Tm, P, W, Qs, kc, U, A, S0 = (full[name][s] for name in shapes)
        else:
            L, Tm, P, W, Qs, kc, U, A, S0 = (q.new_empty(n, BH, *sh) for sh in shapes.values())
        gq, gk, gv, gb = q[s], k[s], v[s], beta[s, ..., None]
        E, Ec, e, gamma = _decays(d[s], lo, causal)
        kb = gk * gb
        torch.matmul(kb, gk.mT, out=L).mul_(gamma)  # only its strictly lower part is read
        torch.linalg.solve_triangular(L, eye_c.expand_as(L), upper=False, unitriangular=True, out=Tm)
        torch.matmul(Tm, kb.mul_(E[..., None]), out=W)
        torch.matmul(Tm, gv * gb, out=U)
        torch.matmul(gq, gk.mT, out=P).mul_(gamma)
        torch.mul(gq, E[..., None], out=Qs)
        _f3(Qs).baddbmm_(_f3(P), _f3(W), alpha=-1)
        torch.mul(gk, Ec[..., None], out=kc)
        torch.matmul(kc.mT, W, out=A).neg_().diagonal(dim1=-2, dim2=-1).add_(e)
        Bn = torch.matmul(kc.mT, U)  # (n, BH, K, V) chunk inputs
        # the only sequential part: S_{n+1} = A_n S_n + B_n, one small matmul per chunk
        for i in range(n):
            S0[i].copy_(S)
            S = torch.baddbmm(Bn[i], A[i], S)
        torch.matmul(P, U, out=o[s])
        _f3(o[s]).baddbmm_(_f3(Qs), _f3(S0))
    saved = (d,) + tuple(full.values()) if keep else None
    return o, S, saved


class _ChunkGatedDeltaRule(torch.autograd.Function):
    """:func:`_chunk_forward` with a hand-written backward (one reversed pass over the groups of chunks)."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, s0):
        o, S, saved = _chunk_forward(q, k, v, g, beta, s0, keep=True)
        ctx.save_for_backward(q, k, v, beta, *saved)
        ctx.has_s0 = s0 is not None
        return o, S

    @staticmethod
    @once_differentiable
    @full_precision  # a backward run inside an autocast region keeps the float32 math too
    def backward(ctx, do, dS):
        q, k, v, beta, d, L, Tm, P, W, Qs, kc, U, A, S0 = ctx.saved_tensors
        N, BH, C, K = q.shape
        V = v.shape[-1]
        lo = _exp_floor(q.dtype)
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        do = do.contiguous()
        # contiguous buffers: their group slices are written in place through flattened views
        dq, dk, dv, dg, dbeta = (t.new_empty(t.shape) for t in (q, k, v, d, beta))
        Gc = q.new_zeros(BH, K, V) if dS is None else dS.to(q.dtype).clone()  # dLoss/dS at the current point
        G = _group_size(BH, C, max(K, V))
        starts = list(range(0, N, G))
        for a in reversed(starts):
            s = slice(a, min(a + G, N))
            n = s.stop - a
            gq, gk, gv, gb, gdo = q[s], k[s], v[s], beta[s, ..., None], do[s]
            E, Ec, e, gamma = _decays(d[s], lo, causal)
            kb = gk * gb
            # reverse scan: dB[i] = dLoss/dS at the end of chunk a+i; the chunk-start state feeds A S + B and Qs S
            QdO = torch.matmul(Qs[s].mT, gdo)  # (n, BH, K, V)
            dB = q.new_empty(n, BH, K, V)
            for i in range(n - 1, -1, -1):
                dB[i].copy_(Gc)
                Gc = torch.baddbmm(QdO[i], A[a + i].mT, Gc)
            dA = torch.matmul(dB, S0[s].mT)  # (n, BH, K, K)
            dQs = torch.matmul(gdo, S0[s].mT)  # (n, BH, C, K)
            dP = torch.matmul(gdo, U[s].mT)  # (n, BH, C, C)
            _f3(dP).baddbmm_(_f3(dQs), _f3(W[s]).mT, alpha=-1)
            dU = torch.matmul(P[s].mT, gdo)  # (n, BH, C, V)
            _f3(dU).baddbmm_(_f3(kc[s]), _f3(dB))
            nW = torch.matmul(P[s].mT, dQs)  # minus dLoss/dW
            _f3(nW).baddbmm_(_f3(kc[s]), _f3(dA))
            dkc = torch.matmul(U[s], dB.mT)  # (n, BH, C, K)
            _f3(dkc).baddbmm_(_f3(W[s]), _f3(dA).mT, alpha=-1)
            de = dA.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # (n, BH, 1)
            # through W = T (kb E), U = T (beta v), T = (I + L)^-1
            nRW = torch.matmul(Tm[s].mT, nW)  # minus dLoss/d(kb E)
            dRU = torch.matmul(Tm[s].mT, dU)  # dLoss/d(beta v)
            dL = torch.matmul(nRW, W[s].mT)
            _f3(dL).baddbmm_(_f3(dRU), _f3(U[s]).mT, alpha=-1)
            dL.tril_(-1)  # only the strictly lower part of L was used
            # L = (kb k^T) * gamma, P = (q k^T) * gamma; Hm = dLoss/dgamma * gamma
            Hm = (dL * L[s]).addcmul_(dP, P[s])
            dM, dN = dL.mul_(gamma), dP.mul_(gamma)
            dkb = torch.matmul(dM, gk).addcmul_(nRW, E[..., None], value=-1)
            torch.matmul(dN, gk, out=dq[s]).addcmul_(dQs, E[..., None])
            gdk = torch.matmul(dM.mT, kb, out=dk[s])
            _f3(gdk).baddbmm_(_f3(dN).mT, _f3(gq))
            gdk.addcmul_(dkc, Ec[..., None]).addcmul_(dkb, gb)
            # the log decay. With gamma_ij = exp(d_i - d_j), E = exp(d), e = exp(d_C) and d = cumsum(g):
            # dg_t = sum_{i >= t > j} Hm_ij + sum_{i >= t} dE_i E_i + de e + sum_{i < t} F_i, where
            # F_i = dLoss/dEc_i Ec_i for Ec_i = exp(d_C - d_i). Written so that no O(1) terms cancel in float
            # (gamma_ii = 1 and Ec_C = 1 do not depend on g), which would swamp tiny gradients of strong decays.
            Hm.diagonal(dim1=-2, dim2=-1).zero_()
            dd = Hm.sum(-1) - Hm.sum(-2) + ((dQs * gq).sum(-1) - (nRW * kb).sum(-1)) * E
            dd[..., -1] += (de * e).squeeze(-1)
            Fk = (dkc * kc[s]).sum(-1)  # (n, BH, C)
            torch.add(dd.flip(-1).cumsum(-1).flip(-1), F.pad(Fk[..., :-1].cumsum(-1), (1, 0)), out=dg[s])
            torch.mul(dRU, gb, out=dv[s])
            torch.add((dRU * gv).sum(-1), (dkb * gk).sum(-1), out=dbeta[s])
        return dq, dk, dv, dg, dbeta, (Gc if ctx.has_s0 else None)


@full_precision
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
):
    """Chunked parallel form; same arguments and results as :func:`recurrent_gated_delta_rule`.
    The backward is written by hand (no autograd graph through the chunk internals)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    q, k, v, g, beta, s0 = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    B, T, HV, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)  # a sequence shorter than one chunk is one chunk, unpadded
    if T == 0:
        final = (s0 if s0 is not None else q.new_zeros(B, HV, K, V)) if output_final_state else None
        return v.new_zeros(B, 0, HV, V).to(out_dtype), final
    N = -(-T // C)  # number of chunks
    pad = N * C - T
    if pad:  # padded steps are identities: g = 0, beta = 0, k = v = q = 0
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (F.pad(t, (0, 0, 0, pad)) for t in (g, beta))
    BH = B * HV

    def chunks(t):  # (B, N*C, HV, D) -> (N, B*HV, C, D), chunk-major so the scan reads contiguous slices
        return t.reshape(B, N, C, HV, -1).permute(1, 0, 3, 2, 4).reshape(N, BH, C, t.shape[-1]).contiguous()

    q, k, v = chunks(q), chunks(k), chunks(v)
    g = chunks(g.unsqueeze(-1)).squeeze(-1)  # (N, BH, C)
    beta = chunks(beta.unsqueeze(-1)).squeeze(-1)  # (N, BH, C)
    s0 = None if s0 is None else s0.reshape(BH, K, V)
    inputs = (q, k, v, g, beta) + (() if s0 is None else (s0,))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        o, S = _ChunkGatedDeltaRule.apply(q, k, v, g, beta, s0)
    else:
        o, S, _ = _chunk_forward(q, k, v, g, beta, s0, keep=False)
    o = o.reshape(N, B, HV, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, HV, V)[:, :T]
    final = S.reshape(B, HV, K, V) if output_final_state else None
    return o.to(out_dtype), final
