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
batch over all chunks at T=8192. Operands that share a factor are stacked so that each pair is one matmul:
[P; L] = ([q; kb] k^T) * Gamma and [W | U] = T [kb E | beta v]. The pairwise exponents d_i - d_j are clamped
to <= 0 before the exp (the masked upper triangle never overflows, so strong decays give finite gradients), and
every exponent is floored at -60 (-600 in fp64): exp(-60) ~ 1e-26 is zero for all purposes, while true
underflowing values are denormal numbers, which made exp() and the matmuls tens of times slower.

The backward is written by hand (``_ChunkGatedDeltaRule``): one reversed pass over the groups with the
mirror-image scan G <- A^T G + Qs^T dO and the UT transform's gradient dL = -T^T dT T^T (no triangular solve
backwards). What the forward keeps for it is the inputs and one (K, V) start state per chunk; the backward
recomputes each group's factors (P, L, T, W, U, Qs, A) from them, about 30% more arithmetic than the whole
fwd+bwd of keeping them, for a third of the memory (``tests/test_ops_saved_memory.py`` measures the bound).
``keep_factors=True`` keeps the factors instead (about 10 chunk-sized tensors per chunk and head; several times
the inputs): the faster backward when memory is no concern.

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


def _group_factors(q, k, v, beta, d, lo, causal, eye_c):
    """The intra-chunk factors of one group of chunks (names as in the module docstring), computed from the
    inputs alone; the forward uses them and the backward recomputes them instead of keeping them.

    q, k (n, BH, C, K) with q scaled; v (n, BH, C, V); beta (n, BH, C, 1); d (n, BH, C) the cumulative log decay.
    Returns E, Ec, e, gamma (see :func:`_decays`), QK = [q; kb] stacked along time (n, BH, 2C, K) with kb = beta k,
    PL = [P; L] = (QK k^T) * gamma (n, BH, 2C, C) (only the strictly lower part of L is used), T = (I + L)^-1,
    WU = [W | U] = T [kb * E | beta v] (n, BH, C, K + V) and kc = k * Ec. Stacking the operands that share a
    factor (P and L share k^T, W and U share T) makes fewer, larger batched matmuls."""
    n, BH, C, K = q.shape
    E, Ec, e, gamma = _decays(d, lo, causal)
    QK = torch.cat([q, k * beta], -2)
    PL = torch.matmul(QK, k.mT)
    PL.view(n, BH, 2, C, C).mul_(gamma.unsqueeze(2))
    # (a strided view of L here takes a path of solve_triangular that is hundreds of times slower: copy it first)
    Tm = torch.linalg.solve_triangular(PL[..., C:, :].contiguous(), eye_c.expand(n, BH, C, C), upper=False,
                                       unitriangular=True)
    WU = torch.matmul(Tm, torch.cat([QK[..., C:, :] * E[..., None], v * beta], -1))
    kc = k * Ec[..., None]
    return E, Ec, e, gamma, QK, PL, Tm, WU, kc


def _transition(kc, W, e):
    """A = e I - kc^T W (n, BH, K, K): the chunk's map of its start state to its end state's S_0 part."""
    A = torch.matmul(kc.mT, W).neg_()
    A.diagonal(dim1=-2, dim2=-1).add_(e)
    return A


