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

  so everything except S_0 is computed for all chunks at once with batched matmuls, and the only sequential
  work is the state scan S <- A_n S + B_n (one K x K by K x V matmul per chunk); the outputs of all chunks then
  come from one batched matmul against the stacked start states.

How P and A are computed exactly and without overflow. The per-channel factor exp(G_i - G_j) cannot be split
as exp(G_i) * exp(-G_j) over the whole chunk: exp(-G_j) overflows once the decays are strong (g = -20 per step
gives exponents of about 1280 over 64 steps), and naive split-then-mask schemes turn inf * 0 into NaN in the
gradients. Forming the full pairwise tensor exp(G_i - G_j) (C x C x K per chunk, masked to i >= j before the
exp) is exact but costs memory and elementwise work of C * K per token. Instead the chunk is split recursively in halves (C is a power of
two). Every pair i > j is separated at exactly one level of this binary tree: j lies in a left half L and i in
the right half R next to it. With r the last step of L,

      exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j),        both exponents <= 0 by construction,

so the whole L x R block is one matmul (Q_R * exp(G_R - G_r)) (K_L * exp(G_r - G_L))^T. No positive exponent
is ever formed (no masking is needed: the pairs with i < j are simply never built), every factor lies in
(0, 1], the product is exact up to rounding (if a factor underflows to 0 the true value is below the smallest
float as well), and forward and backward stay finite for any decay, however strong. The cost per token is
log2(C) elementwise passes over Q- and K-sized tensors plus about C * K multiply-adds in matmuls, versus C * K
elementwise products (and exps) for the pairwise tensor. The blocks are assembled bottom-up into the C x C
matrices; the diagonal of P is q_i . k_i. The same tree inverts I + A by blocks (no triangular solve, which is
slow batched on CPU). The few lowest levels (tiny blocks) use broadcast products instead of batched matmuls.

Exponent differences are summed directly, not subtracted: G_i - G_r is a prefix sum of g over R and G_r - G_j
(likewise G_C - G_j) a suffix sum over L, so each exponent depends only on the g_t it contains. Subtracting
prefix sums G_i - G_j gives the same forward but makes the backward of every g_t accumulate +x and -x terms
from pairs that do not involve it; in float32 those cancellations leave errors far above the true gradient,
which is of order exp(g) and tiny for strong decays. Summed directly, the float32 gradients of g match the
recurrent form as closely as any other input's (relative error ~1e-7 at g = -20 per step).

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

from .precision import full_precision


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel):
    """Shape checks, promotion to the compute dtype, optional q/k l2norm and the query scale."""
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
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
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


# levels of the halving tree whose blocks are at most this size use broadcast products instead of matmuls
_SMALL_BLOCK = 4


