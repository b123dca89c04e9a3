"""The gated delta rule and delta rule ops: chunked == recurrent (outputs, final state, gradients of every input),
strong and weak decays, initial states, grouped value heads, and agreement with transformers' Qwen3-Next
reference functions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import runner.ops.gated_delta_rule as gdr
from runner.ops.delta_rule import chunk_delta_rule, recurrent_delta_rule
from runner.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from tests.contract import rel_rms


def _inputs(B, T, H, K, V, HV=None, dtype=torch.float64, g_scale=1.0, seed=0, state=True, beta_max=1.0):
    gen = torch.Generator().manual_seed(seed)
    HV = HV or H
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, HV, V, generator=gen, dtype=dtype)
    g = -g_scale * torch.rand(B, T, HV, generator=gen, dtype=dtype)  # log decay in [-g_scale, 0]
    beta = beta_max * torch.rand(B, T, HV, generator=gen, dtype=dtype)  # 2: allow_neg_eigval's range
    s0 = torch.randn(B, HV, K, V, generator=gen, dtype=dtype) if state else None
    return q, k, v, g, beta, s0


def _run_with_grads(fn, q, k, v, g, beta, s0, seed=1, allow_unused=False, **kw):
    """Outputs, final state and the gradients of a random linear function of both w.r.t. every input."""
    xs = [t.detach().clone().requires_grad_() for t in (q, k, v, g, beta)]
    s = None if s0 is None else s0.detach().clone().requires_grad_()
    o, S = fn(*xs, initial_state=s, output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(seed)
    wo = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    ws = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    loss = (o * wo).sum() + (S * ws).sum()
    grads = torch.autograd.grad(loss, xs + ([s] if s is not None else []), allow_unused=allow_unused)
    return [o.detach(), S.detach()] + list(grads)


NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dinitial_state"]


def _compare(a, b, tol, names=NAMES):
    assert len(a) == len(b)
    for name, x, y in zip(names, a, b):
        assert torch.isfinite(x).all(), f"{name} has non-finite values"
        err = rel_rms(x, y)
        assert err < tol, f"{name}: rel rms {err:.3e} >= {tol:.0e}"


@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("g_scale", [1e-3, 1.0, 20.0])
def test_chunk_equals_recurrent_fp64(T, g_scale):
    x = _inputs(2, T, 2, 16, 8, g_scale=g_scale)
    a = _run_with_grads(chunk_gated_delta_rule, *x)
    b = _run_with_grads(recurrent_gated_delta_rule, *x)
    _compare(a, b, 1e-11)


@pytest.mark.parametrize("T,chunk_size", [(65, 64), (130, 16)])
@pytest.mark.parametrize("g_scale", [1e-3, 1.0])
def test_negative_eigenvalues_chunk_equals_recurrent(T, chunk_size, g_scale):
    """beta in (0, 2) (allow_neg_eigval): the transition I - beta k k^T has eigenvalue 1 - beta < 0 along k; the
    chunked form's (I + L)^-1 is still unit lower triangular, so it must match the recurrence as closely."""
    x = _inputs(2, T, 2, 16, 8, g_scale=g_scale, beta_max=2.0)
    assert x[4].max() > 1.9
    a = _run_with_grads(chunk_gated_delta_rule, *x, chunk_size=chunk_size)
    b = _run_with_grads(recurrent_gated_delta_rule, *x)
    _compare(a, b, 1e-11)
    q, k, v, _, beta, s0 = x  # the delta rule (DeltaNet) likewise
    d = _run_with_grads(lambda q, k, v, g, beta, **kw: chunk_delta_rule(q, k, v, beta, chunk_size=chunk_size, **kw),
                        q, k, v, torch.zeros_like(beta), beta, s0, allow_unused=True)
    r = _run_with_grads(lambda q, k, v, g, beta, **kw: recurrent_delta_rule(q, k, v, beta, **kw),
                        q, k, v, torch.zeros_like(beta), beta, s0, allow_unused=True)
    _compare(d[:5] + d[6:], r[:5] + r[6:], 1e-11, NAMES[:5] + NAMES[6:])


