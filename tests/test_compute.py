"""Compute-matched views: each training row's cumulative FLOPs and seconds, the validation loss at the largest FLOP
budget every job of a sweep reached (interpolated in log FLOPs), and the report's section and plot."""
import json
import math

import pytest

from runner.compute import budget, loss_at, val_curve
from runner.report import build_report
from test_report import fake_results


def _curve(points):
    return [{"step": i + 1, "flops": f, "train_s": 1.0 + i, "val_loss": v} for i, (f, v) in enumerate(points)]


def test_budget_and_interpolation_in_log_flops():
    a = _curve([(1e10, 3.0), (2e10, 2.6)])
    b = _curve([(2e10, 2.9), (4e10, 2.4)])
    c = _curve([(1e10, 3.0), (4e10, 2.0)])
    assert budget([a, b, c]) == 2e10
    assert loss_at(a, 2e10) == 2.6 and loss_at(b, 2e10) == 2.9
    assert loss_at(c, 2e10) == pytest.approx(3.0 - (math.log(2) / math.log(4)) * 1.0)  # halfway in log FLOPs
    assert loss_at(b, 1e10) is None  # no point that early


def _job(sweep, name, attention, ratio, lt, points):
    d = sweep / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(fake_results(attention, ratio, lt, bpb=2.0, full="softmax")))
    with open(d / "metrics.jsonl", "w") as f:
        for r in _curve(points):
            f.write(json.dumps({**r, "loss": r["val_loss"] + 0.1}) + "\n")


def test_the_report_compares_at_the_common_budget(tmp_path):
    s = tmp_path / "sweep"
    _job(s, "0_softmax", "softmax", "0:1", "FFFF", [(2e10, 2.9), (4e10, 2.4)])
    _job(s, "1_gdn", "gated_deltanet", "3:1", "LLLF", [(1e10, 3.0), (4e10, 2.0)])
    _job(s, "2_cheap", "linear", "1:0", "LLLL", [(1e10, 3.1), (2e10, 2.8)])
    out = build_report(str(s))
    by = {j["job"]: j for j in out["jobs"]}
    assert {j["flops_budget"] for j in by.values()} == {2e10}
    assert by["0_softmax"]["val_loss_at_budget"] == 2.9 and by["2_cheap"]["val_loss_at_budget"] == 2.8
    assert by["1_gdn"]["val_loss_at_budget"] == pytest.approx(2.5)
    md = (s / "report.md").read_text()
    assert "## Compute-matched" in md and "at equal steps" in md and "2e+10 FLOPs" in md
    assert (s / "loss_vs_compute.png").exists()


def test_training_rows_carry_flops_and_seconds(compose, tmp_path):
    from runner.job import run
    from runner.model import build_model

    cfg = compose("model=tiny", "seq_len=32", "train.steps=4", "train.batch_size=2", "train.warmup_steps=1",
                  "train.eval_every=2", "train.log_every=1", "stages=[train]", "data.max_bytes=60000", "threads=1")
    r = run(cfg, run_dir=str(tmp_path), multirun=True)
    assert r["status"] == "completed"
    per_token = build_model(cfg, 256).train_flops_per_token(32)
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [row["flops"] for row in rows] == [row["step"] * 2 * 32 * per_token for row in rows]
    assert all(b["train_s"] > a["train_s"] > 0 for a, b in zip(rows, rows[1:]))
    assert [p["step"] for p in val_curve(str(tmp_path))] == [2, 4]
