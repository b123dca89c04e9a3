"""Linear attention with a scalar (per head, per step) decay: the kernel shared by linear attention (no decay),
lightning attention (a fixed decay per head) and Mamba2's SSD (a data-dependent decay per head).

Per head, with state S of shape (K, V) and a_t = exp(g_t) in (0, 1]:

    S_t = a_t S_{t-1} + k_t v_t^T,        o_t = S_t^T (scale * q_t)

This is "simple GLA" in flash-linear-attention's naming (gated linear attention with one gate value per head),
and the recurrence of RetNet / lightning attention (a constant a per head) and of Mamba2's SSD (a_t = exp(dt_t A)).

Two forms with the same signature and results:

* :func:`recurrent_simple_gla`: one token at a time, the obviously correct reference (and the cheap path for
  decoding a few tokens).
* :func:`chunk_simple_gla`: the chunked parallel form. Inside a chunk of C steps let d_i be the cumulative log
  decay from the chunk start up to and including step i (non-increasing, d_i <= 0), and S_0 the chunk's start
  state. Then

      O     = scale (Q * exp(d)) S_0 + scale (tril(Q K^T) * Gamma) V,        Gamma_ij = exp(d_i - d_j)   (i >= j)
      S_end = exp(d_C) S_0 + (K * exp(d_C - d))^T V

  The exponent d_i - d_j = g_{j+1} + ... + g_i is formed as a segment sum of g (not as a difference of two
  running sums, which loses its precision once |d| is large: g = -1e4 next to g = -0.01) and is replaced by
  -inf above the diagonal BEFORE the exp, so no positive exponent is ever formed and forward and backward stay
  finite and accurate for any decay (g = -20 per step or far stronger); every other factor (exp(d), exp(d_C - d)
  as a suffix sum, exp(d_C)) has an exponent <= 0 by construction, and the diagonal of Gamma is exactly 1.
  All the within-chunk terms are computed for many chunks at once with batched matmuls (all of them on a GPU;
  on a CPU, segments of chunks sized to stay in cache, see :func:`_segment_chunks`); the only sequential work
  is the scan over chunks S <- exp(d_C) S + (K * exp(d_C - d))^T V, which for a scalar decay is an elementwise
  multiply-add of one (K, V) matrix per chunk (no matmul), followed by one batched matmul that reads every
  chunk's start state. With no decay Gamma is the causal mask and the exps disappear; with a constant decay per
  head (``g_gamma``) Gamma is the same for every chunk and is built once.

  The backward pass is written out (not left to autograd) so that it makes as few passes over memory as the
  forward: see :class:`_ChunkSimpleGLA` for its formulas, including a gradient of the decay that stays accurate
  when the decay is strong.

Conventions (runner/ops): tensors are (batch, time, heads, dim): q, k (B, T, H, K), v (B, T, H, V), g (B, T, H)
the per-step log decay (<= 0) or None; ``g_gamma`` (H,) a constant per-step log decay per head (<= 0), an
alternative to g (flash-linear-attention's name); neither = no decay. ``scale=None`` means K**-0.5;
``initial_state`` is (B, H, K, V). Any length T works (the chunked form pads with identity steps:
q = k = v = 0, g = 0). Computation runs in float32 for float32/bfloat16/float16 inputs and in float64 for
float64 inputs; outputs are returned in v's dtype, the final state in the compute dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .precision import full_precision


def _prepare(q, k, v, g, g_gamma, scale, initial_state):
    """Shape checks and promotion to the compute dtype. Returns q, k, v, g, g_gamma, initial state, scale."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, T, H, K); got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be (B, T, H, V) = ({B}, {T}, {H}, V); got {tuple(v.shape)}")
    if g is not None and g.shape != (B, T, H):
        raise ValueError(f"g must be (B, T, H) = {(B, T, H)} or None; got {tuple(g.shape)}")
    if g_gamma is not None:
        if g is not None:
            raise ValueError("give either g (a decay per step) or g_gamma (a constant decay per head), not both")
        if g_gamma.shape != (H,):
            raise ValueError(f"g_gamma must be (H,) = ({H},); got {tuple(g_gamma.shape)}")
    V = v.shape[-1]
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, V)}; got {tuple(initial_state.shape)}")
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    g = None if g is None else g.to(dt)
    g_gamma = None if g_gamma is None else g_gamma.to(dt)
    s0 = None if initial_state is None else initial_state.to(dt)
    return q, k, v, g, g_gamma, s0, float(K ** -0.5 if scale is None else scale)