def test_negative_eigenvalue_flips_the_state_along_k():
    """beta = 2, no decay, v = 0, k a unit vector: one step reflects the state, S_1 = (I - 2 k k^T) S_0, so
    k^T S_1 = -k^T S_0 (the sign flip parity needs) and the rest of S_0 is kept."""
    q, k, v, g, beta, s0 = _inputs(1, 1, 1, 8, 4)
    _, S = recurrent_gated_delta_rule(q, k, torch.zeros_like(v), torch.zeros_like(g), torch.full_like(beta, 2.0),
                                      initial_state=s0, output_final_state=True)
    kk = k[0, 0, 0]
    assert torch.allclose(kk @ S[0, 0], -(kk @ s0[0, 0]), atol=1e-12)
    P = torch.eye(8, dtype=kk.dtype) - torch.outer(kk, kk)  # the part orthogonal to k
    assert torch.allclose(P @ S[0, 0], P @ s0[0, 0], atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 16])
def test_chunk_sizes_and_no_initial_state(chunk_size):
    x = _inputs(1, 45, 2, 8, 8, state=False)
    a = _run_with_grads(chunk_gated_delta_rule, *x, chunk_size=chunk_size)
    b = _run_with_grads(recurrent_gated_delta_rule, *x)
    _compare(a, b, 1e-11)


