"""Kimi Delta Attention ops: chunked == recurrent (outputs, final state, gradients of every input), exact and
finite for strong per-channel decays, and equal to transformers' reference functions."""
import pytest
import torch

from runner.ops.kda import chunk_kda, recurrent_kda
from tests.contract import rel_rms


def inputs(B=2, T=65, H=2, K=8, V=6, decay=1.0, dtype=torch.float64, seed=0, state=True):
    """q, k, v, g (per-step log decays uniform in [-decay, 0]), beta, initial state."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    g = -decay * torch.rand(B, T, H, K, generator=gen, dtype=dtype)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    s0 = r(B, H, K, V) if state else None
    return q, k, v, g, beta, s0


def run(fn, q, k, v, g, beta, s0, **kw):
    """Output, final state and the gradients of every input (including the initial state) of a fixed loss."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, g, beta)]
    s = None if s0 is None else s0.detach().clone().requires_grad_()
    o, S = fn(*leaves, initial_state=s, output_final_state=True, **kw)
    w = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)
    ((o * w).sum() + S.pow(2).sum()).backward()
    grads = [t.grad for t in leaves] + ([] if s is None else [s.grad])
    return o.detach(), S.detach(), grads


def compare(a, b, tol):
    (oa, Sa, ga), (ob, Sb, gb) = a, b
    assert rel_rms(oa, ob) < tol, f"outputs differ: {rel_rms(oa, ob):.2e}"
    assert rel_rms(Sa, Sb) < tol, f"final states differ: {rel_rms(Sa, Sb):.2e}"
    for name, x, y in zip("q k v g beta s0".split(), ga, gb):
        assert torch.isfinite(x).all(), f"non-finite gradient of {name}"
        assert rel_rms(x, y) < tol, f"gradient of {name} differs: {rel_rms(x, y):.2e}"


@pytest.mark.parametrize("T", [1, 63, 65])
@pytest.mark.parametrize("decay", [0.05, 20.0])
def test_chunk_equals_recurrent(T, decay):
    x = inputs(T=T, decay=decay)
    kw = dict(use_qk_l2norm_in_kernel=True)
    compare(run(chunk_kda, *x, **kw), run(recurrent_kda, *x, **kw), 1e-12)


@pytest.mark.parametrize("chunk_size", [2, 16])
def test_chunk_sizes_no_l2norm_custom_scale_no_state(chunk_size):
    x = inputs(T=37, decay=3.0, state=False)
    q, k = x[0] * 0.3, x[1] * 0.3  # keep the unnormalised delta rule contractive
    x = (q, k) + x[2:]
    a = run(chunk_kda, *x, scale=0.7, chunk_size=chunk_size)
    b = run(recurrent_kda, *x, scale=0.7)
    compare(a, b, 1e-12)


def test_length_1000_float32():
    x = inputs(B=1, T=1000, H=2, K=16, V=16, decay=0.5, dtype=torch.float32, seed=1)
    kw = dict(use_qk_l2norm_in_kernel=True)
    compare(run(chunk_kda, *x, **kw), run(recurrent_kda, *x, **kw), 1e-5)


@pytest.mark.parametrize("decay", [20.0, 1000.0])
def test_strong_decay_finite_float32(decay):
    """g down to -20 (and far beyond) per step: forward and all gradients finite and exact."""
    x = inputs(T=130, decay=decay, dtype=torch.float32, seed=2)
    x = x[:3] + (torch.full_like(x[3], -decay),) + x[4:]  # every step at the strongest decay too
    kw = dict(use_qk_l2norm_in_kernel=True)
    compare(run(chunk_kda, *x, **kw), run(recurrent_kda, *x, **kw), 1e-5)


