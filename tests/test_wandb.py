"""The W&B logging is proved by reading the offline run back from its files."""
import json

from test_end_to_end import TINY, run_cli
from wandb_reader import read_offline_run


def test_offline_wandb_run_holds_config_history_and_summary(tmp_path):
    out = tmp_path / "run"
    p = run_cli(*TINY, "attention=softmax", "logger=wandb", "logger.group=unit", "train.log_every=2",
                f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    run = read_offline_run(str(out))
    cfg = run["config"]
    assert cfg["attention"]["name"] == "softmax" and cfg["ratio"] == "3:1" and cfg["seq_len"] == 32
    assert cfg["layer_types"] == ["L", "L", "L", "F"] and cfg["n_params"] == results["n_params"]
    assert run["group"] == "unit" and "attention=softmax" in run["tags"] and "ratio=3:1" in run["tags"]
    losses = {h["_step"]: h["train/loss"] for h in run["history"] if "train/loss" in h}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert losses and all(abs(losses[s] - curve[s]) < 1e-9 for s in losses), (losses, curve)
    assert abs(run["summary"]["eval/bpb"] - results["eval"]["bpb"]) < 1e-9
    assert run["summary"]["status"] == "completed"
    assert run["summary"]["layer_types"] == results["layer_types"]
