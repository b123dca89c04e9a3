"""RMSNorm and the gated output norm with hand-written backwards that keep only their inputs.

    rms_norm(x, w)            = x * r * w,                 r = rsqrt(mean(x^2) + eps)     (per row)
    gated_rms_norm(o, z, w)   = o * r * w * act(z),        r = rsqrt(mean(o^2) + eps),   act = SiLU or sigmoid

Written out with autograd, each keeps several row-sized intermediates for its backward (the upcast input, the
normalised rows, the product before the gate, the gate): the norms were the largest single item of a block's
activation memory (``python -m runner.benchmarks.saved``). ``gated_rms_norm_linear`` also takes the output
projection that follows the gated norm, whose input is then recomputed rather than kept. These keep the inputs
(in their own dtype) and r (one number per row) and recompute the rest in the backward:

    n = x r,  dn = dy * w (times act(z) for the gated form),   dx = r (dn - n mean(dn * n)),   dw = sum(dy * n ...)
    dz = dy * n w * act'(z),   act'(z) = s (1 + z (1 - s)) for SiLU, s (1 - s) for the sigmoid, s = sigmoid(z)

Computation in float32 for float32/bfloat16/float16 inputs (float64 for float64); outputs in the input's dtype.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rstd(xf: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _gate(zf: torch.Tensor, activation: str):
    """act(z) and its derivative."""
    s = torch.sigmoid(zf)
    if activation == "silu":
        return zf * s, s * (1 + zf * (1 - s))
    return s, s * (1 - s)


def _norm_backward(dn: torch.Tensor, n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """dx for n = x * r with r = rsqrt(mean(x^2) + eps), given dn."""
    return r * (dn - n * (dn * n).mean(-1, keepdim=True))


def _sum_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).sum(0)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset):
        xf = x.to(_compute_dtype(x))
        r = _rstd(xf, eps)
        w = weight.to(xf.dtype) + offset
        ctx.save_for_backward(x, weight, r)
        ctx.offset = offset
        return (xf * r * w).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, r = ctx.saved_tensors
        xf = x.to(r.dtype)
        dyf = dy.to(r.dtype)
        n = xf * r
        dx = _norm_backward(dyf * (weight.to(r.dtype) + ctx.offset), n, r)
        dw = _sum_rows(dyf * n).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dx.to(x.dtype), dw, None, None


def _gated_forward(o, z, weight, eps, activation):
    """RMSNorm(o) * weight * act(z) in the compute dtype, and r = 1/rms(o)."""
    of = o.to(_compute_dtype(o))
    r = _rstd(of, eps)
    act, _ = _gate(z.to(of.dtype), activation)
    return of * r * weight.to(of.dtype) * act, r


def _gated_backward(dy, o, z, weight, r, activation, need_dw: bool):
    """(do, dz, dweight) of :func:`_gated_forward` from dy, recomputing its factors from o, z and r."""
    dt = r.dtype
    of, zf, dyf, w = o.to(dt), z.to(dt), dy.to(dt), weight.to(dt)
    act, dact = _gate(zf, activation)
    n = of * r
    do = _norm_backward(dyf * act * w, n, r)
    dz = dyf * n * w * dact
    dw = _sum_rows(dyf * act * n).to(weight.dtype) if need_dw else None
    return do.to(o.dtype), dz.to(z.dtype), dw


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, z, weight, eps, activation):
        y, r = _gated_forward(o, z, weight, eps, activation)
        ctx.save_for_backward(o, z, weight, r)
        ctx.activation = activation
        return y.to(o.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        o, z, weight, r = ctx.saved_tensors
        return *_gated_backward(dy, o, z, weight, r, ctx.activation, ctx.needs_input_grad[2]), None, None


class _GatedRMSNormLinear(torch.autograd.Function):
    """linear(gated_rms_norm(o, z, w).flatten(-2), W): the gated output norm of a linear mixer and its output
    projection as one step, so that the projection's input (the normalised, gated rows) is recomputed in the
    backward instead of kept."""

    @staticmethod
    def forward(ctx, o, z, weight, eps, activation, W):
        y, r = _gated_forward(o, z, weight, eps, activation)
        ctx.save_for_backward(o, z, weight, r, W)
        ctx.activation = activation
        return torch.nn.functional.linear(y.to(o.dtype).flatten(-2), W)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        o, z, weight, r, W = ctx.saved_tensors
        dW = None
        if ctx.needs_input_grad[5]:
            act, _ = _gate(z.to(r.dtype), ctx.activation)
            y = (o.to(r.dtype) * r * weight.to(r.dtype) * act).to(o.dtype).flatten(-2)  # the projection's input
            dW = dout.reshape(-1, dout.shape[-1]).t().to(W.dtype) @ y.reshape(-1, y.shape[-1]).to(W.dtype)
        dy = (dout @ W.to(dout.dtype)).view(o.shape)
        do, dz, dw = _gated_backward(dy, o, z, weight, r, ctx.activation, ctx.needs_input_grad[2])
        return do, dz, dw, None, None, dW


def gated_rms_norm_linear(o: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, activation: str,
                          W: torch.Tensor) -> torch.Tensor:
    """``F.linear(gated_rms_norm(o, z, weight, eps, activation).flatten(-2), W)`` for o, z (..., heads, dim),
    keeping only o, z and 1/rms for the backward."""
    if activation not in ("silu", "sigmoid"):
        raise ValueError(f"activation must be 'silu' or 'sigmoid', got {activation!r}")
    return _GatedRMSNormLinear.apply(o, z, weight, eps, activation, W)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered: bool = False) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * w over the last dim, w = weight (or 1 + weight when ``zero_centered``)."""
    return _RMSNorm.apply(x, weight, eps, 1.0 if zero_centered else 0.0)


def gated_rms_norm(o: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                   activation: str = "silu") -> torch.Tensor:
    """RMSNorm(o) * weight * act(z) over the last dim, act = SiLU or sigmoid."""
    if activation not in ("silu", "sigmoid"):
        raise ValueError(f"activation must be 'silu' or 'sigmoid', got {activation!r}")
    return _GatedRMSNorm.apply(o, z, weight, eps, activation)
