"""The chunked ops' layout: the caller's (B, T, heads, dim) tensors to the chunk-major (N, B*HV, C, D) form the
chunked forms compute on, and back, with the preparation of q and k (compute dtype, heads repeated to the value
heads, optional l2norm, the query scale) and the backward of each step. An op's autograd function can then keep
the caller's tensors themselves (in a layer, views of one activation that the layer keeps anyway) rather than
prepared copies, and recompute the copies in its backward: the gated delta rule (runner/ops/gated_delta_rule.py)
and KDA (runner/ops/kda.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rnorm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / sqrt(sum(x^2) + eps) over the last dim: the l2norm's factor (the convention of flash-linear-attention
    and Qwen3-Next: x * rnorm(x))."""
    return torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + 1e-6) over the last dim (the ops' recurrent forms; the chunked ones go through
    :meth:`ChunkLayout.prepare`)."""
    return x * rnorm(x)


class ChunkLayout:
    """One op call's shapes and the moves between the two layouts. ``whole_chunks``: a sequence shorter than
    ``chunk_size`` is padded to a whole chunk (KDA's halving tree needs C = chunk_size, a power of two) instead of
    being one shorter chunk."""

    def __init__(self, q, v, scale, l2norm, chunk_size, whole_chunks: bool = False):
        self.B, self.T, self.H, self.K = q.shape
        self.HV, self.V = v.shape[2], v.shape[3]
        self.C = chunk_size if whole_chunks else max(1, min(chunk_size, self.T))
        self.N = -(-self.T // self.C)
        self.pad = self.N * self.C - self.T
        self.scale = self.K ** -0.5 if scale is None else scale
        self.l2norm = l2norm
        self.dt = torch.float64 if q.dtype == torch.float64 else torch.float32

    def chunks(self, t):
        """(B, T, HV, D) -> (N, B*HV, C, D), padded with zeros (identity steps), chunk-major so that the scan reads
        contiguous slices."""
        B, N, C, HV = self.B, self.N, self.C, self.HV
        t = t.to(self.dt)
        if self.pad:
            t = F.pad(t, (0, 0, 0, 0, 0, self.pad))
        return t.reshape(B, N, C, HV, -1).permute(1, 0, 3, 2, 4).reshape(N, B * HV, C, t.shape[-1]).contiguous()

    def unchunks(self, t):
        """The inverse of :meth:`chunks` (without the padding): (N, B*HV, C, D) -> (B, T, HV, D)."""
        B, N, C, HV = self.B, self.N, self.C, self.HV
        return t.reshape(N, B, HV, C, -1).permute(1, 0, 3, 2, 4).reshape(B, N * C, HV, t.shape[-1])[:, :self.T]

    def _qk(self, x):
        """q or k (B, T, H, K) -> repeated to the value heads (and l2-normalised): (x', r) with r the l2norm's
        reciprocal norms (None without it)."""
        x = x.to(self.dt)
        if self.HV != self.H:
            x = x.repeat_interleave(self.HV // self.H, dim=2)
        if not self.l2norm:
            return x, None
        r = rnorm(x)
        return x * r, r

    def _per_step(self, t):
        """A per-step, per-head tensor (B, T, HV) -> (N, B*HV, C); a per-channel one (B, T, HV, D) as in
        :meth:`chunks`."""
        return self.chunks(t) if t.dim() == 4 else self.chunks(t.unsqueeze(-1)).squeeze(-1)

    def prepare(self, q, k, v, g, beta):
        """Chunk-major q (scaled), k, v, g (per head or per channel), beta, computed from the caller's tensors."""
        qn, _ = self._qk(q)
        kn, _ = self._qk(k)
        return self.chunks(qn * self.scale), self.chunks(kn), self.chunks(v), self._per_step(g), self._per_step(beta)

    def grad(self, dt, t):
        """The gradient of the caller's v, g or beta from that of its chunk-major form."""
        dt = self.unchunks(dt) if t.dim() == 4 else self.unchunks(dt.unsqueeze(-1)).squeeze(-1)
        return dt.to(t.dtype)

    def qk_grad(self, dx, x):
        """The gradient of the caller's q or k from that of its prepared chunk-major form (scale not included)."""
        dx = self.unchunks(dx)
        if self.l2norm:
            xn, r = self._qk(x)
            dx = r * (dx - xn * (dx * xn).sum(-1, keepdim=True))  # through x * rsqrt(sum x^2 + eps)
        if self.HV != self.H:
            dx = dx.reshape(self.B, self.T, self.H, self.HV // self.H, self.K).sum(3)
        return dx.to(x.dtype)
