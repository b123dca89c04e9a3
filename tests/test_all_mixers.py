"""Every mixer trains, evaluates and benchmarks inside the hybrid (3:1) and alone (1:0) on the tiny model."""
import pytest

from runner.job import run
from runner.mixers import REGISTRY

TINY = ["model=tiny", "seq_len=32", "train.steps=3", "train.batch_size=2", "train.warmup_steps=1",
        "train.eval_every=0", "eval.max_tokens=256", "bench.lengths=[16,48]", "bench.repeats=1",
        "bench.decode_tokens=2", "data.max_bytes=100000"]


@pytest.mark.parametrize("ratio", ["3:1", "1:0"])
@pytest.mark.parametrize("attention", sorted(REGISTRY))
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
