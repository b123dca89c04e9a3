"""The decode step (``Mixer.step``, ``HybridLM.decode_step``) against the eager path it replaces when decoding:
``forward(x, state, need_state=True)``, for every registered mixer and for hybrid models."""
import pytest
import torch

from runner.mixers import build_mixer, mixer_names
from runner.mixers.base import Mixer
from runner.model import HybridLM

D_MODEL, N_HEADS = 64, 2
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

# every registered mixer with its defaults, plus the options that change the step's code path
CAUSAL = sorted(mixer_names(fixed_length=False))  # every mixer with a decode step (not position_mlp)
VARIANTS = [(name, {}) for name in CAUSAL] + [
    ("gated_deltanet", {"num_v_heads": 4, "use_gate": False}),
    ("gated_deltanet", {"use_short_conv": False, "expand_v": 2.0}),
    ("deltanet", {"use_gate": True, "conv_size": 1}),
    ("gated_deltanet", {"allow_neg_eigval": True}),
    ("deltanet", {"allow_neg_eigval": True}),
    ("softmax", {"window": 7, "num_kv_heads": 1}),
    ("softmax", {"rope_fraction": 0.5, "qk_norm": True, "bias": True}),
    ("softmax", {"rope": False}),
    ("gated_attention", {"window": 5, "num_kv_heads": 1}),
    ("kda", {"num_v_heads": 4, "expand_v": 0.5}),
    ("kda", {"use_short_conv": False}),
    ("linear", {"normalize": False, "output_norm": False}),
    ("mamba2", {"d_state": 8, "n_groups": 2, "head_dim": 16, "bias": True}),
    ("mamba2", {"d_state": 8, "use_short_conv": False, "conv_bias": False}),
    ("mla", {"q_lora_rank": 24, "rope": False, "bias": True}),
    ("mla", {"qk_rope_head_dim": 0}),
    ("dsa", {"index_topk": 6}),
    ("dsa", {"index_topk": 6, "q_lora_rank": 16, "bias": True}),
    ("dsa", {"index_topk": 6, "indexer_warmup": True}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in VARIANTS]


def make(name, opts, dtype):
    torch.manual_seed(0)
    spec = {"name": name, **opts}
    if name == "mamba2" and "d_state" not in opts:
        spec["d_state"] = 16
    return build_mixer(spec, D_MODEL, N_HEADS, layer_idx=1, n_layers=4).to(dtype).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the largest magnitude of b."""
    if a.dtype == torch.bool or not a.is_floating_point():
        return 0.0 if torch.equal(a, b) else float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def assert_states_equal(fast, eager, tol):
    assert list(fast) == list(eager)
    for key in eager:
        assert fast[key].shape == eager[key].shape and fast[key].dtype == eager[key].dtype, key
        assert rel(fast[key], eager[key]) <= tol, (key, rel(fast[key], eager[key]))


def snapshot(state):
    return {k: v.clone() for k, v in state.items()}


PIECES = (1, 1, 1, 3, 1, 2, 1)  # decode steps after the prefill: single tokens and a few at once


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_step_equals_forward(name, opts, dtype):
    """Prefill, then decode in single tokens and small pieces through step and through forward: the same outputs
    and states (within float rounding), the input states untouched, and each path continues from the other's
    state."""
    m = make(name, opts, dtype)
    tol = TOL[dtype]
    torch.manual_seed(1)
    x = torch.randn(2, 20 + sum(PIECES), D_MODEL, dtype=dtype)
    with torch.no_grad():
        _, state = m(x[:, :20], None)
        s_eager = s_fast = state
        t = 20
        for i, T in enumerate(PIECES):
            xt = x[:, t:t + T]
            before = snapshot(s_fast)
            y_fast, new_fast = m.step(xt, s_fast)
            assert_states_equal(s_fast, before, 0.0)  # the input state is never modified
            y_eager, s_eager = m(xt, s_eager)
            assert y_fast.shape == y_eager.shape and y_fast.dtype == y_eager.dtype
            assert rel(y_fast, y_eager) < tol, (i, rel(y_fast, y_eager))
            assert_states_equal(new_fast, s_eager, tol)
            # the eager path continues from the step's state too (and the step from the eager's: next round)
            s_fast = new_fast if i % 2 == 0 else s_eager
            t += T
        x_next = torch.randn(2, 1, D_MODEL, dtype=dtype)
        y_cross, _ = m(x_next, new_fast)  # forward continuing from a state the step produced
        assert rel(y_cross, m(x_next, s_eager)[0]) < tol


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_step_continues_the_same_state_twice(name, opts):
    """Two continuations of one state give the same results: the first must not have written into the state the
    second reads (the KV caches' spare room, the recurrent states)."""
    m = make(name, opts, torch.float64)
    torch.manual_seed(2)
    x = torch.randn(2, 24, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, state = m(x[:, :16], None)
        runs = []
        for _ in range(2):
            s, ys = state, []
            for t in range(16, 24):
                y, s = m.step(x[:, t:t + 1], s)
                ys.append(y)
            runs.append((torch.cat(ys, 1), s))
        other = torch.randn(2, 1, D_MODEL, dtype=torch.float64)
        m.step(other, state)  # a third continuation with another token in between
        y_again, s_again = m.step(x[:, 16:17], state)
    assert torch.equal(runs[0][0], runs[1][0])
    assert_states_equal(runs[0][1], runs[1][1], 0.0)
    assert torch.equal(y_again, runs[0][0][:, :1])


@pytest.mark.parametrize("name,opts", VARIANTS[:len(CAUSAL)], ids=IDS[:len(CAUSAL)])
def test_step_follows_weight_changes(name, opts):
    """The step's cached tensors (fused weights, folded gains) follow the parameters: after an optimizer step,
    an in-place edit, a replaced parameter (with eval()) and a dtype change between decode steps it still equals
    forward."""
    m = make(name, opts, torch.float32)
    torch.manual_seed(3)
    x = torch.randn(2, 20, D_MODEL)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)

    def compare(mixer, xs, tol):
        with torch.no_grad():
            _, state = mixer(xs[:, :16], None)
            s_eager = s_fast = state
            for t in range(16, 20):
                y_fast, s_fast = mixer.step(xs[:, t:t + 1], s_fast)
                y_eager, s_eager = mixer(xs[:, t:t + 1], s_eager)
                assert rel(y_fast, y_eager) < tol
                assert_states_equal(s_fast, s_eager, tol)
            return y_fast

    y0 = compare(m, x, 1e-5)  # builds the cache
    y, _ = m(x)  # a training step in eval mode: the cache is not dropped by train()
    y.square().mean().backward()
    opt.step()
    y1 = compare(m, x, 1e-5)
    assert rel(y1, y0) > 1e-4  # the weights did change
    with torch.no_grad():
        next(m.parameters()).mul_(0.5)
    compare(m, x, 1e-5)
    out = m.get_submodule(m.residual_out[0])  # a parameter replaced by a new object: eval() drops the cache
    out.weight = torch.nn.Parameter(out.weight.detach() * 2)
    m.eval()
    compare(m, x, 1e-5)
    m.double()
    compare(m, x.double(), 1e-12)


def test_step_falls_back_to_forward():
    """With autograd recording, without a state, with more tokens than the step takes or under autocast the step
    is forward itself; a mixer without a fast path (the base class's default) is correct too."""
    m = make("gated_deltanet", {}, torch.float32)
    x = torch.randn(2, 16, D_MODEL)
    with torch.no_grad():
        _, state = m(x[:, :4], None)
    y, _ = m.step(x[:, 4:5], state)  # autograd recording: forward, with a graph to the weights
    assert y.requires_grad
    assert torch.equal(y.detach(), m(x[:, 4:5], state)[0].detach())
    with torch.no_grad():
        assert torch.equal(m.step(x[:, :4], None)[0], m(x[:, :4], None)[0])  # no state: the parallel form
        assert torch.equal(m.step(x[:, 4:], state)[0], m(x[:, 4:], state)[0])  # 12 > step_max_tokens
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(m.step(x[:, 4:5], state)[0], m(x[:, 4:5], state)[0])

    class Plain(Mixer):
        def forward(self, x, state=None, *, need_state=True):
            return x * 2, {"n": torch.tensor(x.shape[1])}

    y, s = Plain().step(x, None)
    assert torch.equal(y, 2 * x) and s["n"].item() == 16


@pytest.mark.parametrize("layers,attention,full", [
    (list("LLLF"), {"name": "gated_deltanet"}, {"name": "softmax"}),
    (list("LLLF"), {"name": "kda"}, {"name": "mla"}),
    (list("LLLL"), {"name": "gated_deltanet"}, {"name": "softmax"}),
    (list("FFFF"), {"name": "softmax"}, {"name": "softmax"}),
    (list("LFLF"), {"name": "mamba2", "d_state": 16}, {"name": "dsa", "index_topk": 8}),
    (list("LF"), {"name": "lightning"}, {"name": "gated_attention"}),
], ids=["gdn3:1+softmax", "kda3:1+mla", "gdn1:0", "softmax0:1", "mamba2+dsa", "lightning+gated_attention"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_model_decode_step_equals_forward(layers, attention, full, dtype):
    """HybridLM.decode_step == forward(idx, state, need_state=True): logits and every layer's state, over a
    prefill and 6 decode steps, the input states untouched."""
    torch.manual_seed(0)
    model = HybridLM(256, D_MODEL, N_HEADS, layers, attention, full).to(dtype).eval()
    torch.manual_seed(4)
    idx = torch.randint(0, 256, (2, 26))
    tol = TOL[dtype]
    with torch.no_grad():
        logits, state = model(idx[:, :20], need_state=True)
        s_eager = s_fast = state
        for t in range(20, 26):
            before = [snapshot(s) for s in s_fast]
            l_fast, new_fast = model.decode_step(idx[:, t:t + 1], s_fast)
            for s, b in zip(s_fast, before):
                assert_states_equal(s, b, 0.0)
            l_eager, s_eager = model(idx[:, t:t + 1], s_eager, need_state=True)
            assert rel(l_fast, l_eager) < tol
            for a, b in zip(new_fast, s_eager):
                assert_states_equal(a, b, tol)
            s_fast = new_fast
        # prefill through decode_step (no state, or many tokens) is the eager path
        l_pre, _ = model.decode_step(idx[:, :20], None)
        assert rel(l_pre, logits) == 0.0


def test_bench_decodes_with_the_decode_step(compose, monkeypatch):
    """The bench stage's decode loop runs HybridLM.decode_step (warm-up + bench.decode_tokens steps)."""
    from runner.bench import bench_length
    from runner.model import build_model

    cfg = compose("model=tiny", "bench.decode_tokens=3", "bench.repeats=1", "attention=gated_deltanet")
    model = build_model(cfg, 256)
    calls = []
    real = HybridLM.decode_step

    def counting(self, idx, state):
        calls.append(idx.shape)
        return real(self, idx, state)

    monkeypatch.setattr(HybridLM, "decode_step", counting)
    row = bench_length(model, 16, cfg, torch.device("cpu"))
    assert row["decode_s_per_token"] > 0
    assert len(calls) == 4 and all(c[1] == 1 for c in calls)