def test_pairwise_split_then_mask_is_not_finite():
    """The failure the chunked form avoids, so the finiteness checks above can fail: building exp(G_i - G_j)
    for all pairs and masking afterwards overflows for strong decays and poisons the gradient with NaN."""
    g = torch.full((64, 4), -20.0, requires_grad=True)
    G = g.cumsum(0)
    pair = (G[:, None, :] - G[None, :, :]).exp()                      # inf where i < j
    keep = torch.ones(64, 64, dtype=torch.bool).tril()[..., None]
    pair.masked_fill(~keep, 0.0).sum().backward()
    assert not torch.isfinite(g.grad).all()
    # ours on the same decays: finite
    x = inputs(B=1, T=64, H=1, K=4, V=4, dtype=torch.float32)
    _, _, grads = run(chunk_kda, *x[:3], torch.full((1, 64, 1, 4), -20.0), *x[4:], use_qk_l2norm_in_kernel=True)
    assert all(torch.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("decay", [1.0, 20.0])
def test_against_transformers(decay):
    """transformers' chunk_kimi_delta_attention and recurrent_kimi_delta_attention (both compute in float32,
    scale fixed at K**-0.5) on the same inputs, with and without an initial state."""
    tr = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")
    q, k, v, g, beta, s0 = inputs(B=2, T=100, H=2, K=16, V=8, decay=decay, dtype=torch.float32, seed=3)
    for init in (None, s0):
        o, S = chunk_kda(q, k, v, g, beta, initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=True)
        o_c, S_c = tr.chunk_kimi_delta_attention(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True)
        o_r, S_r = tr.recurrent_kimi_delta_attention(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                                     use_qk_l2norm_in_kernel=True)
        for ref_o, ref_S in ((o_c, S_c), (o_r, S_r)):
            assert rel_rms(o, ref_o) < 1e-5 and rel_rms(S, ref_S) < 1e-5, (rel_rms(o, ref_o), rel_rms(S, ref_S))


def test_bfloat16_inputs_compute_in_float32():
    x = inputs(T=70, dtype=torch.float32, seed=4)
    xb = tuple(t.to(torch.bfloat16) for t in x[:5]) + (x[5],)
    o, S = chunk_kda(*xb[:5], initial_state=xb[5], output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o32, S32 = recurrent_kda(*(t.float() for t in xb[:5]), initial_state=x[5], output_final_state=True,
                             use_qk_l2norm_in_kernel=True)
    assert rel_rms(o, o32) < 1e-2 and rel_rms(S, S32) < 1e-5


def test_bad_arguments():
    q, k, v, g, beta, s0 = inputs(T=5)
    with pytest.raises(ValueError, match="power of two"):
        chunk_kda(q, k, v, g, beta, chunk_size=48)
    with pytest.raises(ValueError, match="g must be"):
        chunk_kda(q, k, v, g[..., 0], beta)
    with pytest.raises(ValueError, match="initial_state"):
        recurrent_kda(q, k, v, g, beta, initial_state=s0[:, :, :3])
    assert chunk_kda(q, k, v, g, beta)[1] is None


@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 15, 64, 100, 150])
@pytest.mark.parametrize("decay", [0.1, 20.0])
def test_gradients_match_recurrent(chunk_size, T, decay):
    """The hand-written backward: every input's gradient (initial state included) against the recurrent form,
    for lengths below, at and across the chunk size and for weak and strong decays."""
    x = inputs(B=1, T=T, H=2, K=8, V=4, decay=decay, seed=5)
    kw = dict(use_qk_l2norm_in_kernel=True)
    compare(run(chunk_kda, *x, chunk_size=chunk_size, **kw), run(recurrent_kda, *x, **kw), 1e-12)


@pytest.mark.parametrize("state", [False, True])
def test_gradients_match_recurrent_float32_output_only(state):
    """float32, a loss on the outputs only (no gradient flows into the final state), with and without an
    initial state."""
    x = inputs(B=2, T=200, H=2, K=16, V=8, decay=2.0, dtype=torch.float32, seed=6, state=state)
    grads = []
    for fn in (chunk_kda, recurrent_kda):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in x]
        o, _ = fn(*leaves[:5], initial_state=leaves[5], use_qk_l2norm_in_kernel=True)
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        grads.append([t.grad for t in leaves if t is not None])
    for name, a, b in zip("q k v g beta s0".split(), *grads):
        assert torch.isfinite(a).all() and rel_rms(a, b) < 1e-5, f"gradient of {name} differs: {rel_rms(a, b):.2e}"


# what the op keeps for its backward (inputs and chunk states only): tests/test_ops_saved_memory.py


def test_log_decay_gradients_from_its_output_alone():
    """kda_log_decay keeps only g for its backward; its gradients equal autograd's through the plain formula,
    softplus's linear and exponential tails included (f from -30.5 to 29.5)."""
    from runner.ops.kda import kda_log_decay

    g0 = torch.Generator().manual_seed(0)
    # the grid steps over 20, where torch's softplus switches to its linear branch (finite differences across
    # that seam would measure the seam, not the function)
    f = torch.cat([torch.linspace(-30.5, 29.5, 61, dtype=torch.float64).view(1, 61, 1, 1).expand(1, 61, 3, 4),
                   torch.randn(2, 61, 3, 4, dtype=torch.float64, generator=g0) * 3]).requires_grad_()
    A_log = torch.empty(3, dtype=torch.float64).uniform_(0.0, 2.8, generator=g0).requires_grad_()
    assert torch.autograd.gradcheck(kda_log_decay, (f, A_log))
    dg = torch.randn(f.shape, dtype=torch.float64, generator=g0)
    got = kda_log_decay(f, A_log)
    assert torch.allclose(got, -A_log.exp().view(3, 1) * torch.nn.functional.softplus(f), rtol=1e-12, atol=0)
    # the gradients against softplus without torch's linear branch above 20 (whose derivative is 1, not
    # sigmoid(f)): log(1 + e^f) exactly
    ref = -A_log.exp().view(3, 1) * torch.logaddexp(f, torch.zeros(()))
    want = torch.autograd.grad(ref, (f, A_log), dg)
    for a, b in zip(torch.autograd.grad(got, (f, A_log), dg), want):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-300), (a - b).abs().max()
    # what it keeps: its output (and the parameter), nothing of f's size besides
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = kda_log_decay(f, A_log)
    assert [t.data_ptr() for t in kept if t.numel() == f.numel()] == [out.data_ptr()]
