"""attention=position_mlp (runner/mixers/position_mlp.py): a SwiGLU over the positions, equal to the per-channel
formula written out, non-causal, of one length only, and refused where a run would need a causal or longer form."""
import pytest
import torch
import torch.nn.functional as F

from runner.config import ConfigError, validate
from runner.mixers import build_mixer
from runner.model import HybridLM

T, D = 9, 16


def _mixer(**opts):
    torch.manual_seed(0)
    return build_mixer({"name": "position_mlp", "length": T, **opts}, D, 2, causal=False).double()


def test_it_is_the_per_channel_swiglu_over_positions():
    m = _mixer(expansion=2.0)
    x = torch.randn(3, T, D, dtype=torch.float64)
    y, state = m(x, None, need_state=True)
    g_w, u_w = m.gate_up.weight[:m.hidden], m.gate_up.weight[m.hidden:]
    assert m.hidden == 2 * T and state is None
    for b in range(3):
        for c in range(D):
            u = x[b, :, c]  # this channel's T values
            want = m.down.weight @ (F.silu(g_w @ u) * (u_w @ u))
            torch.testing.assert_close(y[b, :, c], want, rtol=1e-12, atol=1e-12)


def test_every_position_reads_every_other_and_the_channels_share_it():
    m = _mixer()
    x = torch.randn(1, T, D, dtype=torch.float64)
    later = x.clone()
    later[:, -1] += 1.0
    assert (m(later)[0][:, 0] - m(x)[0][:, 0]).abs().max() > 1e-6  # the first cell sees the last: not causal
    p = torch.randperm(D)
    torch.testing.assert_close(m(x[:, :, p])[0], m(x)[0][:, :, p])  # one map for every channel, in any order


def test_it_runs_at_its_length_only_and_never_causally():
    m = _mixer()
    with pytest.raises(ValueError, match="mixes exactly 9 positions"):
        m(torch.randn(1, T + 1, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="it cannot run causally"):
        build_mixer({"name": "position_mlp", "length": T}, D, 2)
    with pytest.raises(ValueError, match="length=None must be the number of positions"):
        build_mixer({"name": "position_mlp"}, D, 2, causal=False)


@pytest.mark.parametrize("overrides,says", [
    ([], "it has no causal form"),
    (["objective=fill", "data=sudoku", "seq_len=81"], "bench.lengths=[256, 512, 1024, 2048, 4096]: attention="
                                                      "position_mlp runs at seq_len only; use bench.lengths=[81]"),
    (["objective=fill", "data=sudoku", "seq_len=81", "bench.lengths=[81]", "attention.length=64"],
     "attention.length=64 must be seq_len=81"),
])
def test_a_run_that_cannot_use_it_is_refused_before_it_starts(compose, overrides, says):
    cfg = compose("attention=position_mlp", "ratio=1:0", *overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert says in str(e.value)
    validate(compose("attention=position_mlp", "ratio=1:0", "objective=fill", "data=sudoku", "seq_len=81",
                     "bench.lengths=[81]"))


def test_trm_with_the_mlp_inside_learns_through_the_mixer():
    torch.manual_seed(0)
    model = HybridLM(10, D, 2, ["L", "L"], {"name": "position_mlp", "length": T}, {"name": "softmax"},
                     objective="fill", recursion={"name": "trm", "latent_steps": 2, "cycles": 2,
                                                  "supervision_steps": 2})
    x = torch.randint(0, 10, (4, T))
    y = torch.where(x == 0, 3, -100)
    y[:, 0] = 4
    loss, lm = model(x, targets=y)
    loss.backward()
    grad = model.blocks[0].mixer.gate_up.weight.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(lm)
