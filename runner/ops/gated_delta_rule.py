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
batch over all chunks at T=8192. The scans write each state straight into its buffer. The pairwise exponents
d_i - d_j are clamped to <= 0 before the exp (the masked upper triangle never overflows, so strong decays give
finite gradients), and every exponent is floored at -60 (-600 in fp64): exp(-60) ~ 1e-26 is zero for all
purposes, while true underflowing values are denormal numbers, which made exp() and the matmuls tens of times
slower.

The backward is written by hand (``_ChunkGatedDeltaRule``): one reversed pass over the groups with the
mirror-image scan G <- A^T G + Qs^T dO and the UT transform's gradient dL = -T^T dT T^T (no triangular solve
backwards). What the forward keeps for it is the inputs and one (K, V) start state per chunk; the backward
recomputes each group's factors (L, T, W, U, P, Qs, A) from them: fwd+bwd took 1.13x the time of keeping them
(B 2, H 4, D 64, T 2048 and 8192, 2-core CPU) for a third of the memory (``tests/test_ops_saved_memory.py``
measures the bound). ``keep_factors=True`` keeps the factors instead (nine chunk-sized tensors per chunk and
head, about three times the inputs): the faster backward when memory is no concern.

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

from .chunk_layout import ChunkLayout, l2norm
from .precision import full_precision


def _check(q, k, v, g, beta, initial_state):
    """The arguments' shapes, with a message naming what was expected."""
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
    if initial_state is not None and initial_state.shape != (B, HV, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, HV, K, V) = {(B, HV, K, v.shape[-1])}; "
                         f"got {tuple(initial_state.shape)}")


