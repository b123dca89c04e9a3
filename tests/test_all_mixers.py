"""Every mixer trains, evaluates and benchmarks inside the hybrid (3:1) and alone (1:0) on the tiny model."""
import pytest

from runner.job import run
from runner.mixers import REGISTRY, mixer_names

ANY_LENGTH = sorted(mixer_names(fixed_length=False))  # position_mlp runs at one length, non-causally only

TINY = ["model=tiny", "seq_len=32", "train.steps=3", "train.batch_size=2", "train.warmup_steps=1",
        "train.eval_every=0", "eval.max_tokens=256", "bench.lengths=[16,48]", "bench.repeats=1",
        "bench.decode_tokens=2", "data.max_bytes=100000"]


@pytest.mark.parametrize("ratio", ["3:1", "1:0"])
@pytest.mark.parametrize("attention", ANY_LENGTH)
def test_every_mixer_runs_every_stage(compose, tmp_path, attention, ratio):
    cfg = compose(*TINY, f"attention={attention}", f"ratio={ratio}")
    r = run(cfg, run_dir=str(tmp_path), multirun=False)
    assert r["status"] == "completed"
    assert r["layer_types"] == (["L", "L", "L", "F"] if ratio == "3:1" else ["L"] * 4)
    assert r["train"]["steps"] == 3 and r["train"]["final_loss"] > 0
    assert 0 < r["eval"]["bpb"] < 20
    assert [row["status"] for row in r["bench"]] == ["ok", "ok"]
    for row in r["bench"]:
        assert row["state_bytes"] == row["state_bytes_measured"], row
    grows = r["bench"][1]["state_bytes"] > r["bench"][0]["state_bytes"]
    quadratic_layers = ratio == "3:1" or REGISTRY[attention][3]
    window = cfg.attention.get("window") if ratio == "1:0" else None
    assert grows == (quadratic_layers and not window), (attention, ratio, r["bench"])


@pytest.mark.parametrize("attention", sorted(REGISTRY))
def test_every_mixer_declares_its_residual_projection(attention):
    """The scaled initialisation finds the projections into the residual stream by the mixer's declaration, not
    by their names' spelling: each declared name is an nn.Linear that writes d_model features."""
    from torch import nn

    from runner.mixers import build_mixer

    m = build_mixer({"name": attention, **({"length": 64} if attention == "position_mlp" else {})}, 64, 2,
                    causal=attention != "position_mlp")
    assert m.residual_out, f"{attention} declares no residual_out"
    for name in m.residual_out:
        proj = m.get_submodule(name)
        assert isinstance(proj, nn.Linear) and proj.out_features == 64, (attention, name)  # position_mlp: 64 cells
