"""Gated DeltaNet and DeltaNet mixers: the mixer contract (decode from state == full forward, state size), finite
gradients, config validation, the yaml configs, and equality with transformers' Qwen3NextGatedDeltaNet layer
loaded with the same weights."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from runner.mixers import make_config
from runner.mixers.deltanet import DeltaNet, DeltaNetConfig
from runner.mixers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from tests.contract import check_decode_equals_forward, check_state_bytes, make, rel_rms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPECS = [
    dict(name="gated_deltanet"),
    dict(name="gated_deltanet", num_v_heads=8, expand_v=2, chunk_size=16),
    dict(name="gated_deltanet", use_short_conv=False, use_gate=False, conv_size=2),
    dict(name="gated_deltanet", mode="recurrent"),
    dict(name="deltanet"),
    dict(name="deltanet", use_gate=True, conv_size=3, chunk_size=8),
    dict(name="gated_deltanet", allow_neg_eigval=True, chunk_size=16),
    dict(name="deltanet", allow_neg_eigval=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_decode_equals_forward(spec):
    m = make(spec)  # d_model 64, 4 heads, float64
    check_decode_equals_forward(m)
    for T, pieces in ((1, (1,)), (63, (63,)), (65, (64, 1)), (65, (1, 63, 1)), (70, (3, 65))):
        check_decode_equals_forward(m, T=T, pieces=pieces)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_state_bytes(spec):
    m = make(spec)
    check_state_bytes(m)
    cfg = m.cfg
    H, K = 4, 16  # make(): d_model 64, 4 heads
    HV = cfg.num_v_heads or H
    Vh = int(K * cfg.expand_v)
    for B, dtype, nbytes in ((2, torch.float64, 8), (3, torch.float32, 4), (1, torch.bfloat16, 2)):
        S = B * HV * K * Vh * (8 if dtype == torch.float64 else 4)  # recurrent state kept in fp32 (fp64)
        conv = B * (2 * H * K + HV * Vh) * (cfg.conv_size - 1) * nbytes if cfg.use_short_conv else 0
        for n in (1, 1000):
            assert m.state_bytes(B, n, dtype) == S + conv
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    _, state = m(x)
    assert set(state) == ({"conv", "S"} if cfg.use_short_conv else {"S"})
    assert state["S"].shape == (2, HV, K, Vh)


def test_state_is_not_modified_and_need_state():
    m = make(dict(name="gated_deltanet"))
    x = torch.randn(2, 20, 64, dtype=torch.float64)
    _, st = m(x)
    saved = {k: v.clone() for k, v in st.items()}
    m(x[:, :3], st)
    m(x[:, :1], st)
    assert all(torch.equal(saved[k], st[k]) for k in st)
    y, none = m(x, need_state=False)
    assert none is None and torch.allclose(y, m(x)[0])


@pytest.mark.parametrize("neg", [False, True], ids=["beta01", "allow_neg_eigval"])
@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet"])
def test_gradients_finite_and_chunk_equals_recurrent(name, neg):
    torch.manual_seed(0)
    m = make(dict(name=name, chunk_size=16, allow_neg_eigval=neg)).float().train()
    r = make(dict(name=name, mode="recurrent", allow_neg_eigval=neg)).float().train()
    r.load_state_dict(m.state_dict())
    x = torch.randn(2, 40, 64)
    ys, grads = [], []
    for mod in (m, r):
        mod.zero_grad()
        y, _ = mod(x, need_state=False)
        (y.square().mean()).backward()
        ys.append(y.detach())
        grads.append({k: p.grad.clone() for k, p in mod.named_parameters()})
    assert rel_rms(ys[0], ys[1]) < 1e-5
    for k, g in grads[0].items():
        assert torch.isfinite(g).all(), k
        assert g.abs().sum() > 0, f"{k} gets no gradient"
        assert rel_rms(g, grads[1][k]) < 1e-4, k


@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet"])
def test_allow_neg_eigval_doubles_beta(name, monkeypatch):
    """The op receives beta = 2 sigmoid(W_b x), reaching above 1 (an eigenvalue 1 - beta < 0), in the chunked and
    the recurrent form; without the option sigmoid(W_b x) itself. Same parameters either way."""
    import runner.mixers.gated_deltanet as mod

    seen = []
    rec = mod.recurrent_gated_delta_rule
    monkeypatch.setattr(mod, "recurrent_gated_delta_rule", lambda *a, **kw: seen.append(a[4]) or rec(*a, **kw))
    x = torch.randn(2, 6, 64, dtype=torch.float64)  # 6 tokens: the recurrent op (RECURRENT_MAX_T)
    betas = {}
    for neg in (False, True):
        m = make(dict(name=name, allow_neg_eigval=neg))
        with torch.no_grad():
            m.b_proj.weight.mul_(20.0)  # push sigmoid(W_b x) towards 0 and 1
            m(x)
        betas[neg] = seen.pop()
        b = torch.sigmoid(m.b_proj(x))
        assert torch.allclose(betas[neg], 2 * b if neg else b)
    assert betas[True].max() > 1.5 and betas[False].max() < 1.0
    assert set(make(dict(name=name)).state_dict()) == set(make(dict(name=name, allow_neg_eigval=True)).state_dict())
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        make_config(dict(name=name, allow_neg_eigval="yes"), d_model=64, n_heads=4)


def test_flops_per_token():
    m = make(dict(name="gated_deltanet"))
    f = m.flops_per_token(4096)
    assert f > m.proj_flops() > 0
    assert m.flops_per_token(4096) == m.flops_per_token(65536)  # linear mixer: no growth with context
    assert not GatedDeltaNet.quadratic and not DeltaNet.quadratic


def test_config_validation():
    with pytest.raises(ValueError, match="num_v_heads=6"):
        make_config(dict(name="gated_deltanet", num_v_heads=6), d_model=64, n_heads=4)
    with pytest.raises(ValueError, match="mode='fused'"):
        make_config(dict(name="deltanet", mode="fused"), d_model=64, n_heads=4)
    with pytest.raises(ValueError, match="conv_size=0"):
        make_config(dict(name="gated_deltanet", conv_size=0), d_model=64, n_heads=4)
    with pytest.raises(ValueError, match="expand_v=0.3"):
        make_config(dict(name="gated_deltanet", expand_v=0.3), d_model=64, n_heads=4)
    with pytest.raises(ValueError, match="A_log"):
        make_config(dict(name="gated_deltanet", A_log=1), d_model=64, n_heads=4)


@pytest.mark.parametrize("name,cls", [("gated_deltanet", GatedDeltaNetConfig), ("deltanet", DeltaNetConfig)])
def test_yaml_lists_every_option_with_its_default(name, cls):
    from omegaconf import OmegaConf

    path = os.path.join(ROOT, "conf", "attention", f"{name}.yaml")
    text = open(path).read()
    assert text.startswith("#") and "@package" not in text
    conf = OmegaConf.to_container(OmegaConf.load(path))
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert conf == defaults


# ---- against transformers' Qwen3NextGatedDeltaNet ---------------------------------------------------------------

def _qwen3_next_layer(d, Hk, HV, K, Vh, seed=0):
    qm = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    from transformers import Qwen3NextConfig

    cfg = Qwen3NextConfig(hidden_size=d, linear_num_key_heads=Hk, linear_num_value_heads=HV, linear_key_head_dim=K,
                          linear_value_head_dim=Vh, linear_conv_kernel_dim=4, num_hidden_layers=1,
                          layer_types=["linear_attention"], num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16, intermediate_size=32, vocab_size=10, num_experts=2, num_experts_per_tok=1)
    torch.manual_seed(seed)
    ref = qm.Qwen3NextGatedDeltaNet(cfg, 0).float().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
        ref.A_log.copy_(torch.empty(HV).uniform_(0.01, 16).log())
        ref.dt_bias.normal_(0, 1)
    return qm, ref


def _load_from_qwen3_next(ours: GatedDeltaNet, ref):
    """Their in_proj_qkvz rows are grouped per q/k head: [q_h | k_h | v of its HV/H value heads | z of those];
    in_proj_ba likewise [b of the group | a of the group]; the conv channels are q, k, v as ours."""
    H, K, Vh, d = ours.num_heads, ours.head_dim, ours.head_v_dim, ours.d_model
    r = ours.num_v_heads // H
    with torch.no_grad():
        q, k, v, z = ref.in_proj_qkvz.weight.view(H, 2 * K + 2 * r * Vh, d).split([K, K, r * Vh, r * Vh], dim=1)
        for proj, w in ((ours.q_proj, q), (ours.k_proj, k), (ours.v_proj, v), (ours.z_proj, z)):
            proj.weight.copy_(w.reshape(-1, d))
        b, a = ref.in_proj_ba.weight.view(H, 2 * r, d).split([r, r], dim=1)
        ours.b_proj.weight.copy_(b.reshape(-1, d))
        ours.a_proj.weight.copy_(a.reshape(-1, d))
        ours.conv.weight.copy_(ref.conv1d.weight)
        ours.A_log.copy_(ref.A_log)
        ours.dt_bias.copy_(ref.dt_bias)
        ours.norm.weight.copy_(ref.norm.weight)
        ours.out_proj.weight.copy_(ref.out_proj.weight)


@pytest.mark.parametrize("Hk,HV,K,Vh,T", [(2, 2, 16, 16, 70), (2, 4, 16, 32, 100), (1, 3, 8, 8, 1)])
def test_against_transformers_qwen3_next(monkeypatch, Hk, HV, K, Vh, T):
    d = 48
    qm, ref = _qwen3_next_layer(d, Hk, HV, K, Vh)
    for fn in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
               "causal_conv1d_update"):  # force their pure-PyTorch fallbacks
        f = getattr(qm, fn)
        monkeypatch.setattr(qm, fn, getattr(f, "__wrapped__", f))
    cfg = GatedDeltaNetConfig(num_heads=Hk, head_dim=K, num_v_heads=HV, expand_v=Vh / K)
    ours = GatedDeltaNet(d, cfg).float().eval()
    _load_from_qwen3_next(ours, ref)
    x = torch.randn(2, T, d)
    with torch.no_grad():
        y_ref = ref(x)
        y, _ = ours(x)
    err = rel_rms(y, y_ref)
    assert err < 1e-5, f"rel rms vs Qwen3NextGatedDeltaNet: {err:.2e}"