def _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel):
    """Shared argument checks, dtype promotion, q/k head repetition, l2norm and scaling."""
    _check(q, k, v, g, beta, initial_state)
    H, K, HV = q.shape[2], q.shape[3], v.shape[2]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    if HV != H:
        q = q.repeat_interleave(HV // H, dim=2)
        k = k.repeat_interleave(HV // H, dim=2)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
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


def _group_factors(q, k, v, beta, d, lo, causal, eye_c):
    """The intra-chunk factors of one group of chunks (names as in the module docstring), computed from the
    inputs alone: the forward uses them, and the backward recomputes them instead of keeping them.

    q, k (n, BH, C, K) with q scaled; v (n, BH, C, V); beta (n, BH, C, 1); d (n, BH, C) the cumulative log decay.
    Returns kb = beta k, L = (kb k^T) * Gamma (only its strictly lower part is used), T = (I + L)^-1,
    W = T (kb E), U = T (beta v), P = (q k^T) * Gamma, Qs = q E - P W, kc = k Ec and A = e I - kc^T W, all
    (n, BH, ., .), and the decays of :func:`_decays`. Every matmul is a separate (C x 64)-sized batched one: on
    CPU these ran faster than stacked operands ([P; L] = [q; kb] k^T, 128-wide) plus the copies stacking needs."""
    E, Ec, e, gamma = _decays(d, lo, causal)
    kb = k * beta
    L = torch.matmul(kb, k.mT).mul_(gamma)
    Tm = torch.linalg.solve_triangular(L, eye_c.expand_as(L), upper=False, unitriangular=True)
    W = torch.matmul(Tm, kb * E[..., None])
    U = torch.matmul(Tm, v * beta)
    P = torch.matmul(q, k.mT).mul_(gamma)
    Qs = torch.mul(q, E[..., None])
    _f3(Qs).baddbmm_(_f3(P), _f3(W), alpha=-1)
    kc = k * Ec[..., None]
    A = torch.matmul(kc.mT, W).neg_()
    A.diagonal(dim1=-2, dim2=-1).add_(e)
    return (E, Ec, e, gamma), (kb, L, Tm, W, U, P, Qs, kc, A)


def _chunk_forward(q, k, v, g, beta, s0, keep_states: bool, keep_factors: bool = False):
    """Forward of the chunked form on chunk-major tensors: q, k (N, BH, C, K) with q already scaled;
    v (N, BH, C, V); g, beta (N, BH, C); s0 (BH, K, V) or None. Returns o (N, BH, C, V), the final state
    (BH, K, V), the cumulative log decay d (N, BH, C) and, if ``keep_states``, every chunk's start state
    (N, BH, K, V) (else None): with the inputs, all the backward needs. With ``keep_factors`` also the list of
    every group's intra-chunk factors, so that the backward need not recompute them.

    Per chunk (names as in the module docstring): S_{n+1} = A_n S_n + B_n with B = kc^T U, o = Qs S_n + P U.
    The work goes one group of chunks at a time, all matmuls batched over the group's chunks and heads, so that
    the group's tensors stay in the CPU caches."""
    N, BH, C, K = q.shape
    V = v.shape[-1]
    dt, dev = q.dtype, q.device
    lo = _exp_floor(dt)
    causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
    eye_c = torch.eye(C, dtype=dt, device=dev)
    d = g.cumsum(-1)  # (N, BH, C) cumulative log decay from each chunk's start, non-increasing
    G = _group_size(BH, C, max(K, V))
    starts = q.new_empty(N, BH, K, V) if keep_states else None
    factors = [] if keep_factors else None
    o = q.new_empty(N, BH, C, V)
    S = q.new_zeros(BH, K, V) if s0 is None else s0
    for a in range(0, N, G):
        s = slice(a, min(a + G, N))
        S = _group_forward(q[s], k[s], v[s], beta[s, ..., None], d[s], S, starts[s] if keep_states else None, o[s],
                           lo, causal, eye_c, factors)
    return o, S, d, starts, factors


def _group_forward(gq, gk, gv, gb, gd, S, S0, og, lo, causal, eye_c, factors):
    """One group of :func:`_chunk_forward` (its chunks' inputs as in :func:`_group_factors`), from the state S at
    the group's start: writes the chunk-start states into S0 (n, BH, K, V; None: a scratch buffer) and the output
    into og (n, BH, C, V), appends the factors to ``factors`` unless it is None, and returns the state at the
    group's end. A function of its own so that a group's factors are freed before the next group's are made (see
    :func:`_group_backward`)."""
    n = gq.shape[0]
    if S0 is None:
        S0 = gq.new_empty(n, *S.shape)
    _, f = _group_factors(gq, gk, gv, gb, gd, lo, causal, eye_c)
    if factors is not None:
        factors.append(f)
    kb, L, Tm, W, U, P, Qs, kc, A = f
    Bn = torch.matmul(kc.mT, U)  # (n, BH, K, V) chunk inputs
    # the only sequential part: S_{n+1} = A_n S_n + B_n, one small matmul per chunk, written in place
    S0[0].copy_(S)
    for i in range(n - 1):
        torch.baddbmm(Bn[i], A[i], S0[i], out=S0[i + 1])
    S = torch.baddbmm(Bn[n - 1], A[n - 1], S0[n - 1])
    torch.matmul(P, U, out=og)
    _f3(og).baddbmm_(_f3(Qs), _f3(S0))
    return S


N_FACTORS = 9  # tensors per group in _group_factors' second tuple


def _chunk_backward(q, k, v, beta, d, starts, kept, do, dS):
    """The backward of :func:`_chunk_forward` on chunk-major tensors: one reversed pass over the groups of chunks
    (:func:`_group_backward`), each group's factors recomputed (or taken from ``kept``, the forward's with
    ``keep_factors``). Returns the gradients of q, k, v, g, beta (chunk-major) and of the initial state."""
    N, BH, C, K = q.shape
    V = v.shape[-1]
    lo = _exp_floor(q.dtype)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    eye_c = torch.eye(C, dtype=q.dtype, device=q.device)
    do = do.contiguous()
    # contiguous buffers: their group slices are written in place through flattened views
    dq, dk, dv, dg, dbeta = (t.new_empty(t.shape) for t in (q, k, v, d, beta))
    Gc = q.new_zeros(BH, K, V) if dS is None else dS.to(q.dtype).clone()  # dLoss/dS at the current point
    G = _group_size(BH, C, max(K, V))
    for a in reversed(range(0, N, G)):
        s = slice(a, min(a + G, N))
        j = N_FACTORS * (a // G)
        Gc = _group_backward(q[s], k[s], v[s], beta[s, ..., None], d[s], do[s], starts[s],
                             kept[j:j + N_FACTORS] if kept else None, Gc, lo, causal, eye_c,
                             (dq[s], dk[s], dv[s], dg[s], dbeta[s]))
    return dq, dk, dv, dg, dbeta, Gc


def _group_backward(gq, gk, gv, gb, gd, gdo, S0, kept, Gc, lo, causal, eye_c, out):
    """One group of :func:`_chunk_backward`: q, k (n, BH, C, K), v and dO (n, BH, C, V), beta (n, BH, C, 1), the
    cumulative log decay (n, BH, C) and the chunk-start states (n, BH, K, V) of its chunks, the forward's factors
    or None (recomputed), and Gc = dLoss/dS at the group's end. Writes the group's gradients of q, k, v, g, beta
    into ``out`` (slices of the whole buffers) and returns dLoss/dS at the group's start. A function of its own
    so that the group's intermediates are freed on return, before the next group's are made: as a loop body's
    locals they stayed bound until rebound, two groups' worth at once (5.5 MB of the small model's 114 MB
    training-step peak at n = 2,048)."""
    n, BH, _, K = gq.shape
    V = gv.shape[-1]
    dq, dk, dv, dg, dbeta = out
    if kept is not None:  # keep_factors: the forward's
        E, Ec, e, gamma = _decays(gd, lo, causal)
        kb, L, Tm, W, U, P, Qs, kc, A = kept
    else:
        (E, Ec, e, gamma), (kb, L, Tm, W, U, P, Qs, kc, A) = _group_factors(gq, gk, gv, gb, gd, lo, causal, eye_c)
    # reverse scan: dB[i] = dLoss/dS at the end of the group's chunk i; its start state feeds A S + B and Qs S
    QdO = torch.matmul(Qs.mT, gdo)  # (n, BH, K, V)
    dB = gq.new_empty(n, BH, K, V)
    dB[n - 1].copy_(Gc)
    for i in range(n - 1, 0, -1):
        torch.baddbmm(QdO[i], A[i].mT, dB[i], out=dB[i - 1])
    Gc = torch.baddbmm(QdO[0], A[0].mT, dB[0])
    dA = torch.matmul(dB, S0.mT)  # (n, BH, K, K)
    dQs = torch.matmul(gdo, S0.mT)  # (n, BH, C, K)
    dP = torch.matmul(gdo, U.mT)  # (n, BH, C, C)
    _f3(dP).baddbmm_(_f3(dQs), _f3(W).mT, alpha=-1)
    dU = torch.matmul(P.mT, gdo)  # (n, BH, C, V)
    _f3(dU).baddbmm_(_f3(kc), _f3(dB))
    nW = torch.matmul(P.mT, dQs)  # minus dLoss/dW
    _f3(nW).baddbmm_(_f3(kc), _f3(dA))
    dkc = torch.matmul(U, dB.mT)  # (n, BH, C, K)
    _f3(dkc).baddbmm_(_f3(W), _f3(dA).mT, alpha=-1)
    de = dA.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # (n, BH, 1)
    # through W = T (kb E), U = T (beta v), T = (I + L)^-1: dL = -T^T dT T^T
    nRW = torch.matmul(Tm.mT, nW)  # minus dLoss/d(kb E)
    dRU = torch.matmul(Tm.mT, dU)  # dLoss/d(beta v)
    dL = torch.matmul(nRW, W.mT)
    _f3(dL).baddbmm_(_f3(dRU), _f3(U).mT, alpha=-1)
    dL.tril_(-1)  # only the strictly lower part of L was used
    # L = (kb k^T) * gamma, P = (q k^T) * gamma; Hm = dLoss/dgamma * gamma
    Hm = (dL * L).addcmul_(dP, P)
    dM, dN = dL.mul_(gamma), dP.mul_(gamma)
    dkb = torch.matmul(dM, gk).addcmul_(nRW, E[..., None], value=-1)
    torch.matmul(dN, gk, out=dq).addcmul_(dQs, E[..., None])
    gdk = torch.matmul(dM.mT, kb, out=dk)
    _f3(gdk).baddbmm_(_f3(dN).mT, _f3(gq))
    gdk.addcmul_(dkc, Ec[..., None]).addcmul_(dkb, gb)
    # the log decay. With gamma_ij = exp(d_i - d_j), E = exp(d), e = exp(d_C) and d = cumsum(g):
    # dg_t = sum_{i >= t > j} Hm_ij + sum_{i >= t} dE_i E_i + de e + sum_{i < t} F_i, where
    # F_i = dLoss/dEc_i Ec_i for Ec_i = exp(d_C - d_i). Written so that no O(1) terms cancel in float
    # (gamma_ii = 1 and Ec_C = 1 do not depend on g), which would swamp tiny gradients of strong decays.
    Hm.diagonal(dim1=-2, dim2=-1).zero_()
    dd = Hm.sum(-1) - Hm.sum(-2) + ((dQs * gq).sum(-1) - (nRW * kb).sum(-1)) * E
    dd[..., -1] += (de * e).squeeze(-1)
    Fk = (dkc * kc).sum(-1)  # (n, BH, C)
    torch.add(dd.flip(-1).cumsum(-1).flip(-1), F.pad(Fk[..., :-1].cumsum(-1), (1, 0)), out=dg)
    torch.mul(dRU, gb, out=dv)
    torch.add((dRU * gv).sum(-1), (dkb * gk).sum(-1), out=dbeta)
    return Gc


class _ChunkGatedDeltaRule(torch.autograd.Function):
    """The chunked form with a hand-written backward, on the caller's tensors (runner/ops/chunk_layout.py). What
    it keeps for the backward is the caller's q, k, v, g, beta themselves (typically views of one activation, kept
    once) and one (K, V) start state per chunk; the backward recomputes the prepared chunk-major inputs and, group
    by group, the intra-chunk factors (or, with ``keep_factors``, keeps those as well)."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, s0, keep_factors, lay):
        qc, kc, vc, gc, bc = lay.prepare(q, k, v, g, beta)
        s0c = None if s0 is None else s0.to(lay.dt).reshape(lay.B * lay.HV, lay.K, lay.V)
        o, S, d, starts, factors = _chunk_forward(qc, kc, vc, gc, bc, s0c, keep_states=True,
                                                  keep_factors=keep_factors)
        ctx.save_for_backward(q, k, v, g, beta, starts, *(t for group in factors or () for t in group))
        ctx.lay, ctx.has_s0, ctx.s0_dtype = lay, s0 is not None, None if s0 is None else s0.dtype
        return lay.unchunks(o), S.reshape(lay.B, lay.HV, lay.K, lay.V)

    @staticmethod
    @once_differentiable
    @full_precision  # a backward run inside an autocast region keeps the float32 math too
    def backward(ctx, do, dS):
        q, k, v, g, beta, starts, *kept = ctx.saved_tensors
        lay = ctx.lay
        qc, kc, vc, gc, bc = lay.prepare(q, k, v, g, beta)
        dSc = None if dS is None else dS.reshape(lay.B * lay.HV, lay.K, lay.V)
        dq, dk, dv, dg, dbeta, ds0 = _chunk_backward(qc, kc, vc, bc, gc.cumsum(-1), starts, kept, lay.chunks(do),
                                                     dSc)
        dq = lay.qk_grad(dq.mul_(lay.scale), q)
        dk = lay.qk_grad(dk, k)
        dv, dg, dbeta = lay.grad(dv, v), lay.grad(dg, g), lay.grad(dbeta, beta)
        ds0 = ds0.reshape(lay.B, lay.HV, lay.K, lay.V).to(ctx.s0_dtype) if ctx.has_s0 else None
        return dq, dk, dv, dg, dbeta, ds0, None, None


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
    keep_factors: bool = False,
):
    """Chunked parallel form; same arguments and results as :func:`recurrent_gated_delta_rule`.
    The backward is written by hand (no autograd graph through the chunk internals). It recomputes the
    intra-chunk factors from the inputs and the kept chunk start states; ``keep_factors=True`` keeps them from the
    forward instead: a faster backward for several times the memory (module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check(q, k, v, g, beta, initial_state)
    out_dtype = v.dtype
    lay = ChunkLayout(q, v, scale, use_qk_l2norm_in_kernel, chunk_size)
    if lay.T == 0:
        s0 = None if initial_state is None else initial_state.to(lay.dt)
        final = (s0 if s0 is not None else q.new_zeros(lay.B, lay.HV, lay.K, lay.V, dtype=lay.dt)) \
            if output_final_state else None
        return v.new_zeros(lay.B, 0, lay.HV, lay.V), final
    inputs = (q, k, v, g, beta) + (() if initial_state is None else (initial_state,))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        o, S = _ChunkGatedDeltaRule.apply(q, k, v, g, beta, initial_state, keep_factors, lay)
    else:
        qc, kc, vc, gc, bc = lay.prepare(q, k, v, g, beta)
        s0 = None if initial_state is None else initial_state.to(lay.dt).reshape(lay.B * lay.HV, lay.K, lay.V)
        o, S, _, _, _ = _chunk_forward(qc, kc, vc, gc, bc, s0, keep_states=False)
        o, S = lay.unchunks(o), S.reshape(lay.B, lay.HV, lay.K, lay.V)
    return o.to(out_dtype), (S if output_final_state else None)
