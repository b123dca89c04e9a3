"""Scalar-decay linear attention ops: simple GLA (runner.ops.simple_gla) and the thin ops on top of it
(linear attention, lightning attention, Mamba2's SSD). Chunked == recurrent (outputs, final state, gradients of
every input), against independent formulas, and against transformers' MiniMax and Mamba2 code."""

import pytest
import torch
import torch.nn.functional as F

from runner.ops.lightning import chunk_lightning_attn, lightning_decay_rates, recurrent_lightning_attn
from runner.ops.linear_attn import chunk_linear_attn, recurrent_linear_attn
from runner.ops.simple_gla import chunk_simple_gla, recurrent_simple_gla
from runner.ops.ssd import chunk_ssd, recurrent_ssd
from tests.contract import rel_rms

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grads_of(fn, inputs, seed=7):
    """Run fn(*inputs) -> (o, state) and return [o, state, d(loss)/d(each input)] for a random linear loss."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    o, S = fn(*leaves)
    g = _gen(seed)
    loss = (o * torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype)).sum()
    states = S if isinstance(S, tuple) else (S,)
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=F64).to(s.dtype)).sum()
    used = [t for t in leaves if t is not None]
    return [o, *states, *torch.autograd.grad(loss, used)]


def _compare(a, b, tol):
    errs = [rel_rms(x, y) for x, y in zip(a, b)]
    assert len(a) == len(b) and max(errs) < tol, [f"{e:.1e}" for e in errs]
    return errs


def _qkvg(B, T, H, K, V, g_scale, dtype=F64, seed=0):
    g = _gen(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    gg = None if g_scale is None else -torch.rand(B, T, H, generator=g, dtype=dtype) * g_scale
    return q, k, v, gg, s0


# ---------------------------------------------------------------------------------------------- simple GLA

@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("g_scale", [None, 0.05, 1.0, 20.0])
def test_simple_gla_chunk_equals_recurrent(T, g_scale):
    q, k, v, g, s0 = _qkvg(2, T, 2, 8, 6, g_scale)

    def run(f):
        return lambda q, k, v, g, s0: f(q, k, v, g, initial_state=s0, output_final_state=True)

    ref = _grads_of(run(recurrent_simple_gla), [q, k, v, g, s0])
    got = _grads_of(run(chunk_simple_gla), [q, k, v, g, s0])
    _compare(got, ref, 1e-12)


@pytest.mark.parametrize("segment_elements", [1, 2 * 2 * 16 * 16 * 3])
def test_simple_gla_segment_tiling(monkeypatch, segment_elements):
    """On a CPU the chunks are processed in segments (1 chunk, then 3 chunks at a time here): same results,
    state carried across segments in both passes, padded last chunk, all three decay modes."""
    import runner.ops.simple_gla as sg

    monkeypatch.setattr(sg, "SEGMENT_ELEMENTS", segment_elements)
    q, k, v, g, s0 = _qkvg(2, 100, 2, 8, 6, 1.0, seed=8)
    gg = -torch.tensor([0.05, 2.0], dtype=F64)
    cases = {
        "g": (lambda f: lambda q, k, v, s0, g: f(q, k, v, g, None, s0, True), [q, k, v, s0, g]),
        "none": (lambda f: lambda q, k, v, s0: f(q, k, v, None, None, s0, True), [q, k, v, s0]),
        "g_gamma": (lambda f: lambda q, k, v, s0, gg: f(q, k, v, None, None, s0, True, g_gamma=gg), [q, k, v, s0, gg]),
    }
    for name, (wrap, inputs) in cases.items():
        chunk = wrap(lambda *a, **kw: chunk_simple_gla(*a, chunk_size=16, **kw))
        _compare(_grads_of(chunk, inputs), _grads_of(wrap(recurrent_simple_gla), inputs), 1e-12)
    qf, kf, vf, S0, z0 = _featurised(2, 100, 2, 8, 6, seed=9)               # the normaliser column too

    def lin(f, **kw):
        return lambda q, k, v, S0, z0: f(q, k, v, None, (S0, z0), True, **kw)

    _compare(_grads_of(lin(chunk_linear_attn, chunk_size=16), [qf, kf, vf, S0, z0]),
             _grads_of(lin(recurrent_linear_attn), [qf, kf, vf, S0, z0]), 1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 200])
def test_simple_gla_any_chunk_size_and_scale(chunk_size):
    q, k, v, g, s0 = _qkvg(1, 45, 3, 5, 4, 1.0, seed=1)
    for scale in (None, 1.0, -0.3):
        ref = recurrent_simple_gla(q, k, v, g, scale, s0, True)
        got = chunk_simple_gla(q, k, v, g, scale, s0, True, chunk_size=chunk_size)
        _compare(got, ref, 1e-12)


def test_simple_gla_constant_decay_g_gamma():
    """g_gamma (H,) == the same decay given per step; padded last chunk included (T = 40, C = 16)."""
    q, k, v, _, s0 = _qkvg(2, 40, 3, 8, 5, None, seed=2)
    gg = -torch.tensor([0.01, 0.5, 3.0], dtype=F64)
    full = gg.expand(2, 40, 3)

    def chunk(q, k, v, gg, s0):
        return chunk_simple_gla(q, k, v, None, None, s0, True, 16, g_gamma=gg)

    def rec(q, k, v, gg, s0):
        return recurrent_simple_gla(q, k, v, gg.expand(2, 40, 3), None, s0, True)

    _compare(_grads_of(chunk, [q, k, v, gg, s0]), _grads_of(rec, [q, k, v, gg, s0]), 1e-12)
    _compare(chunk_simple_gla(q, k, v, full, None, s0, True, 16), chunk(q, k, v, gg, s0), 1e-13)


def test_simple_gla_against_quadratic_formula():
    """Independent oracle: o_t = sum_{s <= t} exp(D_t - D_s) (scale q_t . k_s) v_s + exp(D_t) (scale q_t)^T S_0."""
    q, k, v, g, s0 = _qkvg(2, 50, 2, 6, 5, 0.3, seed=3)
    D = g.cumsum(1)                                                     # (B, T, H)
    scale = 6 ** -0.5
    A = torch.einsum("bthk,bshk->bhts", q, k) * scale
    Dh = D.transpose(1, 2)                                              # (B, H, T)
    decay = (Dh[..., :, None] - Dh[..., None, :]).tril().exp().tril()   # (B, H, T, T)
    o_ref = torch.einsum("bhts,bshv->bthv", A * decay, v)
    o_ref = o_ref + torch.einsum("bthk,bhkv->bthv", q * scale * D.exp()[..., None], s0)
    o, _ = chunk_simple_gla(q, k, v, g, initial_state=s0, chunk_size=16)
    assert rel_rms(o, o_ref) < 1e-13


def test_simple_gla_long_float32_and_dtypes():
    """T = 1000 in float32 against the float64 recurrence; bfloat16 inputs give bfloat16 outputs, float32 state."""
    q, k, v, g, s0 = _qkvg(1, 1000, 2, 16, 16, 1.0, seed=4)
    ref = _grads_of(lambda *a: recurrent_simple_gla(*a[:4], initial_state=a[4], output_final_state=True),
                    [q, k, v, g, s0])
    got = _grads_of(lambda *a: chunk_simple_gla(*a[:4], initial_state=a[4], output_final_state=True),
                    [t.float() for t in (q, k, v, g, s0)])
    _compare(got, ref, 5e-6)
    o, S = chunk_simple_gla(*(t[:, :70].bfloat16() for t in (q, k, v, g)), output_final_state=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and o.shape == (1, 70, 2, 16)
    o, S = chunk_simple_gla(q[:, :0], k[:, :0], v[:, :0], g[:, :0], initial_state=s0, output_final_state=True)
    assert o.shape == (1, 0, 2, 16) and torch.equal(S, s0)


@pytest.mark.parametrize("g_value", [-20.0, -60.0, -1e4])
def test_simple_gla_strong_decay_finite_and_accurate(g_value):
    """Very strong decays in float32: finite forward and backward, gradients (of g too) match the float64
    recurrence. With g = -20 per step the exponent differences inside a chunk reach -1260."""
    q, k, v, _, s0 = _qkvg(1, 150, 2, 8, 8, None, seed=5)
    g = torch.full((1, 150, 2), g_value, dtype=F64)
    g[:, ::7] = -0.01                                                   # a few weak steps in between
    ref = _grads_of(lambda *a: recurrent_simple_gla(*a[:4], initial_state=a[4], output_final_state=True),
                    [q, k, v, g, s0])
    got = _grads_of(lambda *a: chunk_simple_gla(*a[:4], initial_state=a[4], output_final_state=True),
                    [t.float() for t in (q, k, v, g, s0)])
    assert all(torch.isfinite(t).all() for t in got)
    _compare(got, ref, 1e-6)


# ------------------------------------------------------------------------------------------ linear attention

def _featurised(B, T, H, K, V, dtype=F64, seed=0):
    g = _gen(seed)
    q, k = (F.elu(torch.randn(B, T, H, K, generator=g, dtype=dtype)) + 1 for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    z0 = torch.rand(B, H, K, generator=g, dtype=dtype) * 3
    return q, k, v, S0, z0


@pytest.mark.parametrize("T,dtype,tol", [(1, F64, 1e-12), (63, F64, 1e-12), (65, F64, 1e-12),
                                         (1000, torch.float32, 5e-6)])
def test_linear_attn_chunk_equals_recurrent_with_normaliser(T, dtype, tol):
    q, k, v, S0, z0 = _featurised(2, T, 2, 8, 6, dtype)

    def run(f):
        return lambda q, k, v, S0, z0: f(q, k, v, None, (S0, z0), True)

    _compare(_grads_of(run(chunk_linear_attn), [q, k, v, S0, z0]),
             _grads_of(run(recurrent_linear_attn), [q, k, v, S0, z0]), tol)


def test_linear_attn_against_direct_formula():
    """o_t = sum_{s<=t} (phi(q_t).phi(k_s)) v_s / (sum_{s<=t} phi(q_t).phi(k_s) + eps), the paper's eq. 4,
    plus the contribution of an initial (S, z); the state is (S, z) = (sum_s k_s v_s^T, sum_s k_s)."""
    q, k, v, S0, z0 = _featurised(2, 70, 3, 5, 4, seed=1)
    A = torch.einsum("bthk,bshk->bhts", q, k).tril()                   # (B, H, T, T)
    num = torch.einsum("bhts,bshv->bthv", A, v) + torch.einsum("bthk,bhkv->bthv", q, S0)
    den = A.sum(-1).transpose(1, 2).unsqueeze(-1) + torch.einsum("bthk,bhk->bth", q, z0).unsqueeze(-1)
    o_ref = num / (den + 1e-6)
    for f in (chunk_linear_attn, recurrent_linear_attn):
        o, (S, z) = f(q, k, v, scale=1.0, initial_state=(S0, z0), output_final_state=True)
        assert rel_rms(o, o_ref) < 1e-13
        assert rel_rms(S, S0 + torch.einsum("bthk,bthv->bhkv", k, v)) < 1e-13
        assert rel_rms(z, z0 + k.sum(1)) < 1e-13
    o, S = chunk_linear_attn(q, k, v, scale=0.5, normalize=False, initial_state=S0, output_final_state=True)
    assert rel_rms(o, 0.5 * num) < 1e-13 and isinstance(S, torch.Tensor)
    with pytest.raises(ValueError, match="tuple"):
        chunk_linear_attn(q, k, v, initial_state=S0)


# --------------------------------------------------------------------------------------- lightning attention

def test_lightning_chunk_equals_recurrent():
    q, k, v, _, s0 = _qkvg(2, 65, 4, 8, 8, None, seed=6)
    s = lightning_decay_rates(4, 1, 3)

    def run(f):
        return lambda q, k, v, s0: f(q, k, v, s, None, s0, True)

    _compare(_grads_of(run(chunk_lightning_attn), [q, k, v, s0]),
             _grads_of(run(recurrent_lightning_attn), [q, k, v, s0]), 1e-12)


def _minimax(H=4, D=16, L=4, block=16):
    from transformers import MiniMaxConfig

    return MiniMaxConfig(hidden_size=64, num_attention_heads=H, head_dim=D, num_hidden_layers=L, block_size=block,
                         layer_types=["linear_attention"] * L)


@pytest.mark.parametrize("H,L", [(4, 1), (4, 4), (8, 7), (3, 2)])
def test_lightning_decay_rates_match_transformers(H, L):
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    for layer in range(L):
        ref = MiniMaxLightningAttention(_minimax(H=H, D=8, L=L), layer).slope_rate.flatten().double()
        ours = lightning_decay_rates(H, layer, L)
        assert ours.shape == (H,) and torch.allclose(ours, ref, rtol=1e-6, atol=0)
    assert torch.allclose(lightning_decay_rates(8, 0, 1), 2.0 ** (-torch.arange(1, 9, dtype=F64)) * (1 + 1e-5))


def test_lightning_op_matches_transformers_block_loop():
    """q, k, v captured inside transformers' MiniMaxLightningAttention (after SiLU) and the attention output it
    hands to its norm: our op on the same q, k, v reproduces that output (T = 50, blocks of 16, a partial last
    block), for a strongly and a weakly decaying layer."""
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    torch.manual_seed(0)
    for layer in (0, 3):
        ref = MiniMaxLightningAttention(_minimax(), layer).double().eval()
        seen = {}
        ref.qkv_proj.register_forward_hook(lambda m, i, out: seen.__setitem__("qkv", F.silu(out)))
        ref.norm.register_forward_pre_hook(lambda m, i: seen.__setitem__("o", i[0]))
        x = torch.randn(2, 50, 64, dtype=F64)
        with torch.no_grad():
            ref(x, None, None)
        q, k, v = seen["qkv"].view(2, 50, 4, 48).split(16, dim=-1)
        s = ref.slope_rate.flatten()
        for f in (chunk_lightning_attn, recurrent_lightning_attn):
            o, _ = f(q, k, v, s, scale=1.0)
            assert rel_rms(o.reshape(2, 50, 64), seen["o"]) < 1e-7  # its decay tables were made in float32


# ------------------------------------------------------------------------------------------------- Mamba2 SSD

def _ssd_inputs(b=2, T=70, H=4, P=8, G=2, N=6, seed=0):
    g = _gen(seed)
    x = torch.randn(b, T, H, P, generator=g, dtype=F64)
    dt_raw = torch.randn(b, T, H, generator=g, dtype=F64)
    dt_bias = torch.randn(H, generator=g, dtype=F64)
    A = -torch.rand(H, generator=g, dtype=F64) * 4 - 0.1
    Bm, Cm = (torch.randn(b, T, G, N, generator=g, dtype=F64) for _ in range(2))
    D = torch.randn(H, generator=g, dtype=F64)
    s0 = torch.randn(b, H, N, P, generator=g, dtype=F64)
    return x, dt_raw, dt_bias, A, Bm, Cm, D, s0


@pytest.mark.parametrize("G", [1, 2])
def test_ssd_chunk_equals_recurrent(G):
    x, dt_raw, dt_bias, A, Bm, Cm, D, s0 = _ssd_inputs(T=65, G=G)
    dt = F.softplus(dt_raw + dt_bias)

    def run(f):
        return lambda x, dt, A, Bm, Cm, D, s0: f(x, dt, A, Bm, Cm, D, s0, True)

    _compare(_grads_of(run(chunk_ssd), [x, dt, A, Bm, Cm, D, s0]),
             _grads_of(run(recurrent_ssd), [x, dt, A, Bm, Cm, D, s0]), 1e-12)


@pytest.mark.parametrize("G", [1, 2, 4])
def test_ssd_matches_transformers_mamba2(G):
    """transformers' pure-PyTorch Mamba2 scan (mamba2_chunk_scan, computed in float32 internally) and its
    single-step update (mamba2_selective_state_update) on the same inputs; their state is (b, H, P, N)."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan, mamba2_selective_state_update

    x, dt_raw, dt_bias, A, Bm, Cm, D, s0 = _ssd_inputs(G=G)
    y_ref, S_ref = mamba2_chunk_scan(x, dt_raw, A, Bm, Cm, chunk_size=16, D=D, dt_bias=dt_bias,
                                     initial_states=s0.transpose(-1, -2), dt_softplus=True,
                                     return_final_states=True)
    dt = F.softplus(dt_raw + dt_bias)
    y, S = chunk_ssd(x, dt, A, Bm, Cm, D, initial_state=s0, output_final_state=True, chunk_size=32)
    assert rel_rms(y, y_ref) < 1e-6 and rel_rms(S.transpose(-1, -2), S_ref) < 1e-6
    # one decoding step from the state
    state = S_ref.clone()
    P, N = x.shape[-1], Bm.shape[-1]
    y1_ref = mamba2_selective_state_update(state, x[:, 0], dt_raw[:, 0, :, None].expand(-1, -1, P),
                                           A[:, None, None].expand(-1, P, N), Bm[:, 0], Cm[:, 0],
                                           D[:, None].expand(-1, P), dt_bias=dt_bias[:, None].expand(-1, P),
                                           dt_softplus=True)
    y1, S1 = recurrent_ssd(x[:, :1], dt[:, :1], A, Bm[:, :1], Cm[:, :1], D, initial_state=S, output_final_state=True)
    assert rel_rms(y1[:, 0], y1_ref) < 1e-6 and rel_rms(S1.transpose(-1, -2), state) < 1e-6


def test_op_argument_errors():
    q, k, v, g, s0 = _qkvg(1, 5, 2, 4, 3, 1.0)
    with pytest.raises(ValueError, match="g must be"):
        chunk_simple_gla(q, k, v, g[..., :1])
    with pytest.raises(ValueError, match="initial_state"):
        chunk_simple_gla(q, k, v, g, initial_state=s0[..., :2])
    with pytest.raises(ValueError, match="not both"):
        chunk_simple_gla(q, k, v, g, g_gamma=torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match=">= 0"):
        chunk_lightning_attn(q, k, v, torch.tensor([0.1, -0.1], dtype=F64))
    with pytest.raises(ValueError, match="layer_idx"):
        lightning_decay_rates(4, 4, 4)
    x, _, _, A, Bm, Cm, D, _ = _ssd_inputs(H=4, G=3)
    with pytest.raises(ValueError, match="divide"):
        chunk_ssd(x, torch.ones(x.shape[:3], dtype=F64), A, Bm, Cm)
