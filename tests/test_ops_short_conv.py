"""The short causal depthwise convolution (runner.ops.short_conv) against PyTorch's F.conv1d over the
left-padded sequence, outputs and gradients of every input (x, weight, bias, tail), and chunked == whole."""

import pytest
import torch
import torch.nn.functional as F

from runner.mixers.base import ShortConv
from runner.ops.short_conv import causal_conv1d

F64 = torch.float64


def _reference(x, weight, bias, tail, silu):
    """F.conv1d over [tail; x] in PyTorch's (B, C, T) layout."""
    B, T, C = x.shape
    K = weight.shape[-1]
    if tail is None:
        tail = x.new_zeros(B, K - 1, C)
    xp = torch.cat([tail, x], dim=1).transpose(1, 2)
    y = F.conv1d(xp, weight, bias, groups=C).transpose(1, 2)
    return F.silu(y) if silu else y


def _inputs(B, T, C, K, seed, bias, tail):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=F64)
    w = torch.randn(C, 1, K, generator=g, dtype=F64)
    b = torch.randn(C, generator=g, dtype=F64) if bias else None
    t = torch.randn(B, K - 1, C, generator=g, dtype=F64) if tail else None
    return x, w, b, t


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("bias,tail,silu", [(False, False, True), (True, True, True), (True, True, False),
                                            (False, True, False)])
def test_matches_conv1d_values_and_gradients(K, bias, tail, silu):
    inputs = _inputs(2, 11, 6, K, seed=K, bias=bias, tail=tail)
    leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
    ref_leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
    y, _ = causal_conv1d(*leaves, activation="silu" if silu else None)
    y_ref = _reference(*ref_leaves, silu)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(99), dtype=F64)
    used = [t for t in leaves if t is not None]
    used_ref = [t for t in ref_leaves if t is not None]
    grads = torch.autograd.grad((y * dy).sum(), used)
    grads_ref = torch.autograd.grad((y_ref * dy).sum(), used_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_gradcheck():
    x, w, b, t = (z.requires_grad_() for z in _inputs(1, 5, 3, 4, seed=3, bias=True, tail=True))
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a)[0], (x, w, b, t))


@pytest.mark.parametrize("T", [1, 2, 7])
def test_pieces_with_carried_tail_equal_the_whole(T):
    """Running a sequence in pieces (the returned tail fed to the next piece) equals one call over it all,
    also for pieces shorter than the kernel."""
    x, w, b, _ = _inputs(2, 3 * T, 5, 4, seed=T, bias=True, tail=False)
    whole, tail_whole = causal_conv1d(x, w, b)
    outs, tail = [], None
    for i in range(3):
        y, tail = causal_conv1d(x[:, i * T:(i + 1) * T], w, b, tail)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tail, tail_whole, rtol=0, atol=0)
    torch.testing.assert_close(tail_whole, x[:, -3:], rtol=0, atol=0)


def test_the_tail_is_a_copy_not_a_view_of_the_input():
    x, w, _, _ = _inputs(1, 50, 4, 4, seed=6, bias=False, tail=False)
    _, tail = causal_conv1d(x, w)
    assert tail.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert tail.untyped_storage().nbytes() == tail.numel() * tail.element_size()


def test_low_precision_inputs_are_computed_in_float32_and_returned_in_their_dtype():
    x, w, _, _ = _inputs(2, 16, 8, 4, seed=5, bias=False, tail=False)
    y16, _ = causal_conv1d(x.to(torch.bfloat16), w.float())
    y32 = _reference(x.to(torch.bfloat16).float(), w.float(), None, None, True)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=1e-2, atol=1e-2)


def test_module_keeps_the_channels_first_state_layout():
    conv = ShortConv(6, 4, activation="silu").double()
    x = torch.randn(2, 9, 6, dtype=F64)
    y, tail = conv(x)
    assert tail.shape == (2, 6, 3)
    torch.testing.assert_close(tail, x[:, -3:].transpose(1, 2))
    y2, _ = conv(x[:, 5:], conv(x[:, :5])[1])
    torch.testing.assert_close(y2, y[:, 5:], rtol=1e-12, atol=1e-12)


def test_bad_activation_is_refused():
    with pytest.raises(ValueError, match="silu"):
        causal_conv1d(torch.zeros(1, 2, 3), torch.zeros(3, 1, 4), activation="gelu")