@full_precision
def recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    g_gamma: Optional[torch.Tensor] = None,
):
    """One step at a time. q, k (B, T, H, K); v (B, T, H, V); g (B, T, H) or None; g_gamma (H,) or None.
    Returns (o (B, T, H, V) in v's dtype, final state (B, H, K, V) or None)."""
    out_dtype = v.dtype
    q, k, v, g, g_gamma, S, scale = _prepare(q, k, v, g, g_gamma, scale, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    q = q * scale
    if S is None:
        S = q.new_zeros(B, H, K, V)
    if g_gamma is not None:
        g = g_gamma.expand(B, T, H)
    outs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].exp()[..., None, None]                      # a_t S_{t-1}
        S = S + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)           # + k_t v_t^T
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))         # S_t^T q_t
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def _gamma(g: torch.Tensor) -> torch.Tensor:
    """Gamma (n, BH, C, C) from the per-step log decay g (n, BH, C): exp(g_{j+1} + ... + g_i) on and below the
    diagonal (exactly 1 on it), 0 above. The exponent is the segment sum of g itself (a cumulative sum of the
    masked (C, C) expansion of g), not a difference of running sums, so it keeps its precision when strong and
    weak steps mix (g = -1e4 next to g = -0.01); it is masked to -inf above the diagonal BEFORE the exp."""
    C = g.shape[-1]
    idx = torch.arange(C, device=g.device)
    seg = g.unsqueeze(-1).expand(*g.shape, C).masked_fill(idx[:, None] <= idx[None, :], 0.0)  # [t, j]: g_t if t > j
    return seg.cumsum(-2).masked_fill_(idx[:, None] < idx[None, :], float("-inf")).exp_()   # [i, j]


def _factors(g: torch.Tensor):
    """Per-chunk factors from g (n, BH, C): eq (n, BH, C, 1) = exp(g_1 + ... + g_i) (a prefix sum),
    ek (n, BH, C, 1) = exp(g_{j+1} + ... + g_C) (a suffix sum), a (n, BH, 1, 1) = exp(g_1 + ... + g_C)."""
    d = g.cumsum(-1)
    after = F.pad(g.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))
    return d.exp().unsqueeze(-1), after.exp().unsqueeze(-1), d[..., -1:].exp().unsqueeze(-1)


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1)


def _inputs(qs, ks, gs, scale):
    """q_in = scale q exp(d) and k_in = k exp(d_C - d), the factors that meet the chunk's start and end states,
    with the decay of the whole chunk a and the factors eq, ek (None without a decay)."""
    if gs is None:
        return qs * scale, ks, None, None, None
    eq, ek, a = _factors(gs)
    return qs * (eq * scale), ks * ek, a, eq, ek


def _scores(qs, ks, gs, scale, mask, gam_first, gam_last, n0, N):
    """The chunks' score matrices P' = scale (Q K^T) * Gamma with the diagonal zeroed (m, BH, C, C), and that
    diagonal (m, BH, C, 1), for the chunks n0 .. n0 + m of N. Cheap (one batched matmul), so the backward
    recomputes them rather than keeping them: with a constant decay (gam_first / gam_last given: Gamma of the
    first chunk, and of the last, which may be padded) Gamma is the same for every chunk."""
    m, BH, C, K = qs.shape
    Ps = torch.matmul(qs, ks.transpose(-1, -2)).mul_(scale)
    if gs is None:
        Ps.mul_(mask)
    elif gam_first is not None:
        Ps[: N - 1 - n0].mul_(gam_first)
        if n0 + m == N:
            Ps[-1:].mul_(gam_last)
    else:
        Ps.mul_(_gamma(gs))
    pds = Ps.diagonal(0, -2, -1).unsqueeze(-1).clone()
    Ps.diagonal(0, -2, -1).zero_()
    return Ps, pds