def _chunk_forward(q, k, v, g, beta, s0, keep_states: bool, keep_factors: bool = False):
    """Forward of the chunked form on chunk-major tensors: q, k (N, BH, C, K) with q already scaled;
    v (N, BH, C, V); g, beta (N, BH, C); s0 (BH, K, V) or None. Returns o (N, BH, C, V), the final state
    (BH, K, V), the cumulative log decay d (N, BH, C) and, if ``keep_states``, every chunk's start state
    (N, BH, K, V) (else None): with the inputs, all the backward needs. With ``keep_factors`` also the list of
    every group's intra-chunk factors, so that the backward need not recompute them.

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
    starts = q.new_empty(N, BH, K, V) if keep_states else None
    factors = [] if keep_factors else None
    o = q.new_empty(N, BH, C, V)
    S = q.new_zeros(BH, K, V) if s0 is None else s0
    for a in range(0, N, G):
        s = slice(a, min(a + G, N))
        n = s.stop - a
        gq = q[s]
        E, Ec, e, gamma, QK, PL, Tm, WU, kc = _group_factors(gq, k[s], v[s], beta[s, ..., None], d[s], lo, causal,
                                                             eye_c)
        PWU = torch.matmul(PL[..., :C, :], WU)  # [P W | P U]
        Qs = torch.mul(gq, E[..., None]).sub_(PWU[..., :K])
        AB = torch.matmul(kc.mT, WU)  # [kc^T W | kc^T U]
        A = AB[..., :K].neg_()
        A.diagonal(dim1=-2, dim2=-1).add_(e)
        Bn = AB[..., K:]
        if keep_factors:
            factors.append((QK, PL, Tm, WU, kc, Qs, A))
        S0 = starts[s] if keep_states else q.new_empty(n, BH, K, V)
        # the only sequential part: S_{n+1} = A_n S_n + B_n, one small matmul per chunk
        for i in range(n):
            S0[i].copy_(S)
            S = torch.baddbmm(Bn[i], A[i], S)
        torch.matmul(Qs, S0, out=o[s]).add_(PWU[..., K:])
    return o, S, d, starts, factors


class _ChunkGatedDeltaRule(torch.autograd.Function):
    """:func:`_chunk_forward` with a hand-written backward: one reversed pass over the groups of chunks that
    recomputes each group's intra-chunk factors from the inputs and the chunk start states, so that what is kept
    between forward and backward is the inputs plus one (K, V) state per chunk."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, s0, keep_factors):
        o, S, d, starts, factors = _chunk_forward(q, k, v, g, beta, s0, keep_states=True, keep_factors=keep_factors)
        ctx.save_for_backward(q, k, v, beta, d, starts, *(t for group in factors or () for t in group))
        ctx.has_s0 = s0 is not None
        return o, S

    @staticmethod
    @once_differentiable
    @full_precision  # a backward run inside an autocast region keeps the float32 math too
    def backward(ctx, do, dS):
        q, k, v, beta, d, starts, *kept = ctx.saved_tensors
        N, BH, C, K = q.shape
        V = v.shape[-1]
        lo = _exp_floor(q.dtype)
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        eye_c = torch.eye(C, dtype=q.dtype, device=q.device)
        do = do.contiguous()
        dq, dk, dv, dg, dbeta = (t.new_empty(t.shape) for t in (q, k, v, d, beta))
        Gc = q.new_zeros(BH, K, V) if dS is None else dS.to(q.dtype).clone()  # dLoss/dS at the current point
        G = _group_size(BH, C, max(K, V))
        for a in reversed(range(0, N, G)):
            s = slice(a, min(a + G, N))
            n = s.stop - a
            gq, gk, gv, gb, gdo, S0 = q[s], k[s], v[s], beta[s, ..., None], do[s], starts[s]
            if kept:  # keep_factors: the forward's (7 tensors per group, in order)
                E, Ec, e, gamma = _decays(d[s], lo, causal)
                QK, PL, Tm, WU, kc, Qs, A = kept[7 * (a // G):7 * (a // G) + 7]
            else:
                E, Ec, e, gamma, QK, PL, Tm, WU, kc = _group_factors(gq, gk, gv, gb, d[s], lo, causal, eye_c)
                Qs = torch.mul(gq, E[..., None]).sub_(torch.matmul(PL[..., :C, :], WU[..., :K]))
                A = _transition(kc, WU[..., :K], e)
            P, W, U = PL[..., :C, :], WU[..., :K], WU[..., K:]
            # reverse scan: dB[i] = dLoss/dS at the end of chunk a+i; the chunk-start state feeds A S + B and Qs S.
            # Y = [-dA | dB] and X = [-dQs | dO], so that the gradients of the stacked factors are single matmuls.
            QdO = torch.matmul(Qs.mT, gdo)  # (n, BH, K, V)
            Y = q.new_empty(n, BH, K, K + V)
            dB = Y[..., K:]
            for i in range(n - 1, -1, -1):
                dB[i].copy_(Gc)
                Gc = torch.baddbmm(QdO[i], A[i].mT, Gc)
            dA = torch.matmul(dB, S0.mT)  # (n, BH, K, K)
            torch.neg(dA, out=Y[..., :K])
            dQs = torch.matmul(gdo, S0.mT)  # (n, BH, C, K)
            X = torch.cat([dQs.neg(), gdo], -1)  # (n, BH, C, K + V)
            dPL = q.new_empty(n, BH, 2 * C, C)  # [dP; dL]
            torch.matmul(X, WU.mT, out=dPL[..., :C, :])  # dP = dO U^T - dQs W^T
            Z = torch.matmul(P.mT, X)
            Z.view(-1, C, K + V).baddbmm_(_f3(kc), Y.view(-1, K, K + V))  # [dW | dU]
            dkc = torch.matmul(WU, Y.mT)  # U dB^T - W dA^T
            de = dA.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # (n, BH, 1)
            # through [W | U] = T [kb E | beta v], T = (I + L)^-1: dT = [dW | dU] [kb E | beta v]^T and
            # dL = -T^T dT T^T = -(T^T [dW | dU]) [W | U]^T
            TZ = torch.matmul(Tm.mT, Z)  # [d(kb E) | d(beta v)]
            dRW, dRU = TZ[..., :K], TZ[..., K:]
            dL = dPL[..., C:, :]
            torch.matmul(TZ, WU.mT, out=dL).neg_()
            dL.tril_(-1)  # only the strictly lower part of L was used
            # [L; P] = ([q; kb] k^T) * gamma; Hm = dLoss/dgamma * gamma
            Hm = (dPL * PL).view(n, BH, 2, C, C).sum(2)
            dPL.view(n, BH, 2, C, C).mul_(gamma.unsqueeze(2))  # now [dN; dM], the gradients of the products
            dqkb = torch.matmul(dPL, gk)  # [dN k; dM k]
            kb = QK[..., C:, :]
            torch.addcmul(dqkb[..., :C, :], dQs, E[..., None], out=dq[s])
            dkb = dqkb[..., C:, :].addcmul_(dRW, E[..., None])
            gdk = torch.matmul(dPL.mT, QK, out=dk[s])  # dN^T q + dM^T kb
            gdk.addcmul_(dkc, Ec[..., None]).addcmul_(dkb, gb)
            # the log decay. With gamma_ij = exp(d_i - d_j), E = exp(d), e = exp(d_C) and d = cumsum(g):
            # dg_t = sum_{i >= t > j} Hm_ij + sum_{i >= t} dE_i E_i + de e + sum_{i < t} F_i, where
            # F_i = dLoss/dEc_i Ec_i for Ec_i = exp(d_C - d_i). Written so that no O(1) terms cancel in float
            # (gamma_ii = 1 and Ec_C = 1 do not depend on g), which would swamp tiny gradients of strong decays.
            Hm.diagonal(dim1=-2, dim2=-1).zero_()
            dd = Hm.sum(-1) - Hm.sum(-2) + ((dQs * gq).sum(-1) + (dRW * kb).sum(-1)) * E
            dd[..., -1] += (de * e).squeeze(-1)
            Fk = (dkc * kc).sum(-1)  # (n, BH, C)
            torch.add(dd.flip(-1).cumsum(-1).flip(-1), F.pad(Fk[..., :-1].cumsum(-1), (1, 0)), out=dg[s])
            torch.mul(dRU, gb, out=dv[s])
            torch.add((dRU * gv).sum(-1), (dkb * gk).sum(-1), out=dbeta[s])
        return dq, dk, dv, dg, dbeta, (Gc if ctx.has_s0 else None), None


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
        o, S = _ChunkGatedDeltaRule.apply(q, k, v, g, beta, s0, keep_factors)
    else:
        o, S, _, _, _ = _chunk_forward(q, k, v, g, beta, s0, keep_states=False)
    o = o.reshape(N, B, HV, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, HV, V)[:, :T]
    final = S.reshape(B, HV, K, V) if output_final_state else None
    return o.to(out_dtype), final
