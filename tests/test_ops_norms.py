"""The hand-written norms equal the autograd formulas (outputs and every gradient, float64 and bfloat16 inputs)
and keep only their inputs for the backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.ops.norms import gated_rms_norm, rms_norm
from tests.test_ops_saved_memory import saved_bytes


def ref_rms(x, w, eps, zero_centered):
    xf = x.double()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (w.double() + (1 if zero_centered else 0)))


def ref_gated(o, z, w, eps, activation):
    zf = z.double()
    act = F.silu(zf) if activation == "silu" else torch.sigmoid(zf)
    return ref_rms(o, w, eps, False) * act


def _grads(fn, *xs):
    xs = [t.detach().clone().requires_grad_() for t in xs]
    out = fn(*xs)
    wo = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out.double() * wo).sum().backward()
    return [out.detach().double()] + [t.grad.double() for t in xs]


@pytest.mark.parametrize("zero_centered", [False, True])
def test_rms_norm_equals_formula(zero_centered):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * 3
    w = torch.randn(16, generator=g, dtype=torch.float64)
    a = _grads(lambda x, w: rms_norm(x, w, 1e-6, zero_centered), x, w)
    b = _grads(lambda x, w: ref_rms(x, w, 1e-6, zero_centered), x, w)
    for name, u, v in zip(["out", "dx", "dw"], a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_gated_rms_norm_equals_formula(activation):
    g = torch.Generator().manual_seed(0)
    o = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    z = torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * 4
    w = torch.randn(16, generator=g, dtype=torch.float64)
    a = _grads(lambda o, z, w: gated_rms_norm(o, z, w, 1e-6, activation), o, z, w)
    b = _grads(lambda o, z, w: ref_gated(o, z, w, 1e-6, activation), o, z, w)
    for name, u, v in zip(["out", "do", "dz", "dw"], a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12, msg=name)


def test_bfloat16_inputs_compute_in_float32_and_keep_dtype():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(4, 32, generator=g).bfloat16().requires_grad_()
    z = torch.randn(4, 32, generator=g).bfloat16().requires_grad_()
    w = torch.rand(32, generator=g).requires_grad_()
    y = gated_rms_norm(o, z, w, 1e-6)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert o.grad.dtype == z.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    ref = ref_gated(o.detach().float(), z.detach().float(), w.detach(), 1e-6, "silu")
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)


def test_norms_keep_only_their_inputs():
    B, T, D = 2, 64, 32
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    w = torch.ones(D)
    inputs, rows = B * T * D * 4, B * T * 4
    got = saved_bytes(lambda **kw: (rms_norm(kw["x"].requires_grad_(), w, 1e-6), None), {"x": x.clone()})
    assert got <= inputs + rows + D * 4
    got = saved_bytes(lambda **kw: (gated_rms_norm(kw["o"].requires_grad_(), kw["z"].requires_grad_(), w, 1e-6), None),
                      {"o": x.clone(), "z": z.clone()})
    assert got <= 2 * inputs + rows + D * 4


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_gated_rms_norm_linear_equals_norm_then_linear(activation):
    from runner.ops.norms import gated_rms_norm_linear

    g = torch.Generator().manual_seed(0)
    o = torch.randn(2, 5, 3, 8, generator=g, dtype=torch.float64)
    z = torch.randn(2, 5, 3, 8, generator=g, dtype=torch.float64)
    w = torch.randn(8, generator=g, dtype=torch.float64)
    W = torch.randn(6, 24, generator=g, dtype=torch.float64)
    a = _grads(lambda o, z, w, W: gated_rms_norm_linear(o, z, w, 1e-6, activation, W), o, z, w, W)
    b = _grads(lambda o, z, w, W: F.linear(ref_gated(o, z, w, 1e-6, activation).flatten(-2), W), o, z, w, W)
    for name, u, v in zip(["out", "do", "dz", "dw", "dW"], a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12, msg=name)