# elements of the largest per-segment temporary on a CPU (see _segment_chunks); None = no tiling
SEGMENT_ELEMENTS: Optional[int] = 1 << 19


def _segment_chunks(N: int, BH: int, C: int, D: int, device) -> int:
    """Chunks processed together. On a CPU the sequence is tiled into segments whose temporaries (the (C, C)
    score blocks and their kin) hold about SEGMENT_ELEMENTS elements, so they stay in cache and in memory the
    allocator reuses instead of fresh pages: the cost per token then no longer grows with the sequence length.
    Elsewhere (GPUs) all chunks go at once."""
    if device.type != "cpu" or SEGMENT_ELEMENTS is None:
        return N
    return max(1, min(N, SEGMENT_ELEMENTS // (BH * C * max(C, D))))


class _Layout:
    """Moves segments of (B, T, H, D) tensors to and from the chunk-major (M, B*H, C, D) layout, with zeros
    for the padded steps after T (identity steps: q = k = v = 0, g = 0)."""

    def __init__(self, B, T, H, C):
        self.B, self.T, self.H, self.C = B, T, H, C

    def load(self, x: torch.Tensor, n0: int, n1: int) -> torch.Tensor:
        B, T, H, C = self.B, self.T, self.H, self.C
        M, D = n1 - n0, x.shape[-1]
        t0, t1 = n0 * C, min(n1 * C, T)
        full = (t1 - t0) // C                                            # complete chunks in this segment
        out = x.new_empty(M, B, H, C, D)
        if full:
            out[:full].copy_(x[:, t0:t0 + full * C].view(B, full, C, H, D).permute(1, 0, 3, 2, 4))
        if full < M:                                                     # the last, padded chunk
            r = t1 - t0 - full * C
            out[full, :, :, :r].copy_(x[:, t0 + full * C:t1].permute(0, 2, 1, 3))
            out[full, :, :, r:].zero_()
        return out.view(M, B * H, C, D)

    def store(self, dst: torch.Tensor, src: torch.Tensor, n0: int, n1: int) -> None:
        B, T, H, C = self.B, self.T, self.H, self.C
        M, D = n1 - n0, dst.shape[-1]
        src = src.view(M, B, H, C, D)
        t0, t1 = n0 * C, min(n1 * C, T)
        full = (t1 - t0) // C
        if full:
            dst[:, t0:t0 + full * C].view(B, full, C, H, D).copy_(src[:full].permute(1, 0, 3, 2, 4))
        if full < M:
            r = t1 - t0 - full * C
            dst[:, t0 + full * C:t1].copy_(src[full, :, :, :r].permute(0, 2, 1, 3))


class _ChunkSimpleGLA(torch.autograd.Function):
    """The chunked form with a hand-written backward.

    Inputs q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) or None, s0 (B, H, K, V') or None, all in the compute
    dtype (any strides: segments are copied into the chunk-major layout as they are used); ``const``: g is the
    same at every step of a head (g_gamma), so Gamma is built once; ``C`` the chunk length; ``norm_eps`` None or
    the normaliser's epsilon (below). Returns o (B, T, H, V) and the final state (B, H, K, V'), V' = V (V + 1
    with the normaliser).

    Forward, per chunk n with start state S_n, d = cumsum(g) within the chunk:
        P = scale (Q K^T) * Gamma,   o = P V + scale (Q * exp(d)) S_n,   S_{n+1} = a_n S_n + (K * ek)^T V
    Backward, with dS_{n+1} the gradient reaching the state after chunk n (reverse scan
    dS_n = scale (Q * exp(d))^T dO_n + a_n dS_{n+1}):
        dV = P^T dO + (K * ek) dS_{n+1}
        dQ = scale (dO V^T * Gamma) K + scale (dO S_n^T) * exp(d)
        dK = scale (dO V^T * Gamma)^T Q + (V dS_{n+1}^T) * ek
    and for the decay, since g_t enters exactly the products that span step t:
        dg_t = sum_{i >= t} <dO_i, o'_i> - sum_{j >= t} <V_j, (P'^T dO)_j> + sum_{j < t} <K_j * ek_j, dK'_j>
               + a_n <dS_{n+1}, S_n>
    where P' is P without its diagonal, o' = P' V + scale (Q * exp(d)) S_n the output without the diagonal term
    P_ii v_i, and dK' = V dS_{n+1}^T. Every term there is a product that carries its own decay, so nothing large
    cancels: the gradient of a strong decay is as accurate as its (tiny) true value, rather than the rounding
    error of the undecayed diagonal terms (which is what the shorter identity dd_i = <dO_i, o_i> - <V_i, dV_i>
    would leave).

    Both passes walk the chunks in segments (:func:`_segment_chunks`): everything inside a segment is batched
    over its chunks, the state is carried from one segment to the next (backwards in the backward pass).
    Saved for the backward pass: the inputs and the chunk start states (and with the normaliser the output and
    its denominators); the backward recomputes each segment's P' (one batched matmul, :func:`_scores`), and the
    first term of dg needs no o': <dO_i, o'_i> = sum_j P'_ij (dO V^T)_ij + <(dO S_n^T)_i, scale q_i exp(d_i)>,
    both factors of which the backward forms anyway.

    With ``norm_eps`` (linear attention's normaliser) v is extended by a column of ones inside each segment, so
    the state is (K, V + 1) = [S | z] and the output's last column is the denominator den = scale q^T z; the
    output is num / (den + norm_eps), and the backward pass first turns dO into the gradient of [num | den]:
    dnum = dO / (den + eps), dden = -<dO, o> / (den + eps).
    """

    @staticmethod
    def forward(ctx, q, k, v, g, s0, scale, const, C, norm_eps):
        B, T, H, K = q.shape
        V = v.shape[-1]
        normalize = norm_eps is not None
        Vp = V + 1 if normalize else V                                   # with the normaliser: v' = [v | 1]
        BH, N = B * H, -(-T // C)
        lay = _Layout(B, T, H, C)
        M = _segment_chunks(N, BH, C, max(K, Vp), q.device)
        idx = torch.arange(C, device=q.device)
        mask = (idx[:, None] >= idx[None, :]).to(q.dtype)                # (C, C) causal, used without decay
        g_first = g_last = None
        if const:
            g_first = lay.load(g.unsqueeze(-1), 0, 1).squeeze(-1)           # (1, BH, C)
            g_last = lay.load(g.unsqueeze(-1), N - 1, N).squeeze(-1)
        gam_first = None if g_first is None else _gamma(g_first)         # (1, BH, C, C)
        gam_last = None if g_last is None else _gamma(g_last)

        states = q.new_empty(N + 1, BH, K, Vp)                           # chunk start states (and the final one)
        o = q.new_empty(B, T, H, V)
        den = q.new_empty(N, BH, C, 1) if normalize else None            # the normaliser's denominators
        if s0 is None:
            states[0].zero_()
        else:
            states[0].copy_(s0.reshape(BH, K, Vp))
        for n0 in range(0, N, M):
            n1 = min(N, n0 + M)
            m, nb = n1 - n0, (n1 - n0) * BH
            qs, ks, vs = lay.load(q, n0, n1), lay.load(k, n0, n1), lay.load(v, n0, n1)  # (m, BH, C, .)
            if normalize:
                vs = F.pad(vs, (0, 1), value=1.0)                        # (m, BH, C, V + 1)
            gs = None if g is None else lay.load(g.unsqueeze(-1), n0, n1).squeeze(-1)  # (m, BH, C)
            Ps, pds = _scores(qs, ks, gs, scale, mask, gam_first, gam_last, n0, N)
            q_in, k_in, a, _, _ = _inputs(qs, ks, gs, scale)
            inp = torch.matmul(k_in.transpose(-1, -2), vs)               # (m, BH, K, V) each chunk's own input
            for i in range(m):                                           # the sequential part: S <- a S + inp
                if a is None:
                    torch.add(inp[i], states[n0 + i], out=states[n0 + i + 1])
                else:
                    torch.addcmul(inp[i], a[i], states[n0 + i], out=states[n0 + i + 1])
            os_ = torch.matmul(Ps, vs)
            os_.view(nb, C, Vp).baddbmm_(q_in.view(nb, C, K), states[n0:n1].view(nb, K, Vp))
            os_.addcmul_(pds, vs)                                        # + the diagonal term P_ii v_i
            if normalize:
                den[n0:n1].copy_(os_[..., V:])
                os_ = os_[..., :V] / (os_[..., V:] + norm_eps)
            lay.store(o, os_, n0, n1)
        ctx.save_for_backward(q, k, v, g, states, gam_first, gam_last, o if normalize else None, den)
        ctx.scale, ctx.const, ctx.C, ctx.M, ctx.s0_shape = scale, const, C, M, None if s0 is None else s0.shape
        ctx.norm_eps = norm_eps
        return o, states[N].view(B, H, K, Vp).clone()

    @staticmethod
    @once_differentiable
    @full_precision  # a backward run inside an autocast region keeps the float32 math too
    def backward(ctx, do, dfinal):
        q, k, v, g, states, gam_first, gam_last, o, den = ctx.saved_tensors
        scale, const, C, M, norm_eps = ctx.scale, ctx.const, ctx.C, ctx.M, ctx.norm_eps
        B, T, H, K = q.shape
        V = v.shape[-1]
        normalize = norm_eps is not None
        Vp = V + 1 if normalize else V
        BH, N = B * H, -(-T // C)
        lay = _Layout(B, T, H, C)
        want_dg = g is not None and ctx.needs_input_grad[3]
        idx = torch.arange(C, device=q.device)
        mask = (idx[:, None] >= idx[None, :]).to(q.dtype)
        dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
        dg = q.new_empty(B, T, H) if want_dg else None
        carry = dfinal.reshape(BH, K, Vp) if dfinal is not None else q.new_zeros(BH, K, Vp)  # gradient at S_{n1}
        for n0 in reversed(range(0, N, M)):
            n1 = min(N, n0 + M)
            m, nb = n1 - n0, (n1 - n0) * BH
            qs, ks, vs, dos = (lay.load(t, n0, n1) for t in (q, k, v, do))
            if normalize:  # o = num / (den + eps): back to the gradient of v' = [v | 1]'s output [num | den]
                r = 1.0 / (den[n0:n1] + norm_eps)                        # (m, BH, C, 1)
                dden = _rowdot(dos, lay.load(o, n0, n1)).unsqueeze(-1) * r
                dos = torch.cat([dos * r, dden.neg_()], -1)              # (m, BH, C, V + 1)
                vs = F.pad(vs, (0, 1), value=1.0)
            gs = None if g is None else lay.load(g.unsqueeze(-1), n0, n1).squeeze(-1)
            Ps, pds = _scores(qs, ks, gs, scale, mask, gam_first, gam_last, n0, N)  # recomputed, not kept
            S0s = states[n0:n1]
            q_in, k_in, a, eq, ek = _inputs(qs, ks, gs, scale)
            dS = torch.matmul(q_in.transpose(-1, -2), dos)               # (m, BH, K, V) from each chunk's reads
            dinp = torch.empty_like(dS)                                  # dinp[i] = gradient reaching S_{n0+i+1}
            dinp[m - 1].copy_(carry)
            for i in range(m - 1, 0, -1):
                if a is None:
                    torch.add(dS[i], dinp[i], out=dinp[i - 1])
                else:
                    torch.addcmul(dS[i], a[i], dinp[i], out=dinp[i - 1])
            carry = dS[0] + (dinp[0] if a is None else a[0] * dinp[0])
            dvs = torch.matmul(Ps.transpose(-1, -2), dos)                # P'^T dO
            dsc = torch.matmul(dos, vs.transpose(-1, -2))                # (m, BH, C, C): dO V^T
            dqs = torch.matmul(dos, S0s.transpose(-1, -2))               # dO S_n^T
            if want_dg:  # <dO_i, o'_i> = sum_j P'_ij (dO V^T)_ij + <(dO S_n^T)_i, q_in_i>, then - <v_i, (P'^T dO)_i>
                x = _rowdot(Ps, dsc) + _rowdot(dqs, q_in) - _rowdot(vs, dvs)  # (m, BH, C)
            dvs.addcmul_(pds, dos).view(nb, C, Vp).baddbmm_(k_in.view(nb, C, K), dinp.view(nb, K, Vp))
            lay.store(dv, dvs[..., :V] if normalize else dvs, n0, n1)
            if g is None:                                                # dsc becomes d(Q K^T) / scale
                dsc.mul_(mask)
            elif const:
                dsc[: N - 1 - n0].mul_(gam_first)
                if n1 == N:
                    dsc[-1:].mul_(gam_last)
            else:
                dsc.mul_(_gamma(gs))
            dqs.mul_(scale if g is None else eq * scale).view(nb, C, K).baddbmm_(
                dsc.view(nb, C, C), ks.view(nb, C, K), alpha=scale)
            lay.store(dq, dqs, n0, n1)
            dks = torch.matmul(vs, dinp.transpose(-1, -2))               # d k_in
            if want_dg:
                ck = _rowdot(dks, k_in)                                  # <K_j * ek_j, dK'_j>
                dgs = x.flip(-1).cumsum(-1).flip(-1)                     # the sums over i >= t, j >= t
                dgs[..., 1:] += ck[..., :-1].cumsum(-1)                  # the sum over j < t
                dgs += a.view(m, BH, 1) * (dinp * S0s).sum((-1, -2)).unsqueeze(-1)  # a_n <dS_{n+1}, S_n>
                lay.store(dg.unsqueeze(-1), dgs.unsqueeze(-1), n0, n1)
            if g is not None:
                dks.mul_(ek)
            dks.view(nb, C, K).baddbmm_(dsc.view(nb, C, C).transpose(-1, -2), qs.view(nb, C, K), alpha=scale)
            lay.store(dk, dks, n0, n1)
        ds0 = carry.view(ctx.s0_shape) if ctx.s0_shape is not None and ctx.needs_input_grad[4] else None
        return dq, dk, dv, dg, ds0, None, None, None, None


def _chunked(q, k, v, g, g_gamma, initial_state, scale, output_final_state, chunk_size, norm_eps=None):
    """chunk_simple_gla, and with ``norm_eps`` set the normalised variant used by linear attention: the output
    is divided by (scale q_t^T z_t + norm_eps), z_t = a_t z_{t-1} + k_t, carried as an extra state column
    (initial and final states (B, H, K, V + 1) = [S | z])."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    Vp = v.shape[-1] + (1 if norm_eps is not None else 0)
    s0 = initial_state
    if s0 is not None and norm_eps is not None:  # checked here against the (K, V + 1) shape
        if s0.shape != (*q.shape[:1], q.shape[2], q.shape[3], Vp):
            raise ValueError(f"initial_state must be (B, H, K, V + 1) = {(q.shape[0], q.shape[2], q.shape[3], Vp)}; "
                             f"got {tuple(s0.shape)}")
        s0 = None
    q, k, v, g, g_gamma, S, scale = _prepare(q, k, v, g, g_gamma, scale, s0)
    if S is None and initial_state is not None:
        S = initial_state.to(q.dtype)
    B, T, H, K = q.shape
    if T == 0:
        S = q.new_zeros(B, H, K, Vp) if S is None else S
        return v.new_zeros(B, 0, H, v.shape[-1]).to(out_dtype), (S if output_final_state else None)
    if g_gamma is not None:
        g = g_gamma.expand(B, T, H)
    o, final = _ChunkSimpleGLA.apply(q, k, v, g, S, scale, g_gamma is not None, min(chunk_size, T), norm_eps)
    return o.to(out_dtype), (final if output_final_state else None)


@full_precision
def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    g_gamma: Optional[torch.Tensor] = None,
):
    """Chunked parallel form (module docstring); same arguments and results as :func:`recurrent_simple_gla`.
    Differentiable once in every input (a hand-written backward)."""
    return _chunked(q, k, v, g, g_gamma, initial_state, scale, output_final_state, chunk_size)