def test_chunk_equals_recurrent_long_fp32():
    x = _inputs(1, 1000, 2, 16, 16, dtype=torch.float32, g_scale=0.2)
    a = _run_with_grads(chunk_gated_delta_rule, *x)
    b = _run_with_grads(recurrent_gated_delta_rule, *x)
    _compare(a, b, 2e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_strong_decay(dtype, tol):
    """g = -20 on every step: cumulative decays underflow within a chunk; nothing may overflow, and the gradients
    (dg is tiny, about exp(-20)) must keep their relative accuracy. Reference: recurrent form in float64."""
    q, k, v, g, beta, s0 = _inputs(2, 200, 2, 16, 16, dtype=dtype)
    g = torch.full_like(g, -20.0)
    a = _run_with_grads(chunk_gated_delta_rule, q, k, v, g, beta, s0)
    b = _run_with_grads(recurrent_gated_delta_rule, *(t.double() for t in (q, k, v, g, beta, s0)))
    _compare(a, b, tol)


def test_grouped_value_heads():
    """HV = 3 H: each q/k head serves 3 consecutive value heads."""
    x = _inputs(2, 70, 2, 8, 4, HV=6)
    a = _run_with_grads(chunk_gated_delta_rule, *x, chunk_size=16)
    b = _run_with_grads(recurrent_gated_delta_rule, *x)
    _compare(a, b, 1e-11)
    q, k, v, g, beta, s0 = x
    rep = [t.repeat_interleave(3, dim=2) for t in (q, k)]
    c = _run_with_grads(recurrent_gated_delta_rule, *rep, v, g, beta, s0)
    for name, x1, x2 in zip(NAMES[:2], a, c):
        assert rel_rms(x1, x2) < 1e-11, name


def test_groups_of_chunks(monkeypatch):
    """The chunk loop processes groups of chunks; one chunk per group gives the same results."""
    x = _inputs(2, 60, 2, 8, 8)
    a = _run_with_grads(chunk_gated_delta_rule, *x, chunk_size=8)
    monkeypatch.setattr(gdr, "_GROUP_ELEMS", 1)
    assert gdr._group_size(4, 8, 8) == 1
    b = _run_with_grads(chunk_gated_delta_rule, *x, chunk_size=8)
    _compare(a, b, 1e-13)


@pytest.mark.parametrize("T, chunk_size, g_scale", [(130, 16, 1.0), (65, 64, 20.0), (60, 8, 1e-3)])
def test_keep_factors_gives_the_recomputing_backward_s_results(T, chunk_size, g_scale, monkeypatch):
    """keep_factors=True (the forward's intra-chunk factors kept for the backward) and the default (recomputed
    from the inputs and chunk start states) are the same math: both match the recurrent form, with several groups
    of chunks so that the kept factors are looked up group by group."""
    monkeypatch.setattr(gdr, "_GROUP_ELEMS", 2 * 4 * chunk_size * max(chunk_size, 16))  # two chunks per group
    assert gdr._group_size(4, chunk_size, 16) == 2
    x = _inputs(2, T, 2, 16, 8, g_scale=g_scale)
    ref = _run_with_grads(recurrent_gated_delta_rule, *x)
    for keep in (False, True):
        _compare(_run_with_grads(chunk_gated_delta_rule, *x, chunk_size=chunk_size, keep_factors=keep), ref, 1e-11)


def test_no_grad_path_and_dtypes():
    q, k, v, g, beta, s0 = _inputs(2, 50, 2, 8, 8, dtype=torch.float32)
    with torch.no_grad():
        o1, S1 = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    o2, S2 = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert rel_rms(o1, o2) < 1e-5 and rel_rms(S1, S2) < 1e-5
    o3, S3 = chunk_gated_delta_rule(*(t.bfloat16() for t in (q, k, v, g, beta)), initial_state=s0,
                                    output_final_state=True)
    assert o3.dtype == torch.bfloat16 and S3.dtype == torch.float32
    assert rel_rms(o3, o2) < 3e-2
    o4, S4 = chunk_gated_delta_rule(q, k, v, g, beta)
    assert S4 is None and o4.shape == v.shape


def test_scale_and_l2norm_options():
    q, k, v, g, beta, s0 = _inputs(1, 40, 2, 8, 8)
    k2 = 3.0 * k  # not unit norm: the in-kernel l2norm must fix it
    o1, _ = chunk_gated_delta_rule(2 * q, k2, v, g, beta, scale=0.1, use_qk_l2norm_in_kernel=True, chunk_size=16)
    o2, _ = recurrent_gated_delta_rule(2 * q, k2, v, g, beta, scale=0.1, use_qk_l2norm_in_kernel=True)
    o3, _ = recurrent_gated_delta_rule(F.normalize(q, dim=-1, eps=0) * 0.1 / 8 ** -0.5, k, v, g, beta)
    assert rel_rms(o1, o2) < 1e-11
    assert rel_rms(o2, o3) < 1e-6  # l2norm's eps=1e-6 inside the sqrt


@pytest.mark.parametrize("HV", [2, 4])
def test_in_kernel_l2norm_scale_and_grouped_heads_gradients(HV):
    """The chunked op prepares q and k itself (l2norm, scale, repetition to the value heads) and writes the
    backward of each step by hand: every gradient matches the recurrent form, where autograd does it."""
    q, k, v, g, beta, s0 = _inputs(2, 45, 2, 8, 4, HV=HV)
    kw = dict(scale=0.3, use_qk_l2norm_in_kernel=True)
    a = _run_with_grads(chunk_gated_delta_rule, 2 * q, 3 * k, v, g, beta, s0, chunk_size=16, **kw)
    b = _run_with_grads(recurrent_gated_delta_rule, 2 * q, 3 * k, v, g, beta, s0, **kw)
    _compare(a, b, 1e-11)


def test_bfloat16_gradients_come_back_in_the_inputs_dtype():
    x = _inputs(1, 40, 2, 8, 8, dtype=torch.float32)
    xb = [t.bfloat16() for t in x[:5]] + [x[5]]
    a = _run_with_grads(chunk_gated_delta_rule, *xb, chunk_size=16, use_qk_l2norm_in_kernel=True)
    b = _run_with_grads(recurrent_gated_delta_rule, *[t.float() for t in xb[:5]], x[5], use_qk_l2norm_in_kernel=True)
    for name, u, w, inp in zip(NAMES[2:7], a[2:7], b[2:7], xb):
        assert u.dtype == inp.dtype == torch.bfloat16, name
        assert rel_rms(u.float(), w) < 2e-2, name
    assert a[7].dtype == torch.float32  # the state's gradient in the state's dtype


def test_delta_rule_is_gated_with_zero_decay():
    q, k, v, g, beta, s0 = _inputs(2, 70, 2, 8, 8)
    zero = torch.zeros_like(g)
    a = _run_with_grads(lambda q, k, v, g, beta, **kw: chunk_delta_rule(q, k, v, beta, chunk_size=16, **kw),
                        q, k, v, zero.requires_grad_(), beta, s0, allow_unused=True)
    b = _run_with_grads(lambda q, k, v, g, beta, **kw: recurrent_delta_rule(q, k, v, beta, **kw),
                        q, k, v, zero, beta, s0, allow_unused=True)
    assert a[5] is None and b[5] is None  # g is not an input of the delta rule
    names = NAMES[:5] + NAMES[6:]
    _compare(a[:5] + a[6:], b[:5] + b[6:], 1e-11, names)
    c = _run_with_grads(recurrent_gated_delta_rule, q, k, v, zero, beta, s0)
    _compare(a[:5] + a[6:], c[:5] + c[6:], 1e-11, names)


def test_bad_shapes_are_errors():
    q, k, v, g, beta, s0 = _inputs(1, 5, 2, 8, 8)
    with pytest.raises(ValueError, match="multiple"):
        chunk_gated_delta_rule(q, k, v[:, :, :1].expand(1, 5, 3, 8), g[..., :1].expand(1, 5, 3), beta[..., :1]
                               .expand(1, 5, 3))
    with pytest.raises(ValueError, match="initial_state"):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0[:, :1])
    with pytest.raises(ValueError, match="beta"):
        recurrent_gated_delta_rule(q, k, v, g, beta[:, :3])