def _mm(a: torch.Tensor, b: torch.Tensor, small: bool) -> torch.Tensor:
    """a @ b; for tiny matrices a broadcast product, which beats batched matmul's per-matrix overhead."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2) if small else a @ b


def _mm_t(a: torch.Tensor, b: torch.Tensor, small: bool) -> torch.Tensor:
    """a @ b^T, likewise."""
    return (a.unsqueeze(-2) * b.unsqueeze(-3)).sum(-1) if small else a @ b.transpose(-1, -2)


def _suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """y_j = sum_{t > j} x_t along dim -2 (exclusive suffix sum), built directly so that autograd gives each
    x_t only the terms that depend on it (a difference of prefix sums would cancel in the backward)."""
    tail = x[..., 1:, :].flip(-2).cumsum(-2).flip(-2)
    return torch.cat([tail, torch.zeros_like(x[..., :1, :])], -2)


def _intra_chunk(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor):
    """For every chunk: the output scores P (i >= j) and the UT transform T = (I + A)^-1, both exact, by the
    halving tree of the module docstring. q, k, g: (..., C, K) with C a power of two; beta: (..., C, 1).
    Returns P and T, each (..., C, C) lower triangular (T with unit diagonal).

    The tree builds both matrices bottom-up from their diagonal blocks. At the level joining two halves L, R
    of size s, the new off-diagonal block of P is Q~_R K~_L^T and that of A is diag(beta_R) K~_R K~_L^T
    (the ~ factors as in the module docstring); block inversion of a lower-triangular matrix gives the new
    off-diagonal block of T as -T_R A_RL T_L from the already inverted halves. So A is never assembled and
    the inverse costs batched matmuls only (a batched triangular solve is far slower on CPU)."""
    C, Kd = q.shape[-2:]
    lead = q.shape[:-2]
    # level 0: 1 x 1 diagonal blocks, P_ii = q_i . k_i, T_ii = 1
    p_blk = (q * k).sum(-1, keepdim=True).unsqueeze(-1)               # (..., C, 1, 1)
    t_blk = torch.ones_like(p_blk)
    s = 1
    while s < C:
        M = C // (2 * s)
        small = s <= _SMALL_BLOCK
        split = lambda x: x.reshape(*lead, M, 2, s, x.shape[-1]).unbind(-3)   # left, right halves (..., M, s, .)
        (gL, gR), (_, qR), (kL, kR), (_, bR) = split(g), split(q), split(k), split(beta)
        eR = gR.cumsum(-2).exp()                                      # exp(G_i - G_r), i in R: exponents <= 0
        kLs = kL * _suffix_sum(gL).exp()                              # exp(G_r - G_j), j in L: exponents <= 0
        off_p = _mm_t(qR * eR, kLs, small)                            # (..., M, s, s)
        off_a = bR * _mm_t(kR * eR, kLs, small)                       # strictly-lower block of A (rows R, cols L)
        pL, pR = p_blk.view(*lead, M, 2, s, s).unbind(-3)
        tL, tR = t_blk.view(*lead, M, 2, s, s).unbind(-3)
        off_t = -off_a if s == 1 else -_mm(_mm(tR, off_a, small), tL, small)  # T_L = T_R = 1 at s = 1
        zero = torch.zeros_like(pL)
        p_blk = torch.cat([torch.cat([pL, zero], -1), torch.cat([off_p, pR], -1)], -2)  # (..., M, 2s, 2s)
        t_blk = torch.cat([torch.cat([tL, zero], -1), torch.cat([off_t, tR], -1)], -2)
        s *= 2
    return p_blk.view(*lead, C, C), t_blk.view(*lead, C, C)


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
    chunk_size: int = 64,
):
    """Chunked parallel form (module docstring); same arguments and results as :func:`recurrent_kda`.
    ``chunk_size`` must be a power of two."""
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two (e.g. 32, 64), got {chunk_size}")
    out_dtype = q.dtype
    q, k, v, g, beta, S = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        S = q.new_zeros(B, H, K, V) if S is None else S
        return v.new_zeros(B, 0, H, V).to(out_dtype), (S if output_final_state else None)
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T
    # (B, H, N, C, .): padded steps have k = 0, beta = 0, g = 0, so they leave the state unchanged
    def chunks(x):
        x = x.transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
        return x.reshape(B, H, N, C, *x.shape[3:])
    q, k, v, g, beta = (chunks(t) for t in (q, k, v, g, beta))

    G = g.cumsum(-2)                                                  # (B, H, N, C, K), non-increasing in C
    b = beta.unsqueeze(-1)                                            # (B, H, N, C, 1)
    P, Tm = _intra_chunk(q, k, g, b)                                  # (B, H, N, C, C) each
    WU = Tm @ torch.cat([b * k * G.exp(), b * v], -1)                 # (B, H, N, C, K + V): [W, U]
    GC = G[..., -1:, :]                                               # (B, H, N, 1, K): chunk's total log decay
    Kc = k * _suffix_sum(g).exp()                                     # (B, H, N, C, K): K * exp(G_C - G)
    PWU = P @ WU                                                      # (B, H, N, C, K + V): [P W, P U]
    Qs = q * G.exp() - PWU[..., :K]                                   # (B, H, N, C, K): multiplies S_0
    KWU = Kc.transpose(-1, -2) @ WU                                   # (B, H, N, K, K + V): [Kc^T W, Kc^T U]
    trans = torch.diag_embed(GC.squeeze(-2).exp()) - KWU[..., :K]     # (B, H, N, K, K): S_end = trans S_0 + inp
    inp = KWU[..., K:]                                                # (B, H, N, K, V)

    # the only sequential part: S_{n+1} = trans_n S_n + inp_n
    # (unbind, not indexing in the loop: each indexed slice would cost a full-size gradient buffer in backward)
    trans = trans.permute(2, 0, 1, 3, 4).reshape(N, B * H, K, K).unbind(0)
    inp = inp.permute(2, 0, 1, 3, 4).reshape(N, B * H, K, V).unbind(0)
    S = q.new_zeros(B * H, K, V) if S is None else S.reshape(B * H, K, V)
    starts = []
    for n in range(N):
        starts.append(S)
        S = torch.baddbmm(inp[n], trans[n], S)
    S0 = torch.stack(starts, 1).view(B, H, N, K, V)                   # start state of every chunk

    O = PWU[..., K:] + Qs @ S0                                        # (B, H, N, C, V)
    o = O.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    final = S.view(B, H, K, V) if output_final_state else None
    return o.to(out_dtype), final
