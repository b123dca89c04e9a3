"""The scalar-decay linear mixers (linear attention, MiniMax lightning attention, Mamba2): the mixer contract,
their state sizes, gradients, configs, and equality with transformers' MiniMaxLightningAttention and
Mamba2Mixer given the same weights."""
import dataclasses

import pytest
import torch
import yaml

from runner.mixers import build_mixer, make_config
from tests.conftest import CONF
from tests.contract import check_decode_equals_forward, check_state_bytes, make, rel_rms

F64 = torch.float64
SPECS = [
    {"name": "linear"},
    {"name": "linear", "normalize": False, "expand_v": 2.0, "output_norm": False, "chunk_size": 16},
    {"name": "lightning"},
    {"name": "lightning", "chunk_size": 7},
    {"name": "mamba2", "d_state": 16, "head_dim": 16, "n_groups": 2},
    {"name": "mamba2", "d_state": 8, "head_dim": 32, "use_short_conv": False, "chunk_size": 16},
    {"name": "mamba2", "d_state": 8, "head_dim": 16, "conv_size": 2, "expand": 1, "bias": True},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_decode_equals_forward(spec):
    m = make(spec, layer_idx=1, n_layers=3)                            # d_model 64, 4 model heads
    check_decode_equals_forward(m)                                     # prefill then uneven pieces and single steps
    check_decode_equals_forward(m, T=65, pieces=(63, 1, 1))
    check_decode_equals_forward(m, T=140, pieces=(65, 17, 1))
    check_decode_equals_forward(m, T=1, pieces=(1,))


def test_state_bytes_and_keys():
    """Measured == analytic, and the hand count (batch 2, d_model 64, 4 heads of 16)."""
    lin = make({"name": "linear"})
    check_state_bytes(lin)
    assert lin.state_bytes(2, 100, F64) == 2 * 4 * (16 * 16 + 16) * 8          # S and z
    assert lin.state_bytes(2, 100, torch.bfloat16) == 2 * 4 * (16 * 16 + 16) * 4  # state stays float32
    lin_nn = make({"name": "linear", "normalize": False, "expand_v": 2.0})
    check_state_bytes(lin_nn)
    assert lin_nn.state_bytes(3, 1, torch.float32) == 3 * 4 * 16 * 32 * 4      # S only

    lig = make({"name": "lightning"})
    check_state_bytes(lig)
    assert lig.state_bytes(2, 10 ** 6, F64) == 2 * 4 * 16 * 16 * 8

    mb = make({"name": "mamba2", "d_state": 16, "head_dim": 16, "n_groups": 2})
    check_state_bytes(mb)
    # d_inner 128 -> 8 heads of 16; SSM state 8 x 16 (N) x 16 (P); conv over 128 + 2*2*16 = 192 channels, 3 steps
    assert mb.H == 8 and mb.state_bytes(2, 50, F64) == 2 * 8 * 16 * 16 * 8 + 2 * 192 * 3 * 8
    assert mb.state_bytes(2, 50, torch.bfloat16) == 2 * 8 * 16 * 16 * 4 + 2 * 192 * 3 * 2
    mb_nc = make({"name": "mamba2", "d_state": 8, "head_dim": 32, "use_short_conv": False})
    check_state_bytes(mb_nc)
    assert mb_nc.state_bytes(1, 5, torch.float32) == 4 * 8 * 32 * 4

    x = torch.randn(2, 9, 64, dtype=F64)
    with torch.no_grad():
        shapes = {n: {k: tuple(v.shape) for k, v in m(x)[1].items()} for n, m in
                  (("lin", lin), ("lin_nn", lin_nn), ("lig", lig), ("mb", mb), ("mb_nc", mb_nc))}
    assert shapes == {"lin": {"S": (2, 4, 16, 16), "z": (2, 4, 16)}, "lin_nn": {"S": (2, 4, 16, 32)},
                      "lig": {"S": (2, 4, 16, 16)}, "mb": {"S": (2, 8, 16, 16), "conv": (2, 192, 3)},
                      "mb_nc": {"S": (2, 4, 8, 32)}}


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2], SPECS[4]], ids=["linear", "lightning", "mamba2"])
def test_state_not_mutated_need_state_and_gradients(spec):
    m = make(spec)
    x = torch.randn(2, 20, 64, dtype=F64)
    with torch.no_grad():
        _, st = m(x)
        saved = {k: v.clone() for k, v in st.items()}
        m(x[:, :1], st)
        y, none = m(x, st, need_state=False)
    assert none is None and torch.isfinite(y).all()
    assert all(torch.equal(saved[k], st[k]) for k in st)
    m = m.float().train()
    x = torch.randn(2, 70, 64, requires_grad=True)
    m(x, need_state=False)[0].pow(2).mean().backward()
    for name, p in list(m.named_parameters()) + [("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bfloat16_forward():
    for spec in (SPECS[0], SPECS[2], SPECS[4]):
        m = make(spec).to(torch.bfloat16)
        y, st = m(torch.randn(1, 70, 64, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all() and st["S"].dtype == torch.float32
        assert m.state_bytes(1, 70, torch.bfloat16) == sum(v.numel() * v.element_size() for v in st.values())


def test_flops_per_token():
    for spec in (SPECS[0], SPECS[2], SPECS[4]):
        m = make(spec)
        f1, f64, f4k = m.flops_per_token(1), m.flops_per_token(64), m.flops_per_token(4096)
        assert m.proj_flops() < f1 < f64 == f4k                         # constant beyond one chunk
    lig = make({"name": "lightning"})
    assert lig.flops_per_token(100) == lig.proj_flops() + 4 * (4 * 16 * 16 + 4 * 64 * 16)


# ------------------------------------------------------------------------------------- against transformers

def _minimax(L):
    from transformers import MiniMaxConfig

    return MiniMaxConfig(hidden_size=64, num_attention_heads=4, head_dim=16, num_hidden_layers=L, block_size=16,
                         layer_types=["linear_attention"] * L)


@pytest.mark.parametrize("L,layer", [(1, 0), (4, 0), (4, 2), (4, 3)])
def test_lightning_matches_transformers_minimax(L, layer):
    """Same weights loaded into transformers' MiniMaxLightningAttention and ours: same layer output (T = 50 with
    blocks of 16 in theirs, chunks of 64 in ours). Theirs builds its decay tables in float32, hence ~1e-8."""
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    torch.manual_seed(0)
    ref = MiniMaxLightningAttention(_minimax(L), layer).double().eval()
    with torch.no_grad():
        ref.norm.weight.normal_(1.0, 0.2)
    ours = make({"name": "lightning"}, layer_idx=layer, n_layers=L)
    res = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not res.missing_keys and set(res.unexpected_keys) == {"slope_rate", "query_decay", "key_decay",
                                                                 "diagonal_decay"}
    x = torch.randn(2, 50, 64, dtype=F64)
    with torch.no_grad():
        y_ref = ref(x, None, None)[0]
        y, _ = ours(x)
    assert rel_rms(y, y_ref) < 1e-6


def _mamba2_ref(G, chunk):
    from transformers import Mamba2Config as HFMamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = HFMamba2Config(hidden_size=64, num_heads=8, head_dim=16, state_size=16, n_groups=G, expand=2,
                         conv_kernel=4, chunk_size=chunk, num_hidden_layers=1)
    torch.manual_seed(0)
    ref = Mamba2Mixer(cfg, 0).double().eval()
    with torch.no_grad():                                              # move away from the plain initialisation
        ref.A_log.uniform_(-1.0, 2.5)
        ref.D.normal_()
        ref.dt_bias.normal_()
        ref.norm.weight.normal_(1.0, 0.2)
        ref.conv1d.bias.normal_(0.0, 0.1)
    return ref


@pytest.mark.parametrize("G", [1, 2, 8])
def test_mamba2_matches_transformers_torch_path(G):
    """Same weights loaded (strict) into transformers' Mamba2Mixer (its pure-PyTorch path, float32 inside) and
    ours: same layer output, T = 70 (their chunks 16, ours 64)."""
    ref = _mamba2_ref(G, 16)
    ours = make({"name": "mamba2", "head_dim": 16, "d_state": 16, "n_groups": G})
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 70, 64, dtype=F64)
    with torch.no_grad():
        y_ref = ref(x)
        y, _ = ours(x)
    assert rel_rms(y, y_ref) < 1e-6


# -------------------------------------------------------------------------------------------------- configs

def test_mamba2_heads_are_derived_from_expand():
    cfg = make_config({"name": "mamba2"}, d_model=256, n_heads=4)     # registry fills num_heads = 4 ...
    m = build_mixer({"name": "mamba2"}, d_model=256, n_heads=4)       # ... the mixer derives 2 * 256 / 64 = 8
    assert cfg.num_heads == 4 and m.H == 8 and m.cfg.num_heads == 8 and m.d_inner == 512
    assert build_mixer({"name": "mamba2", "num_heads": 16, "head_dim": 32}, 256, 4).H == 16
    with pytest.raises(ValueError, match=r"num_heads=4 \* head_dim=64"):
        build_mixer({"name": "mamba2", "num_heads": 4}, 256, 4)
    with pytest.raises(ValueError, match="not divisible by head_dim=48"):
        build_mixer({"name": "mamba2", "head_dim": 48}, 64, 2)
    with pytest.raises(ValueError, match="n_groups=3"):
        build_mixer({"name": "mamba2", "n_groups": 3}, 256, 4)


@pytest.mark.parametrize("spec,fragment", [
    ({"name": "linear", "expand_v": 0.3}, "expand_v=0.3"),
    ({"name": "linear", "eps": 0}, "eps=0"),
    ({"name": "linear", "chunk_size": 0}, "chunk_size=0"),
    ({"name": "lightning", "chunk_size": 0}, "chunk_size=0"),
    ({"name": "lightning", "norm_eps": -1.0}, "norm_eps=-1.0"),
    ({"name": "mamba2", "d_state": 0}, "d_state=0"),
    ({"name": "mamba2", "dt_min": 0.5, "dt_max": 0.1}, "dt_min=0.5"),
    ({"name": "mamba2", "expand": 0}, "expand=0"),
    ({"name": "lightning", "decay": 1}, "no option(s) ['decay']"),
])
def test_config_errors(spec, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        make_config(spec, d_model=64, n_heads=4)


@pytest.mark.parametrize("name,cls", [("linear", "LinearAttentionConfig"), ("lightning", "LightningConfig"),
                                      ("mamba2", "Mamba2Config")])
def test_yaml_lists_every_option_with_its_default(name, cls, compose):
    import importlib

    from runner.config import validate

    mod = importlib.import_module(f"runner.mixers.{name}")
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(mod, cls))}
    with open(f"{CONF}/attention/{name}.yaml") as fh:
        text = fh.read()
    assert text.startswith("# ") and "@package" not in text
    assert yaml.safe_load(text) == defaults
    cfg = compose(f"attention={name}", "model=tiny", "ratio=1:1")
    facts = validate(cfg)
    assert facts["attention"].name == name
    m = build_mixer(dict(cfg.attention), cfg.model.d_model, cfg.model.n_heads, layer_idx=0, n_layers=2)
    y, _ = m(torch.randn(1, 5, cfg.model.d_model))
    assert y.shape == (1, 5, cfg.model.d_model)


def test_mamba2_strong_decay_finite_gradients():
    """dt * A around -450 per step (A_log = 5, dt ~ 3): forward and backward stay finite in float32."""
    m = make({"name": "mamba2", "d_state": 16, "head_dim": 16}).float().train()
    with torch.no_grad():
        m.A_log.fill_(5.0)
        m.dt_bias.fill_(3.0)
    x = torch.randn(2, 130, 64, requires_grad=True)
    y, _ = m(x, need_state=False)
    y.pow(2).mean().backward()
    assert torch.isfinite(y).all()
    for name, p in list(m.named_parameters()) + [("x", x)]:
        assert torch.isfinite(p.grad).all(), name
