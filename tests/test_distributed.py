"""`torchrun --nproc_per_node=2 -m runner` (gloo on CPU) follows the single-process loss curve with the same
global batch, and only rank 0 writes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_end_to_end import ROOT, run_cli

RUN = ["attention=softmax", "model=tiny", "seq_len=32", "train.steps=8", "train.batch_size=4", "train.log_every=1",
       "train.eval_every=0", "train.warmup_steps=2", "stages=[train,eval]", "eval.max_tokens=1024",
       "data.max_bytes=200000", "threads=1"]


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    p = run_cli(*RUN, f"hydra.run.dir={single}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "runner", *RUN, f"hydra.run.dir={ddp}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    a = [json.loads(line)["loss"] for line in open(single / "metrics.jsonl") if "loss" in json.loads(line)]
    b = [json.loads(line)["loss"] for line in open(ddp / "metrics.jsonl") if "loss" in json.loads(line)]
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    r = json.loads((ddp / "results.json").read_text())
    assert r["status"] == "completed" and r["env"]["world_size"] == 2
    assert abs(r["eval"]["loss"] - json.loads((single / "results.json").read_text())["eval"]["loss"]) < 1e-4


def test_batch_not_divisible_by_processes_is_an_error(monkeypatch, compose):
    from runner.config import ConfigError, validate

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        validate(compose("attention=softmax", "train.batch_size=4"))
