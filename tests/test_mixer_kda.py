"""Kimi Delta Attention mixer: the mixer contract, its state size, gradients, and equality with transformers'
KimiLinearDeltaAttention given the same weights."""
import pytest
import torch

from runner.mixers import make_config
from tests.contract import check_decode_equals_forward, check_state_bytes, make, rel_rms

SPEC = {"name": "kda"}  # d_model 64, 4 heads -> head_dim 16


@pytest.mark.parametrize("spec", [
    SPEC,
    {"name": "kda", "mode": "recurrent"},
    {"name": "kda", "num_v_heads": 8, "expand_v": 2.0, "use_short_conv": False, "gate_low_rank_dim": 8},
    {"name": "kda", "conv_size": 2, "chunk_size": 16},
])
def test_decode_equals_forward(spec):
    m = make(spec)
    check_decode_equals_forward(m)                                   # chunked prefill vs recurrent steps
    check_decode_equals_forward(m, T=65, pieces=(63, 1, 1))
    check_decode_equals_forward(m, T=140, pieces=(65, 17, 1))        # chunked continuation with a state
    check_decode_equals_forward(m, T=1, pieces=(1,))


def test_state_bytes():
    m = make(SPEC)
    check_state_bytes(m)
    # hand count, batch 2: recurrent state 4 heads x 16 x 16; conv tail (3 x 64 channels) x (4 - 1) steps
    assert m.state_bytes(2, 100, torch.float64) == 2 * 4 * 16 * 16 * 8 + 2 * 192 * 3 * 8 == 25600
    assert m.state_bytes(2, 100, torch.bfloat16) == 2 * 4 * 16 * 16 * 4 + 2 * 192 * 3 * 2  # state stays fp32
    g = make({"name": "kda", "num_v_heads": 8, "expand_v": 2.0, "use_short_conv": False})
    check_state_bytes(g)
    assert g.state_bytes(1, 5, torch.float32) == 8 * 16 * 32 * 4


def test_state_not_mutated_and_need_state():
    m = make(SPEC)
    x = torch.randn(2, 20, 64, dtype=torch.float64)
    with torch.no_grad():
        _, st = m(x)
        saved = {k: v.clone() for k, v in st.items()}
        m(x[:, :1], st)
        m(x, st)
        y, none = m(x, st, need_state=False)
    assert none is None and torch.isfinite(y).all()
    assert set(st) == {"S", "conv"} and st["S"].shape == (2, 4, 16, 16) and st["conv"].shape == (2, 192, 3)
    assert all(torch.equal(saved[k], st[k]) for k in st)


def test_gradients_finite():
    m = make(SPEC).float().train()
    x = torch.randn(2, 70, 64, requires_grad=True)
    y, _ = m(x, need_state=False)
    y.pow(2).mean().backward()
    for name, p in list(m.named_parameters()) + [("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_config_validation_and_flops():
    for bad, key in [({"mode": "fused"}, "mode"), ({"chunk_size": 48}, "chunk_size"), ({"expand_v": 0.3}, "expand_v"),
                     ({"num_v_heads": 6}, "num_v_heads"), ({"conv_size": 0}, "conv_size")]:
        with pytest.raises(ValueError, match=key):
            make_config({"name": "kda", **bad}, 64, 4)
    m = make(SPEC)
    assert m.flops_per_token(1000) > m.proj_flops() > 0


def _transformers_pair(dtype):
    tr = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")
    from transformers.models.kimi_linear.configuration_kimi_linear import KimiLinearConfig
    cfg = KimiLinearConfig(hidden_size=64, linear_num_heads=4, linear_head_dim=16, num_hidden_layers=1,
                           rms_norm_eps=1e-5)
    torch.manual_seed(3)
    ref = tr.KimiLinearDeltaAttention(cfg, 0).to(dtype).eval()
    for name, p in ref.named_parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():  # realistic decay parameters
        ref.forget_gate.A_log.copy_(torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 1, 4, 1))
        ref.forget_gate.dt_bias.normal_(-2.0, 1.0)
    sd = ref.state_dict()
    rename = {"conv1d.weight": "conv.weight", "forget_gate.f_a_proj.weight": "f_a_proj.weight",
              "forget_gate.f_b_proj.weight": "f_b_proj.weight", "forget_gate.dt_bias": "dt_bias",
              "forget_gate.A_log": "A_log"}
    ours = make(SPEC).to(dtype)
    ours.load_state_dict({rename.get(k, k): (v.view(-1) if k.endswith("A_log") else v) for k, v in sd.items()})
    return ref, ours


@pytest.mark.parametrize("dtype,T", [(torch.float64, 100), (torch.float32, 64), (torch.float32, 3)])
def test_against_transformers_layer(dtype, T):
    """Same weights in transformers' KimiLinearDeltaAttention (torch fallback, no cache) and ours. Theirs runs its
    KDA core in float32 even for float64 weights, hence the float32-level tolerance."""
    ref, ours = _transformers_pair(dtype)
    x = torch.randn(2, T, 64, dtype=dtype, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y_ref = ref(x)
        y, _ = ours(x)
    assert rel_rms(y, y_ref) < 1e-5, rel_rms(y, y_ref)
