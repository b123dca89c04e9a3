"""Kimi Delta Attention (KDA; Kimi Linear, arXiv 2510.26692): the gated delta rule with a per-channel decay.

Per head, with state S of shape (K, V), a_t = exp(g_t) in (0, 1]^K and D_t = Diag(a_t):

    S_t = (I - beta_t k_t k_t^T) D_t S_{t-1} + beta_t k_t v_t^T,        o_t = S_t^T (scale * q_t)

i.e. decay the rows of S, read the memory at k_t, write beta_t (v_t - read) at k_t, then read at q_t. This is
the ordering of transformers' ``recurrent_kimi_delta_attention`` / ``chunk_kimi_delta_attention`` (and of
flash-linear-attention's KDA kernels).

Two forms with the same signature and results:

* :func:`recurrent_kda`: one token at a time, the obviously correct reference (and the cheap path for decoding
  a few tokens).
* :func:`chunk_kda`: the chunked parallel form. Inside a chunk of C steps let G_i be the cumulative log decay
  from the chunk start up to and including step i (a vector over the K channels, non-increasing in i). The
  decays enter the intra-chunk dot products channel by channel:

      P_ij = sum_d q_i[d] k_j[d] exp(G_i[d] - G_j[d])                  (i >= j; the output scores)
      A_ij = beta_i sum_d k_i[d] k_j[d] exp(G_i[d] - G_j[d])           (i > j;  the UT transform)

  With T = (I + A)^-1 (inverted by blocks, below), W = T diag(beta) (K * exp(G)) and U = T diag(beta) V,
  the chunk's outputs and end state, given its start state S_0, are

      O     = (Q * exp(G) - P W) S_0 + P U
      S_end = (Diag(exp(G_C)) - Kc^T W) S_0 + Kc^T U,        Kc = K * exp(G_C - G)

  so everything except S_0 is computed with matmuls batched over many chunks, and the only sequential work is
  the state scan S <- A_n S + B_n (one K x K by K x V matmul per chunk); the outputs then come from batched
  matmuls against the stacked start states, as O = (Q * exp(G)) S_0 + P (U - W S_0).

How P and A are computed exactly and without overflow. The per-channel factor exp(G_i - G_j) cannot be split
as exp(G_i) * exp(-G_j) over the whole chunk: exp(-G_j) overflows once the decays are strong (g = -20 per step
gives exponents of about 1280 over 64 steps), and naive split-then-mask schemes turn inf * 0 into NaN in the
gradients. Forming the full pairwise tensor exp(G_i - G_j) (C x C x K per chunk, masked to i >= j before the
exp) is exact but costs memory and elementwise work of C * K per token. Instead the chunk is split recursively
in halves (C is a power of two). Every pair i > j is separated at exactly one level of this binary tree: j lies
in a left half L and i in the right half R next to it. With r the last step of L,

      exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j),        both exponents <= 0 by construction,

so the whole L x R block is one matmul (Q_R * exp(G_R - G_r)) (K_L * exp(G_r - G_L))^T. No positive exponent
is ever formed (no masking is needed: the pairs with i < j are simply never built), every factor lies in
(0, 1], the product is exact up to rounding (if a factor underflows to 0 the true value is below the smallest
float as well), and forward and backward stay finite for any decay, however strong. The blocks are assembled
bottom-up into the C x C matrices; the diagonal of P is q_i . k_i. The same tree inverts I + A by blocks
(T_RL = -T_R A_RL T_L from the halves already inverted; no triangular solve, which is slow batched on CPU).

The factors exp(prefix sums of g within R) and exp(suffix sums within L) are built by doubling from exp(g), with
products only (one exp per step and channel in all): the in-block prefix factors of a block of size 2s are those
of its halves, the right half's times the left half's total (and mirrored for the suffix factors); the last
level yields exp(G) and exp(G_C - G) as well. Each factor is the product of exactly the exp(g_t) it contains.

Backward (``_ChunkKDA``, written by hand). The forward saves only the caller's q, k, v, g, beta themselves (the
l2norm, the query scale and the chunk layout are recomputed in the backward: runner/ops/chunk_layout.py) and
every chunk's start state S_0 (N x K x V per head): nothing of size C x C and no other per-token intermediate.
The backward walks the groups of chunks in reverse. Per group it recomputes P, T, W, U, Q exp(G), Kc and the
transitions from the inputs, runs the reverse state scan dS_0 = trans^T dS_end + Qs^T dO (Qs = Q exp(G) - P W,
the mirror of the forward scan), then forms the gradients by hand: with Un = U - W S_0, dP = dO Un^T,
d(Q exp(G)) = dO S_0^T, dKc = Un dS_end^T, dU = P^T dO + Kc dS_end, dW = -dU S_0^T,
d exp(G_C) = sum_v dS_end S_0 (the transitions' diagonal); through [W | U] = T R, R = [beta K exp(G) | beta V]:
dR = T^T [dW | dU] and, for T = (I + A)^-1,
dA = -T^T dT T^T = -dR [W | U]^T (its strictly lower part). The halving tree's
backward takes the blocks of dP and dA level by level: for Z = [Q~_R; (beta K)~_R] and K~_L, dZ = [dP_RL;
dA_RL] K~_L and dK~_L = [dP_RL; dA_RL]^T Z, which give q, beta k and k their terms. The decays' gradients are
propagated in log space down the same doubling that built the factors: a level's sum over R (or L) goes to
the step that closes the neighbouring half, so each g_t receives exactly the terms whose factors contain it,
like the reverse / forward cumsums of exponents summed within the halves. Summing terms that do not depend on
g_t and cancel (as the difference of prefix sums G_i - G_j would in the backward) would leave float32 errors
far above the true gradient, which is of order exp(g) and tiny for strong decays; done this way the float32
gradients of g match the recurrent form as closely as any other input's (relative error ~1e-7 at g = -20 per
step). beta collects its terms from A's rows (through beta k) and from R.

Speed notes (CPU). Both passes go one group of chunks at a time (group sized by ``_GROUP_ELEMS``), every matmul
batched over the group's chunks and heads, so the transient memory stays that of one group; results go to
contiguous buffers (batched matmuls writing into strided views fall back to one small matmul per matrix).

Conventions (runner/ops): tensors are (batch, time, heads, dim); q, k (B, T, H, K), v (B, T, H, V), g
(B, T, H, K) the per-step per-channel log decay (<= 0), beta (B, T, H) in (0, 1); ``scale=None`` means
K**-0.5; ``initial_state`` is (B, H, K, V). Any length T works (the chunked form pads with identity steps:
k = 0, beta = 0, g = 0). Computation runs in float32 for float32/bfloat16/float16 inputs and float64 for
float64 inputs; outputs come back in the input dtype, the final state in the compute dtype. With
``use_qk_l2norm_in_kernel`` q and k are L2-normalised (x / sqrt(sum x^2 + 1e-6)) in the compute dtype.
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
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be (B, T, H, V) = ({B}, {T}, {H}, V); got {tuple(v.shape)}")
    if g.shape != q.shape:
        raise ValueError(f"g must be (B, T, H, K) = {tuple(q.shape)}; got {tuple(g.shape)}")
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must be (B, T, H) = {(B, T, H)}; got {tuple(beta.shape)}")
    V = v.shape[-1]
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, V)}; got {tuple(initial_state.shape)}")


def _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel):
    """For the recurrent form: shape checks, promotion to the compute dtype, optional q/k l2norm and the query
    scale."""
    _check(q, k, v, g, beta, initial_state)
    K = q.shape[-1]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q * (K ** -0.5 if scale is None else scale)
    s0 = None if initial_state is None else initial_state.to(dt)
    return q, k, v, g, beta, s0


@full_precision
def recurrent_kda(
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
    """One step at a time. q, k, g (B, T, H, K); v (B, T, H, V); beta (B, T, H).
    Returns (o (B, T, H, V) in q's dtype, final state (B, H, K, V) or None)."""
    out_dtype = q.dtype
    q, k, v, g, beta, S = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if S is None:
        S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp().unsqueeze(-1)                           # Diag(a_t) S
        read = torch.einsum("bhk,bhkv->bhv", k[:, t], S)              # S^T k_t
        delta = beta[:, t].unsqueeze(-1) * (v[:, t] - read)           # (B, H, V)
        S = S + k[:, t].unsqueeze(-1) * delta.unsqueeze(-2)           # + k_t delta^T
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))        # S_t^T q_t
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


