"""Checkpoints resume exactly: a run killed with SIGKILL and rerun ends where an uninterrupted run ends; Ctrl-C
leaves a usable checkpoint, status 'interrupted' and exit status 130; the same seed gives the same curve to the last
bit. (More ways a run ends: tests/test_faults.py.)"""
import json
import os
import signal
import time

import torch

from test_end_to_end import run_cli, start_cli

RUN = ["attention=softmax", "model=tiny", "seq_len=32", "train.steps=40", "train.batch_size=4", "train.log_every=1",
       "train.eval_every=10", "train.warmup_steps=4", "train.ckpt_every=5", "eval.max_tokens=1024",
       "stages=[train,eval]", "data.max_bytes=200000", "threads=1"]


def _curve(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def _start(run_dir, *extra):
    return start_cli(run_dir, *RUN, *extra)


def _wait_for_checkpoint(run_dir, proc, min_step=5, timeout=120):
    path = os.path.join(run_dir, "checkpoints", "last.pt")
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if os.path.exists(path):
            try:
                if torch.load(path, weights_only=True)["step"] >= min_step:
                    return
            except Exception:
                pass  # being replaced right now
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    p = run_cli(*RUN, f"hydra.run.dir={ref}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    proc = _start(cut)
    _wait_for_checkpoint(cut, proc, min_step=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert killed_at < 40

    p = run_cli(*RUN, f"hydra.run.dir={cut}")  # the same command in the same folder resumes
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"resuming from" in p.stdout
    a, b = json.loads((ref / "results.json").read_text()), json.loads((cut / "results.json").read_text())
    assert b["status"] == "completed" and b["train"]["resumed_from_step"] == killed_at
    assert a["train"]["final_loss"] == b["train"]["final_loss"]
    assert a["eval"]["loss"] == b["eval"]["loss"]
    ca = [(r["step"], r.get("loss")) for r in _curve(ref)]
    cb = [(r["step"], r.get("loss")) for r in _curve(cut)]
    assert ca == cb  # the whole curve, no duplicated or missing points


def test_finished_run_is_not_retrained(tmp_path):
    out = tmp_path / "done"
    p = run_cli(*RUN, "train.steps=5", f"hydra.run.dir={out}")
    assert p.returncode == 0
    before = (out / "results.json").read_text()
    p = run_cli(*RUN, "train.steps=5", f"hydra.run.dir={out}")
    assert p.returncode == 0 and "not running it again" in p.stdout
    assert (out / "results.json").read_text() == before


def test_sigint_leaves_checkpoint_and_interrupted_status(tmp_path):
    out = tmp_path / "int"
    proc = _start(out, "train.steps=100000")
    _wait_for_checkpoint(out, proc, min_step=5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130  # the shell's code for SIGINT
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "interrupted" and r["error"].startswith("SIGINT during the train stage: stopped at step")
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] >= 5 and "model" in ckpt and "optimizer" in ckpt
    assert max(row["step"] for row in _curve(out)) == ckpt["step"]


def test_same_seed_same_curve_to_the_last_bit(tmp_path):
    runs = []
    for name in ("a", "b"):
        p = run_cli(*RUN, "train.steps=12", f"hydra.run.dir={tmp_path / name}")
        assert p.returncode == 0
        runs.append([r.get("loss") for r in _curve(tmp_path / name)])
    assert runs[0] == runs[1]
    p = run_cli(*RUN, "train.steps=12", "seed=1", f"hydra.run.dir={tmp_path / 'c'}")
    assert [r.get("loss") for r in _curve(tmp_path / "c")] != runs[0]
