"""One tiny job through `python -m runner`, checking every field of results.json, and bad input failing fast."""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["model=tiny", "seq_len=32", "train.steps=6", "train.batch_size=2", "train.eval_every=3",
        "train.warmup_steps=2", "eval.max_tokens=512", "bench.lengths=[16,32]", "bench.repeats=1",
        "bench.decode_tokens=2", "data.max_bytes=200000"]


def run_cli(*args, timeout=300):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_cli(run_dir, *args) -> subprocess.Popen:
    """The runner started in the background in ``run_dir``, for the tests that interrupt it; stdout and stderr
    together in one pipe."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "runner", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def loss_curve(run_dir) -> list[float]:
    """The training losses a run logged to its metrics.jsonl, in order."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("attention", ["gated_deltanet", "softmax"])
def test_tiny_run_writes_complete_results(tmp_path, attention):
    out = tmp_path / "run"
    p = run_cli(*TINY, f"attention={attention}", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "completed"
    assert r["config"]["attention"]["name"] == attention and r["layer_types"] == ["L", "L", "L", "F"]
    assert r["n_params"] > 0
    for k in ("steps", "tokens", "tokens_per_s", "final_loss", "wall_s"):
        assert r["train"][k] is not None, k
    assert r["train"]["steps"] == 6 and r["train"]["tokens"] == 6 * 2 * 32
    for k in ("loss", "ppl", "bpb", "unigram_bpb"):
        assert r["eval"][k] > 0, k
    assert [row["n"] for row in r["bench"]] == [16, 32]
    for row in r["bench"]:
        assert row["status"] == "ok"
        for k in ("train_step_s", "train_peak_bytes", "prefill_tokens_per_s", "decode_s_per_token", "state_bytes"):
            assert row[k] is not None and row[k] > 0, (k, row)
        assert row["state_bytes"] == row["state_bytes_measured"]
        for k in ("train_step_s", "prefill_s", "decode_s_per_token"):  # the timing noise beside each median
            lo, hi = row[f"{k}_range"]
            assert 0 < lo <= row[k] <= hi, (k, row)
    text, gen = r["bench_generation"]  # the validation text's sample quality, then one decode step per token
    assert text["sampler"] == "data" and text["entropy_bits"] > 0 and "judge_ppl" not in text
    assert gen["sampler"] == "autoregressive" and gen["status"] == "ok" and gen["tokens_per_s"] > 0
    assert gen["samples"] == 8 and gen["entropy_bits"] >= 0
    assert r["data"]["fingerprint"] and r["data"]["train_tokens"] > 0
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in c for c in curve) and any(c.get("step") == 6 for c in curve)
    # each row's tokens/s covers the steps since the previous row: together they add up to the run's time
    rows = [c for c in curve if "tokens_per_s" in c]
    before = [0] + [c["tokens"] for c in rows[:-1]]
    seconds = sum((c["tokens"] - b) / c["tokens_per_s"] for b, c in zip(before, rows))
    assert seconds == pytest.approx(r["train"]["tokens"] / r["train"]["tokens_per_s"], rel=1e-6)
    assert (out / "checkpoints" / "last.pt").exists()
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


@pytest.mark.parametrize("override,fragment", [
    ("ratio=3-1", "not of the form"), ("ratio=0:0", "no layers"), ("seq_len=0", "seq_len=0"),
    ("train.steps=-1", "train.steps=-1"), ("data.path=/definitely/not/here", "does not exist"),
])
def test_bad_input_exits_nonzero_before_any_work(tmp_path, override, fragment):
    extra = ["data=text"] if override.startswith("data.path") else []
    t0 = time.time()
    p = run_cli(*extra, override, f"hydra.run.dir={tmp_path / 'bad'}")
    assert p.returncode != 0
    assert fragment in p.stdout + p.stderr
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()  # no work was started
    assert time.time() - t0 < 60


def test_unknown_mixer_names_the_choices(tmp_path):
    p = run_cli("attention=nope", f"hydra.run.dir={tmp_path / 'bad'}")
    assert p.returncode != 0 and "gated_deltanet" in p.stdout + p.stderr