# chunks are processed in groups so that each group's (chunks, B*H, C, C) tensors stay in the CPU caches and the
# backward's transient memory is one group's: 2^17 elements took 1.00-1.025x the fwd+bwd time of 2^18 (B 1-16,
# H 2-4, T 256-8192, 2-core CPU, interleaved) for 21 MB less at the small model's shape (B 1, H 2, T 2048: 34 vs
# 55 MB), where 2^18 made the whole sequence one group; 2^16 took 1.22-1.30x
_GROUP_ELEMS = 1 << 17


def _group_size(BH: int, C: int, D: int) -> int:
    return max(1, _GROUP_ELEMS // (BH * C * max(C, D)))


def _levels(C: int):
    s = 1
    while s < C:
        yield s
        s *= 2


def _halves(x: torch.Tensor, s: int) -> torch.Tensor:
    """(..., C, D) -> (..., M, 2, s, D) view: [..., 0, :, :] the left halves L, [..., 1, :, :] the right halves R
    of the blocks of size 2s."""
    return x.view(*x.shape[:-2], -1, 2, s, x.shape[-1])


def _off_block(x: torch.Tensor, s: int, rows: int = 1, cols: int = 0) -> torch.Tensor:
    """(Bt, C, C) -> (Bt, M, s, s) view of the blocks (rows R, cols L) of the 2s x 2s diagonal blocks
    (rows = cols = 0: their L diagonal blocks, rows = cols = 1: their R ones)."""
    Bt, C = x.shape[0], x.shape[-1]
    st = x.stride()
    return x.as_strided((Bt, C // (2 * s), s, s), (st[0], 2 * s * (st[1] + st[2]), st[1], st[2]),
                        x.storage_offset() + s * (rows * st[1] + cols * st[2]))


def _block_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over dim -2 (of size s) keeping it; small s by slices (faster than a reduction kernel)."""
    s = x.shape[-2]
    if s == 1:
        return x
    if s == 2:
        return x[..., :1, :] + x[..., 1:, :]
    return x.sum(-2, keepdim=True)


def _intra_chunk(q: torch.Tensor, k: torch.Tensor, kb: torch.Tensor, eg: torch.Tensor, keep: bool = False):
    """For every chunk: the output scores P (i >= j) and the UT transform T = (I + A)^-1, both exact, by the
    halving tree of the module docstring. q, k, kb = beta k and eg = exp(g): (Bt, C, K), C a power of two.
    Returns P and T ((Bt, C, C) lower triangular, T with unit diagonal), exp(G) and exp(G_C - G) (Bt, C, K;
    exp(G) is built in eg's storage) and, if ``keep``, each level's factors for :func:`_intra_chunk_backward`
    (else None).

    At the level joining two halves L, R of size s, the new off-diagonal blocks are P_RL = Q~_R K~_L^T and
    A_RL = Kb~_R K~_L^T with Q~ = q eR, Kb~ = beta k eR, K~ = k eL, eR = exp(prefix sums of g within R) and
    eL = exp(suffix sums of g within L, the step itself excluded): one matmul of Z = [Q~_R; Kb~_R] with K~_L^T.
    Block inversion gives T's new block from the already inverted halves, T_RL = -T_R A_RL T_L, so A is
    never assembled. The exponentials are built by doubling from exp(g), with products only: with Pre_s and
    Suf_s the in-block prefix and suffix factors at block size s (Pre_1 = exp(g), Suf_1 = 1), the blocks of
    size 2s have Pre_2s = Pre_s * (total of L) on R and Suf_2s = Suf_s * (total of R) on L, the totals being
    Pre_s at the blocks' last steps; Pre_C = exp(G) and Suf_C = exp(G_C - G) come out at the end."""
    Bt, C, K = q.shape
    P = q.new_zeros(Bt, C, C)
    P.diagonal(dim1=-2, dim2=-1).copy_((q * k).sum(-1))             # P_ii = q_i . k_i (no decay)
    Tm = torch.eye(C, dtype=q.dtype, device=q.device).expand(Bt, C, C).contiguous()
    pre, suf = eg, torch.ones_like(eg)
    saved = [] if keep else None
    for s in _levels(C):
        M = C // (2 * s)
        pre5, suf5 = _halves(pre, s), _halves(suf, s)
        eR, sL = pre5[:, :, 1], suf5[:, :, 0]
        Z = q.new_empty(Bt, M, 2, s, K)                               # [Q~_R; Kb~_R]
        torch.mul(_halves(q, s)[:, :, 1], eR, out=Z[:, :, 0])
        torch.mul(_halves(kb, s)[:, :, 1], eR, out=Z[:, :, 1])
        kL = _halves(k, s)[:, :, 0]
        Lt = kL if s == 1 else kL * sL                                # K~_L (Suf_1 = 1)
        off = torch.bmm(Z.view(Bt * M, 2 * s, K), Lt.reshape(Bt * M, s, K).mT).view(Bt, M, 2, s, s)
        _off_block(P, s).copy_(off[:, :, 0])
        if s == 1:
            torch.neg(off[:, :, 1], out=_off_block(Tm, s))
        else:                                                         # T_RL = -T_R A_RL T_L
            tR = _off_block(Tm, s, 1, 1).reshape(Bt * M, s, s)
            tL = _off_block(Tm, s, 0, 0).reshape(Bt * M, s, s)
            tRA = torch.bmm(tR, off[:, :, 1].reshape(Bt * M, s, s))
            torch.neg(torch.bmm(tRA, tL).view(Bt, M, s, s), out=_off_block(Tm, s))
        if keep:
            saved.append((Z, Lt, eR.clone(), sL.clone()))
        suf5[:, :, 0].mul_(pre5[:, :, 1, s - 1:])                     # before pre's R half (its total) changes
        pre5[:, :, 1].mul_(pre5[:, :, 0, s - 1:])
    return P, Tm, pre, suf, saved


def _intra_chunk_backward(q, k, kb, saved, D, dq, dkb, dk, lam, mu):
    """Backward of :func:`_intra_chunk` given D = [dP; dA] (2, Bt, C, C) (only P's lower triangle and A's
    strictly lower one are read): adds the gradients of q, kb = beta k and k (Bt, C, K) into dq, dkb, dk.
    lam and mu hold on entry the gradients of log exp(G) and log exp(G_C - G), i.e. d exp(G) * exp(G) etc.;
    lam is turned in place into the gradient of g.

    Per level, with Y = [dP_RL; dA_RL]: dZ = Y K~_L and dK~_L = Y^T Z. The exponents are back-propagated
    through the doubling in log space, from the top level down: log Pre_2s = log Pre_s + log(total of L) on R
    passes its gradient unchanged to log Pre_s on R and its sum over R to the last step of L (likewise for
    Suf), and each level adds its own use, dZ Z on R and dK~ K~ on L. So every g_t receives exactly the terms
    that contain it, as with reverse and forward cumsums of the exponents within the halves (no +x/-x
    cancellations), with one block sum per level and half instead of a cumsum."""
    Bt, C, K = q.shape
    dPd = D[0].diagonal(dim1=-2, dim2=-1).unsqueeze(-1)              # (Bt, C, 1)
    dq.addcmul_(dPd, k)
    dk.addcmul_(dPd, q)
    st = D.stride()
    for s, (Z, Lt, eR, sL) in reversed(list(zip(_levels(C), saved))):
        M = C // (2 * s)
        Y = D.as_strided((Bt, M, 2, s, s), (st[1], 2 * s * (st[2] + st[3]), st[0], st[2], st[3]),
                         D.storage_offset() + s * st[2]).reshape(Bt * M, 2 * s, s)
        Lt3 = Lt.reshape(Bt * M, s, K)
        if s == 1:
            dZ = (Y * Lt3).view(Bt, M, 2, s, K)
            Z3 = Z.view(Bt * M, 2, K)
            dLt = (Y[:, :1] * Z3[:, :1]).addcmul_(Y[:, 1:], Z3[:, 1:]).view(Bt, M, s, K)
        else:
            dZ = torch.bmm(Y, Lt3).view(Bt, M, 2, s, K)
            dLt = torch.bmm(Y.mT, Z.view(Bt * M, 2 * s, K)).view(Bt, M, s, K)
        lam5, mu5 = _halves(lam, s), _halves(mu, s)
        # the doubling step of this level, reversed (log space): sums over R of lam and over L of mu
        lam5[:, :, 0, s - 1:].add_(_block_sum(lam5[:, :, 1]))
        lam5[:, :, 1, s - 1:].add_(_block_sum(mu5[:, :, 0]))
        # this level's use of eR and eL
        lam5[:, :, 1].addcmul_(dZ[:, :, 0], Z[:, :, 0]).addcmul_(dZ[:, :, 1], Z[:, :, 1])
        _halves(dq, s)[:, :, 1].addcmul_(dZ[:, :, 0], eR)
        _halves(dkb, s)[:, :, 1].addcmul_(dZ[:, :, 1], eR)
        if s == 1:
            _halves(dk, s)[:, :, 0].add_(dLt)
        else:
            mu5[:, :, 0].addcmul_(dLt, Lt)
            _halves(dk, s)[:, :, 0].addcmul_(dLt, sL)
    return lam


def _chunk_factors(q, k, v, g, b, keep):
    """The per-chunk factors of the module docstring for a group of chunks (Bt = chunks x heads): q, k, g
    (Bt, C, K), v (Bt, C, V), b = beta (Bt, C, 1). Returns a dict."""
    kb = k * b
    P, Tm, eG, eS, lv = _intra_chunk(q, k, kb, g.exp(), keep)
    RW, RU = kb * eG, v * b                                           # [W | U] = T [RW | RU]
    return dict(kb=kb, P=P, Tm=Tm, eG=eG, eS=eS, lv=lv, Qe=q * eG, RW=RW, RU=RU, W=torch.bmm(Tm, RW),
                U=torch.bmm(Tm, RU), Kc=k * eS)


def _kda_forward(q, k, v, g, beta, s0, keep: bool):
    """Chunked forward on chunk-major tensors: q (already scaled), k, g (N, BH, C, K); v (N, BH, C, V); beta
    (N, BH, C); s0 (BH, K, V) or None. Returns o (N, BH, C, V), the final state (BH, K, V) and, if ``keep``,
    every chunk's start state (N, BH, K, V) (else None). One group of chunks at a time, all matmuls batched
    over the group's chunks and heads: the chunk factors, the transitions trans = Diag(exp(G_C)) - Kc^T W and
    inputs Kc^T U, the scan S <- trans S + input, then O = (Q exp(G)) S_0 + P (U - W S_0)."""
    N, BH, C, K = q.shape
    V = v.shape[-1]
    o = q.new_empty(N, BH, C, V)
    starts = q.new_empty(N, BH, K, V) if keep else None
    S = q.new_zeros(BH, K, V) if s0 is None else s0
    gs = _group_size(BH, C, max(K, V))
    for a in range(0, N, gs):
        sl = slice(a, min(a + gs, N))
        f3 = lambda x: x[sl].reshape(-1, *x.shape[2:])  # (n, BH, ...) -> (n * BH, ...)
        S = _group_forward(f3(q), f3(k), f3(v), f3(g), f3(beta).unsqueeze(-1), S, starts[sl] if keep else None,
                           f3(o))
    return o, S, starts


def _group_forward(gq, gk, gv, gg, gb, S, S0, og):
    """One group of :func:`_kda_forward` (its chunks flattened with the heads, as in :func:`_group_backward`),
    from the state S (BH, K, V) at the group's start: writes the chunk-start states into S0 (n, BH, K, V; None: a
    scratch buffer) and the output into og (n BH, C, V), and returns the state at the group's end. A function of
    its own so that a group's factors are freed before the next group's are made."""
    Bt, C, K = gq.shape
    BH, V = S.shape[0], gv.shape[-1]
    n = Bt // BH
    if S0 is None:
        S0 = gq.new_empty(n, BH, K, V)
    f = _chunk_factors(gq, gk, gv, gg, gb, False)
    Kct = f["Kc"].mT
    trans = torch.baddbmm(Kct.new_empty(()), Kct, f["W"], beta=0, alpha=-1)
    trans.diagonal(dim1=-2, dim2=-1).add_(f["eG"][:, -1])
    trans, inp = trans.view(n, BH, K, K), torch.bmm(Kct, f["U"]).view(n, BH, K, V)
    S0[0] = S
    for i in range(n):                                            # the only sequential part
        S = torch.baddbmm(inp[i], trans[i], S0[i], out=S0[i + 1] if i + 1 < n else None)
    S0 = S0.view(Bt, K, V)
    Un = torch.baddbmm(f["U"], f["W"], S0, alpha=-1)              # U - W S_0
    torch.bmm(f["P"], Un, out=og)
    og.baddbmm_(f["Qe"], S0)
    return S


def _kda_backward(q, k, v, g, beta, starts, do, dS):
    """The backward of :func:`_kda_forward` on chunk-major tensors (its arguments, the kept start states, dO
    (N, BH, C, V) and dLoss/dS of the final state (BH, K, V) or None): one reversed pass over the groups of chunks
    (:func:`_group_backward`). Returns the gradients of q, k, v, g, beta (chunk-major) and of the initial
    state."""
    N, BH, C, K = q.shape
    V = v.shape[-1]
    dq, dk, dv, dg = (torch.empty_like(t) for t in (q, k, v, g))
    dbeta = torch.empty_like(beta)
    Gc = q.new_zeros(BH, K, V) if dS is None else dS.to(q.dtype)  # dLoss/dS at the current point
    gs = _group_size(BH, C, max(K, V))
    for a in reversed(range(0, N, gs)):
        sl = slice(a, min(a + gs, N))
        f3 = lambda x: x[sl].reshape(-1, *x.shape[2:])  # (n, BH, ...) -> (n * BH, ...)
        Gc = _group_backward(f3(q), f3(k), f3(v), f3(g), f3(beta).unsqueeze(-1), f3(do), f3(starts), Gc,
                             (f3(dq), f3(dk), f3(dg), f3(dv), f3(dbeta)))
    return dq, dk, dv, dg, dbeta, Gc


class _ChunkKDA(torch.autograd.Function):
    """:func:`_kda_forward` on the caller's tensors (runner/ops/chunk_layout.py) with a hand-written backward. What
    it keeps for the backward is the caller's q, k, v, g, beta themselves (in the mixer, views of the short
    convolution's output and the decay, which the layer keeps anyway) and the chunks' start states; the backward
    recomputes the prepared chunk-major inputs (l2norm, scale, layout) and, group by group, the chunk factors."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, s0, lay):
        qc, kc, vc, gc, bc = lay.prepare(q, k, v, g, beta)
        s0c = None if s0 is None else s0.to(lay.dt).reshape(lay.B * lay.HV, lay.K, lay.V)
        o, S, starts = _kda_forward(qc, kc, vc, gc, bc, s0c, keep=True)
        ctx.save_for_backward(q, k, v, g, beta, starts)
        ctx.lay, ctx.s0_dtype = lay, None if s0 is None else s0.dtype
        return lay.unchunks(o), S.reshape(lay.B, lay.HV, lay.K, lay.V)

    @staticmethod
    @once_differentiable
    @full_precision  # a backward run inside an autocast region keeps the float32 math too
    def backward(ctx, do, dS):
        q, k, v, g, beta, starts = ctx.saved_tensors
        lay = ctx.lay
        qc, kc, vc, gc, bc = lay.prepare(q, k, v, g, beta)
        dSc = None if dS is None else dS.reshape(lay.B * lay.HV, lay.K, lay.V)
        dq, dk, dv, dg, dbeta, ds0 = _kda_backward(qc, kc, vc, gc, bc, starts, lay.chunks(do), dSc)
        dq = lay.qk_grad(dq.mul_(lay.scale), q)
        dk = lay.qk_grad(dk, k)
        dv, dg, dbeta = lay.grad(dv, v), lay.grad(dg, g), lay.grad(dbeta, beta)
        ds0 = None if ctx.s0_dtype is None else ds0.reshape(lay.B, lay.HV, lay.K, lay.V).to(ctx.s0_dtype)
        return dq, dk, dv, dg, dbeta, ds0, None


def _group_backward(gq, gk, gv, gg, gb, gdo, S0, Gc, out):
    """One group of :class:`_ChunkKDA`'s backward, its n chunks flattened with the heads: q, k, g (n BH, C, K), v
    and dO (n BH, C, V), beta (n BH, C, 1), the chunk-start states (n BH, K, V) and Gc = dLoss/dS at the group's
    end (BH, K, V). Recomputes the group's factors, writes its gradients of q, k, g, v, beta into ``out`` (views
    of the whole buffers) and returns dLoss/dS at the group's start. A function of its own so that the group's
    intermediates are freed on return, before the next group's are made (a loop body's locals stay bound until
    rebound: two groups' worth at once)."""
    Bt, C, K = gq.shape
    BH, V = Gc.shape[0], gv.shape[-1]
    n = Bt // BH
    f = _chunk_factors(gq, gk, gv, gg, gb, True)
    P, Tm, eG, eS, W, U, Kc, Qe = (f[x] for x in ("P", "Tm", "eG", "eS", "W", "U", "Kc", "Qe"))
    trans = torch.baddbmm(Kc.new_empty(()), Kc.mT, W, beta=0, alpha=-1)
    trans.diagonal(dim1=-2, dim2=-1).add_(eG[:, -1])
    # reverse scan: dS_0 = trans^T dS_end + Qs^T dO with Qs = Q exp(G) - P W
    dU = torch.bmm(P.mT, gdo)                                 # P^T dO, then + Kc dS_end below
    QdO = torch.bmm(Qe.mT, gdo).baddbmm_(W.mT, dU, alpha=-1).view(n, BH, K, V)
    trans = trans.view(n, BH, K, K)
    dSend = gq.new_empty(n, BH, K, V)                          # dLoss/dS at each chunk's end
    dSend[n - 1] = Gc
    for i in range(n - 1, -1, -1):
        Gc = torch.baddbmm(QdO[i], trans[i].mT, dSend[i], out=dSend[i - 1] if i else None)
    dSend = dSend.view(Bt, K, V)
    # O = Qe S_0 + P Un and S_end = Diag(exp(G_C)) S_0 + Kc^T Un with Un = U - W S_0
    Un = torch.baddbmm(U, W, S0, alpha=-1)
    D = gq.new_empty(2, Bt, C, C)                              # [dP; dA]
    torch.bmm(gdo, Un.mT, out=D[0])
    dKc = torch.bmm(Un, dSend.mT)
    dU.baddbmm_(Kc, dSend)
    dW = torch.baddbmm(dU.new_empty(()), dU, S0.mT, beta=0, alpha=-1)
    dQe = torch.bmm(gdo, S0.mT)
    # through [W | U] = T [RW | RU] and T = (I + A)^-1: dR = T^T d[W | U], dA = -T^T dT T^T = -dR [W | U]^T
    dRW, dRU = torch.bmm(Tm.mT, dW), torch.bmm(Tm.mT, dU)
    torch.baddbmm(D[1], dRW, W.mT, beta=0, alpha=-1, out=D[1])
    D[1].baddbmm_(dRU, U.mT, alpha=-1)
    gdq, gdk, gdg, gdv, gdbeta = out
    torch.mul(dQe, eG, out=gdq)
    dkb = dRW * eG
    lam = torch.mul(dQe, Qe, out=gdg).addcmul_(dRW, f["RW"])  # d log exp(G) = d exp(G) exp(G)
    lam[:, -1].addcmul_((dSend * S0).sum(-1), eG[:, -1])      # exp(G_C) on the transitions' diagonal
    mu = dKc * Kc                                             # d log exp(G_C - G)
    torch.mul(dKc, eS, out=gdk)
    torch.mul(dRU, gb, out=gdv)
    _intra_chunk_backward(gq, gk, f["kb"], f["lv"], D, gdq, dkb, gdk, lam, mu)
    gdk.addcmul_(dkb, gb)
    torch.add((dRU * gv).sum(-1), (dkb * gk).sum(-1), out=gdbeta)
    return Gc


@full_precision
def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 32,
):
    """Chunked parallel form (module docstring); same arguments and results as :func:`recurrent_kda`.
    ``chunk_size`` must be a power of two; 32 (the default) ran fwd+bwd a few percent faster than 64 at T 8192
    (B 2, H 4, D 64, the two interleaved in one process on a 2-core CPU: per-round ratio medians 0.91, 0.93 and
    0.97 over three runs on the ops benchmark's inputs and weaker decays, one and two threads) and the same at
    T 2048 and at the small model's shape (the halving tree has one level less, the C x C products shrink). The
    backward is written by hand (no autograd graph through the chunk internals)."""
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two (e.g. 32, 64), got {chunk_size}")
    _check(q, k, v, g, beta, initial_state)
    out_dtype = q.dtype
    lay = ChunkLayout(q, v, scale, use_qk_l2norm_in_kernel, chunk_size, whole_chunks=True)
    if lay.T == 0:
        S = q.new_zeros(lay.B, lay.H, lay.K, lay.V, dtype=lay.dt) if initial_state is None else \
            initial_state.to(lay.dt)
        return v.new_zeros(lay.B, 0, lay.H, lay.V).to(out_dtype), (S if output_final_state else None)
    inputs = (q, k, v, g, beta) + (() if initial_state is None else (initial_state,))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        o, S = _ChunkKDA.apply(q, k, v, g, beta, initial_state, lay)
    else:  # padded steps have k = 0, beta = 0, g = 0: the state passes through them unchanged
        qc, kc, vc, gc, bc = lay.prepare(q, k, v, g, beta)
        s0 = None if initial_state is None else initial_state.to(lay.dt).reshape(lay.B * lay.H, lay.K, lay.V)
        o, S, _ = _kda_forward(qc, kc, vc, gc, bc, s0, keep=False)
        o, S = lay.unchunks(o), S.reshape(lay.B, lay.H, lay.K, lay.V)
    return o.to(out_dtype), (S if output_final_state else None)


class _LogDecay(torch.autograd.Function):
    """g = -exp(A_log) softplus(f) with a backward that needs only g (which the chunked op keeps anyway):
    softplus(f) = -g / a, so dg/df = -a sigmoid(f) = a expm1(g / a) and dg/dA_log = g."""

    @staticmethod
    def forward(ctx, f, A_log):
        a = A_log.to(f.dtype).exp().view(-1, 1)  # (H, 1) against f's (..., H, K)
        g = F.softplus(f).mul_(a).neg_()
        ctx.save_for_backward(g, A_log)
        return g

    @staticmethod
    @once_differentiable
    def backward(ctx, dg):
        g, A_log = ctx.saved_tensors
        a = A_log.to(g.dtype).exp().view(-1, 1)
        df = torch.expm1(g / a).mul_(a).mul_(dg)
        dA = (dg * g).sum(dim=tuple(range(g.dim() - 2)) + (-1,)).to(A_log.dtype)
        return df, dA


def kda_log_decay(f: torch.Tensor, A_log: torch.Tensor) -> torch.Tensor:
    """KDA's per-channel log decay g = -exp(A_log) softplus(f) (Kimi Linear; f (..., H, K) the decay
    projection's output with its bias, A_log (H,)), keeping for the backward only g itself, the chunked op's
    input, instead of f and softplus(f) besides: 2 x 4 bytes per channel and token less in a KDA layer."""
    return _LogDecay.apply(f, A_log)
