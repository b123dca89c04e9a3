"""`torchrun --nproc_per_node=2 -m runner` (gloo on CPU) follows the single-process loss curve with the same
global batch, and only rank 0 writes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_end_to_end import ROOT, loss_curve, run_cli

RUN = ["attention=softmax", "model=tiny", "seq_len=32", "train.steps=8", "train.batch_size=4", "train.log_every=1",
       "train.eval_every=0", "train.warmup_steps=2", "stages=[train,eval]", "eval.max_tokens=1024",
       "data.max_bytes=200000", "threads=1"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    p = run_cli(*RUN, f"hydra.run.dir={single}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return single


def _torchrun(run_dir, *extra):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "runner", *RUN, *extra,
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_single_process(tmp_path, single_run, parallel):
    """DDP replicates, FSDP shards parameters, gradients and optimizer state per block: both follow the
    single-process curve, and (FSDP) the checkpoint holds the same full tensors as the single process's."""
    run = tmp_path / parallel
    p = _torchrun(run, f"parallel={parallel}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    a, b = loss_curve(single_run), loss_curve(run)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "completed" and r["env"]["world_size"] == 2
    assert r["train"]["parallel"] == parallel and r["train"]["sharded"] == (parallel == "fsdp")
    assert abs(r["eval"]["loss"] - json.loads((single_run / "results.json").read_text())["eval"]["loss"]) < 1e-4
    import torch

    mine = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ref = torch.load(single_run / "checkpoints" / "last.pt", weights_only=True)
    assert mine["model"].keys() == ref["model"].keys() and mine["step"] == ref["step"] == 8
    for key, t in ref["model"].items():
        assert not hasattr(mine["model"][key], "placements"), f"{key} was saved sharded"
        torch.testing.assert_close(mine["model"][key], t, rtol=1e-4, atol=1e-5, msg=key)
    assert mine["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()


def test_batch_not_divisible_by_processes_is_an_error(monkeypatch, compose):
    from runner.config import ConfigError, validate

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        validate(compose("attention=softmax", "train.batch_size=4"))
