"""Learning-rate fairness: a sweep over train.lr is grouped per rate (the rate is part of a configuration, the seed
is not), the report names each architecture's best rate, compares it with the next best by seed, ranks the
architectures at each shared rate and at their own, and writes tuned_lr.json; ``train.lr=tuned`` then trains at the
rate that table gives the configuration, refuses one it lacks, and warns where the training differs from the one
tuned. Synthetic results.json files with known losses; the table is read back by a real (tiny) run."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from runner.config import ConfigError, compose_config, validate
from runner.report import build_report
from runner.tuned_lr import config_key, lookup
from test_report import fake_results

# eval loss by (architecture, rate, seed): softmax best at 1e-2, linear best at 3e-3 (and worse than softmax at
# 1e-2, better at 3e-3: the ranking at one shared rate depends on the rate)
LOSS = {
    ("softmax", 1e-3): [1.90, 1.92, 1.91], ("softmax", 3e-3): [1.70, 1.72, 1.69], ("softmax", 1e-2): [1.60, 1.61, 1.62],
    ("linear", 1e-3): [1.80, 1.82, 1.79], ("linear", 3e-3): [1.65, 1.66, 1.645], ("linear", 1e-2): [1.75, 1.74, 1.76],
}
ARCH = {"softmax": ("softmax", "0:1", "FFFF"), "linear": ("linear", "1:0", "LLLL")}


def _results(arch, lr, seed, loss):
    attention, ratio, lt = ARCH[arch]
    r = fake_results(attention, ratio, lt, full="softmax")
    r["config"].update(seed=seed, train={"lr": lr, "steps": 10, "batch_size": 4}, data={"name": "stdlib",
                                                                                        "tokenizer": "bytes"})
    r["config"]["model"].update(n_layers=4, n_heads=2)
    r["config"]["objective"] = {"name": "next_token"}
    r["eval"] = {"loss": loss, "ppl": float(np.exp(loss)), "bpb": loss / np.log(2), "tokens": 4096}
    return r


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    s = tmp_path_factory.mktemp("lr")
    k = 0
    for (arch, lr), losses in LOSS.items():
        for seed, loss in enumerate(losses):
            d = s / f"{k}_{arch}_lr{lr}_seed{seed}"
            d.mkdir()
            (d / "results.json").write_text(json.dumps(_results(arch, lr, seed, loss)))
            k += 1
    return s, build_report(str(s))


def test_the_rate_is_part_of_a_configuration_and_the_seed_is_not(lr_sweep):
    _, out = lr_sweep
    by = {g["config"]: g for g in out["groups"]}
    assert sorted(by) == sorted(f"{a} {ARCH[a][1]} small train.lr={lr:g}" for a, lr in LOSS)
    g = by["linear 1:0 small train.lr=0.003"]
    assert g["seeds"] == [0, 1, 2] and g["stats"]["eval_loss"]["mean"] == pytest.approx(np.mean(LOSS["linear", 3e-3]))
    # each rate is compared with the all-softmax model at that rate, not another
    assert g["baseline"] == "softmax 0:1 small train.lr=0.003"
    diffs = np.subtract(LOSS["linear", 3e-3], LOSS["softmax", 3e-3])
    assert g["diff"]["eval_loss"]["mean"] == pytest.approx(diffs.mean())


def test_the_best_rate_of_each_architecture_and_the_table(lr_sweep):
    s, out = lr_sweep
    table = json.loads((s / "tuned_lr.json").read_text())["entries"]
    soft = table["softmax FFFF d64 L4 H2 T=64 stdlib/bytes next_token"]
    lin = table["linear LLLL d64 L4 H2 T=64 stdlib/bytes next_token"]
    assert soft["lr"] == 1e-2 and soft["loss"] == pytest.approx(np.mean(LOSS["softmax", 1e-2])) and soft["at_edge"]
    assert lin["lr"] == 3e-3 and not lin["at_edge"] and lin["grid"] == [1e-3, 3e-3, 1e-2] and lin["seeds"] == 3
    assert lin["train"]["steps"] == 10 and lin["train"]["batch_size"] == 4
    md = (s / "report.md").read_text()
    section = md.split("## Learning rate")[1].split("\n## ")[0]
    assert "- softmax 0:1 small: best rate 0.01" in section and "at the edge of the grid" in section
    assert "- linear 1:0 small: best rate 0.003" in section
    # next best of linear: 1e-2, paired by seed against 3e-3, with the t interval computed here
    d = np.subtract(LOSS["linear", 1e-2], LOSS["linear", 3e-3])
    lo, hi = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    assert f"0.01 is {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]: significantly worse" in section
    # the ranking at a shared rate is not the ranking at the tuned rates
    assert "- each at its best rate: softmax 0:1 small < linear 1:0 small" in section
    assert "- all at 0.003: linear 1:0 small < softmax 0:1 small (a different order from the tuned rates)" in section
    assert "- all at 0.01: softmax 0:1 small < linear 1:0 small (the same order as at the tuned rates)" in section
    assert f"train.lr_table={s / 'tuned_lr.json'}" in section


def test_a_next_best_inside_the_noise_is_said_so(tmp_path):
    for k, (lr, losses) in enumerate(((1e-3, [1.70, 1.75, 1.66]), (3e-3, [1.69, 1.74, 1.68]))):
        for seed, loss in enumerate(losses):
            d = tmp_path / f"{k}_{seed}"
            d.mkdir()
            (d / "results.json").write_text(json.dumps(_results("softmax", lr, seed, loss)))
    build_report(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "best rate 0.003" in md and "within noise" in md.split("## Learning rate")[1]


def test_a_sweep_at_one_rate_per_configuration_is_no_search(tmp_path):
    for k, (arch, lr) in enumerate((("softmax", 1e-2), ("linear", 3e-3))):
        d = tmp_path / str(k)
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_results(arch, lr, 0, 1.7)))
    out = build_report(str(tmp_path))
    assert out["tuned_lr"] is None and not (tmp_path / "tuned_lr.json").exists()
    assert "## Learning rate" not in (tmp_path / "report.md").read_text()


def test_lookup_refuses_what_the_table_lacks_and_warns_on_other_training(lr_sweep, tmp_path):
    s, _ = lr_sweep
    path = str(s / "tuned_lr.json")
    cfg = _results("linear", "tuned", 0, 0.0)["config"]
    cfg["train"].update(lr_table=path)
    entry, notes = lookup(cfg, "LLLL")
    assert entry["lr"] == 3e-3 and notes == []
    cfg["train"]["steps"] = 500
    entry, notes = lookup(cfg, "LLLL")
    assert entry["lr"] == 3e-3 and "steps=500 (tuned at 10)" in notes[0]
    entry, notes = lookup(cfg, "LLLF")
    assert entry is None and "has no rate for this configuration" in notes[0] and "linear LLLL" in notes[0]
    cfg["seq_len"] = 128
    assert lookup(cfg, "LLLL")[0] is None
    assert config_key(cfg, "LLLL") == "linear LLLL d64 L4 H2 T=128 stdlib/bytes next_token"


def _table_for(cfg, tmp_path, lr):
    facts = validate(cfg)
    key = config_key(__import__("omegaconf").OmegaConf.to_container(cfg, resolve=True), "".join(facts["layer_types"]))
    path = tmp_path / "tuned_lr.json"
    path.write_text(json.dumps({"entries": {key: {"lr": lr, "loss": 1.0, "grid": [lr / 3, lr, lr * 3],
                                                  "train": {"steps": 3}}}}))
    return str(path)


def test_validate_gives_the_tuned_rate_and_refuses_a_missing_entry(tmp_path):
    tiny = ["model=tiny", "arch=linear_1_0"]
    path = _table_for(compose_config(tiny), tmp_path, 0.02)
    facts = validate(compose_config(tiny + ["train.lr=tuned", f"train.lr_table={path}", "train.steps=3"]))
    assert facts["tuned_lr"]["lr"] == 0.02 and facts["notes"] == []
    with pytest.raises(ConfigError, match="has no rate for this configuration"):
        validate(compose_config(["model=tiny", "arch=all_softmax", "train.lr=tuned", f"train.lr_table={path}"]))


def test_a_run_at_the_tuned_rate_records_the_rate_it_trained_at(tmp_path):
    tiny = ["model=tiny", "arch=all_softmax", "seq_len=32", "train.batch_size=2", "train.warmup_steps=1",
            "train.eval_every=0", "data.max_bytes=100000", "threads=1"]
    path = _table_for(compose_config(tiny), tmp_path, 0.0123)
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "runner", *tiny, "stages=[train]", "train.steps=3", "train.lr=tuned",
                        f"train.lr_table={path}", f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "train.lr=tuned: 0.0123 from" in p.stdout
    rec = json.loads((run / "results.json").read_text())
    assert rec["config"]["train"]["lr"] == 0.0123 and rec["config"]["train"]["lr_table"] == path
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    from types import SimpleNamespace

    from runner.train import lr_at
    schedule = SimpleNamespace(lr=0.0123, warmup_steps=1, steps=3, min_lr_ratio=0.1)
    assert rows and all(r["lr"] == pytest.approx(lr_at(r["step"] - 1, schedule)) for r in rows)