# ---- against transformers' Qwen3-Next reference functions -----------------------------------------------------

def _hf():
    mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    unwrap = lambda f: getattr(f, "__wrapped__", f)  # the pure-PyTorch path, never a hub or fla kernel
    return unwrap(mod.torch_chunk_gated_delta_rule), unwrap(mod.torch_recurrent_gated_delta_rule)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,HV,beta_max", [(1, 2, 1.0), (63, 2, 1.0), (65, 4, 1.0), (200, 2, 1.0), (130, 2, 2.0)])
def test_against_transformers(dtype, T, HV, beta_max):
    """beta_max 2: allow_neg_eigval's range (their functions take any beta)."""
    hf_chunk, hf_rec = _hf()
    q, k, v, g, beta, s0 = _inputs(2, T, 2, 16, 8, HV=HV, dtype=dtype, seed=3, beta_max=beta_max)
    q, k = 2 * q, 0.5 * k  # their in-kernel l2norm makes these unit again
    kw = dict(initial_state=s0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, S = chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    o_r, S_r = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_hc, S_hc = hf_chunk(q, k, v, g, beta, chunk_size=64, **kw)
    o_hr, S_hr = hf_rec(q, k, v, g, beta, **kw)
    # the references always compute in float32
    for ours, theirs, what in ((o, o_hc, "o vs chunk"), (S, S_hc, "S vs chunk"), (o_r, o_hr, "o vs recurrent"),
                               (S_r, S_hr, "S vs recurrent")):
        err = rel_rms(ours, theirs)
        assert err < 5e-6, f"{what}: rel rms {err:.2e}"


@pytest.mark.parametrize("requires_grad", [False, True])
def test_empty_sequence_returns_the_initial_state(requires_grad):
    q, k, v, g, beta, s0 = _inputs(2, 0, 2, 8, 4)
    xs = [t.requires_grad_(requires_grad) for t in (q, k, v, g, beta)]
    o, S = chunk_gated_delta_rule(*xs, initial_state=s0, output_final_state=True)
    assert o.shape == (2, 0, 2, 4) and torch.equal(S, s0)
    _, S = chunk_gated_delta_rule(*xs, output_final_state=True)
    assert torch.equal(S, torch.zeros_like(s0))
