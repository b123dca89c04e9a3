"""Fault drills: what a run folder says after the ways a run really ends. kill -9 at a random step and in the middle
of a checkpoint write, a full disk, SIGTERM in each stage, two processes in one folder, a damaged checkpoint, a
refused change of settings, a re-evaluation: the folder always tells what happened, a completed record is never
downgraded, and the rerun of the same command finishes the run with one training curve."""
import json
import os
import random
import signal
import subprocess
import time

import pytest
import torch

from bad_inputs import run_cli as run_quiet
from test_end_to_end import run_cli
from test_end_to_end import start_cli as _start
from test_resume import RUN


def _record(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def _steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def _wait(pred, proc, timeout=180, what="the condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if pred():
                return
        except (OSError, ValueError, KeyError):
            pass  # a file being replaced right now
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _ckpt_step(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every drill is compared with."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    p = run_cli(*RUN, f"hydra.run.dir={ref}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return ref


def _same_end(ref, run_dir):
    a, b = _record(ref), _record(run_dir)
    assert b["status"] == "completed"
    assert a["train"]["final_loss"] == b["train"]["final_loss"] and a["eval"]["loss"] == b["eval"]["loss"]
    steps, evals = _steps(run_dir)
    assert steps == list(range(1, 41)) and len(evals) == 1  # one curve: no step twice, none missing


def test_kill9_at_a_random_step_then_the_same_command_finishes_the_run(reference, tmp_path):
    cut = tmp_path / "cut"
    proc = _start(cut, *RUN)
    target = random.Random().randint(6, 30)  # a different step every time this test runs
    _wait(lambda: max(_steps(cut)[0]) >= target, proc, what=f"step {target}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _record(cut)["status"] == "running"  # what it said when it died
    p = run_cli(*RUN, f"hydra.run.dir={cut}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "marked 'died'" in p.stdout
    _same_end(reference, cut)
    r = _record(cut)
    assert [a["status"] for a in r["attempts"]] == ["died", "completed"], r["attempts"]
    assert r["train"]["resumed_from_step"] in (None, *range(5, 41, 5))


def test_kill9_during_a_checkpoint_write_leaves_the_old_checkpoint_and_no_leftover(reference, tmp_path):
    """Checkpoints after every step; the test kills the run the moment a temporary checkpoint file appears (it
    retries until one kill lands inside a write), then reruns."""
    for attempt in range(8):
        cut = tmp_path / f"cut{attempt}"
        proc = _start(cut, *RUN, "train.ckpt_every=1")
        ckdir = cut / "checkpoints"
        _wait(lambda: os.path.exists(ckdir / "last.pt") and _ckpt_step(cut) >= 3, proc, what="a checkpoint")
        caught = False
        while proc.poll() is None and not caught:
            caught = any(n.startswith(".tmp-") for n in os.listdir(ckdir))
            if caught:
                proc.send_signal(signal.SIGKILL)
        proc.wait()
        if caught and any(n.startswith(".tmp-") for n in os.listdir(ckdir)):
            break
    else:
        pytest.fail("no kill landed inside a checkpoint write in 8 tries")
    before = _ckpt_step(cut)  # the last complete checkpoint is still whole and readable
    p = run_cli(*RUN, "train.ckpt_every=1", f"hydra.run.dir={cut}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "did not finish writing" in p.stdout and "resuming from" in p.stdout and f"at step {before}" in p.stdout
    assert not [n for n in os.listdir(ckdir) if n.startswith(".tmp-")]
    _same_end(reference, cut)


def test_sigterm_in_each_stage_records_interrupted_exits_143_and_the_rerun_completes(reference, tmp_path):
    # a longer evaluation and a bench ladder, so that the signal lands inside each stage
    slow = [*RUN, "stages=[train,eval,bench]", "eval.max_tokens=65536", "eval.tasks=[ppl,extrapolation]",
            "eval.extrapolation_factors=[2,4,8]", "bench.lengths=[64,128,256,512,1024]", "bench.repeats=3"]
    # training: at step 8 of 40 (the 32 steps left take over a second); eval and bench: a moment after the stage
    # before them recorded its section
    waits = {"train": (lambda d: max(_steps(d)[0], default=0) >= 8, 0.0),
             "eval": (lambda d: "train" in _record(d), 0.2), "bench": (lambda d: "eval" in _record(d), 0.2)}
    for stage, (ready, pause) in waits.items():
        run_dir = tmp_path / stage
        proc = _start(run_dir, *slow)
        _wait(lambda: ready(run_dir), proc, what=f"the {stage} stage")
        time.sleep(pause)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 143, out[-3000:]
        r = _record(run_dir)
        assert r["status"] == "interrupted" and r["error"].startswith(f"SIGTERM during the {stage} stage"), r["error"]
        assert r["attempts"][-1]["status"] == "interrupted"
        assert "Traceback" not in out
        p = run_cli(*slow, f"hydra.run.dir={run_dir}")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        r = _record(run_dir)
        assert r["status"] == "completed" and [a["status"] for a in r["attempts"]] == ["interrupted", "completed"]
        assert r["train"]["final_loss"] == _record(reference)["train"]["final_loss"]
        if stage != "train":
            assert "not trained again" in p.stdout and r["produced_by"]["train"] == 1
        assert [row["status"] for row in r["bench"]] == ["ok"] * 5


def test_a_second_process_in_the_same_folder_is_refused_and_the_first_is_undisturbed(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(run_dir, *RUN, "train.steps=100000")
    _wait(lambda: _steps(run_dir)[0], first, what="the first run's first steps")
    second = run_quiet([*RUN, f"hydra.run.dir={run_dir}"])
    assert second.returncode == 1, second.stdout[-2000:]
    assert f"another run (pid {first.pid} on" in " ".join(second.stdout.split() + second.stderr.split())
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    r = _record(run_dir)
    assert [a["status"] for a in r["attempts"]] == ["interrupted"]  # the refused process wrote nothing
    steps, _ = _steps(run_dir)
    assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaved rows


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as a full disk: needs root")
def test_a_full_disk_ends_failed_with_what_to_do(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:  # the tiny model's checkpoint (about 2.9 MB with the optimizer) does not fit in 2 MB
        p = run_quiet([*RUN, "train.steps=6", "train.ckpt_every=0", f"hydra.run.dir={disk}/run"])
        out = " ".join((p.stdout + p.stderr).split())
        assert p.returncode == 1, out[-3000:]
        assert "the disk is full during the train stage: no space left to write" in out and "Traceback" not in out
        r = json.loads((disk / "run" / "results.json").read_text())
        assert r["status"] == "failed" and r["error"].startswith("DiskFull: the disk is full during the train stage")
        assert r["attempts"][-1]["status"] == "failed"
        left = [n for d in (disk / "run", disk / "run" / "checkpoints") if d.exists() for n in os.listdir(d)]
        assert not [n for n in left if n.startswith(".tmp-")] and ".reserve" not in left
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_eval_or_bench_in_a_trained_folder_measure_the_trained_model(reference, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = _record(run_dir)
    p = run_cli("stages=[eval]", "eval.max_tokens=1024", f"hydra.run.dir={run_dir}")  # no other setting given
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "using the settings of the checkpoint" in p.stdout and "step 40 of 40" in p.stdout
    r = _record(run_dir)
    assert r["eval"]["loss"] == before["eval"]["loss"]  # the trained model, scored again: the same number
    assert r["produced_by"] == {"train": 1, "eval": 2} and r["train"] == before["train"]
    assert r["attempts"][0]["superseded"]["eval"] == before["eval"]
    assert r["config"]["model"]["name"] == "tiny" and r["config"]["stages"] == ["train", "eval"]
    _, evals = _steps(run_dir)
    assert len(evals) == 1  # replaced, not appended

    p = run_cli("stages=[bench]", "bench.lengths=[16,32]", "bench.repeats=1", f"hydra.run.dir={run_dir}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = _record(run_dir)
    assert r["weights"]["source"] == "checkpoint" and r["weights"]["step"] == 40
    assert [row["n"] for row in r["bench"]] == [16, 32] and r["produced_by"]["bench"] == 3
    assert r["config"]["stages"] == ["train", "eval", "bench"] and r["config"]["bench"]["lengths"] == [16, 32]
    assert r["config"]["eval"]["max_tokens"] == 1024


def test_an_attempt_that_does_not_complete_on_a_completed_run_keeps_the_record(reference, tmp_path):
    """A re-evaluation stopped by SIGTERM is recorded in its own attempt; results.json still holds the completed
    run as it was. A refused change of settings and a damaged checkpoint leave it as well."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = _record(run_dir)
    proc = _start(run_dir, "stages=[eval]", "eval.batch_size=1", "eval.tasks=[ppl,extrapolation]",
                  "eval.extrapolation_factors=[2,4,8]")
    for line in proc.stdout:  # the weights are loaded: the evaluation (a few seconds at batch 1) has begun
        if line.startswith("weights:") and "step 40 of 40" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    r = _record(run_dir)
    assert {k: v for k, v in r.items() if k != "attempts"} == {k: v for k, v in before.items() if k != "attempts"}
    assert r["attempts"][-1]["status"] == "interrupted"
    assert r["attempts"][-1]["error"] == "SIGTERM during the eval stage"
    assert len(_steps(run_dir)[1]) == 1 and _steps(run_dir)[1][0]["eval_loss"] == before["eval"]["loss"]

    p = run_quiet([*RUN, "train.lr=1e-3", f"hydra.run.dir={run_dir}"])  # another training: refused
    assert p.returncode == 2 and "train.lr: checkpoint 0.003, this command 0.001" in " ".join(p.stdout.split())
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # damaged
    p = run_quiet(["stages=[eval]", f"hydra.run.dir={run_dir}"])
    assert p.returncode == 1 and f"mv {ckpt} {ckpt}.damaged" in " ".join(p.stdout.split())
    r = _record(run_dir)
    assert {k: v for k, v in r.items() if k != "attempts"} == {k: v for k, v in before.items() if k != "attempts"}
    assert [a["status"] for a in r["attempts"]] == ["completed", "interrupted", "refused", "refused"]


def test_a_rerun_before_the_first_checkpoint_keeps_one_curve(reference, tmp_path):
    cut = tmp_path / "cut"
    proc = _start(cut, *RUN, "train.ckpt_every=0")
    _wait(lambda: max(_steps(cut)[0]) >= 5, proc, what="step 5")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoints" / "last.pt").exists()
    p = run_cli(*RUN, "train.ckpt_every=0", f"hydra.run.dir={cut}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    _same_end(reference, cut)


@pytest.mark.parametrize("ckpt_every,kept", [(2, "the checkpoint of step 4 is kept"), (0, "no checkpoint was written")])
def test_a_non_finite_loss_says_which_checkpoint_is_kept(compose, tmp_path, monkeypatch, ckpt_every, kept):
    from runner.job import run
    from runner.model import HybridLM

    real, calls = HybridLM.loss, []

    def loss(self, idx, targets):  # the loss of the 5th step turns NaN, as a diverging run's would
        total, lm = real(self, idx, targets)
        calls.append(1)
        return (total * float("nan"), lm * float("nan")) if len(calls) == 5 else (total, lm)

    monkeypatch.setattr(HybridLM, "loss", loss)
    cfg = compose(*[o for o in RUN if not o.startswith("train.ckpt_every")], f"train.ckpt_every={ckpt_every}",
                  "train.eval_every=0")
    r = run(cfg, run_dir=str(tmp_path), multirun=True)
    assert r["status"] == "failed" and r["error"].startswith("NonFiniteLoss: the training loss became nan at step 5")
    assert kept in r["error"] and "Lower train.lr (now 0.003)" in r["error"]
    assert os.path.exists(tmp_path / "checkpoints" / "last.pt") == (ckpt_every == 2)


def test_a_checkpoint_from_before_the_objective_and_options_settings_still_resumes(reference, tmp_path):
    """Checkpoints written before `objective` and `data.options` existed hold neither: they count as the defaults,
    so such a run is evaluated (or resumed) rather than refused."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    path = run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    del state["identity"]["objective"], state["identity"]["data"]["options"]
    torch.save(state, path)
    p = run_cli(*RUN, "stages=[eval]", f"hydra.run.dir={run_dir}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert _record(run_dir)["eval"]["loss"] == _record(reference)["eval"]["loss"]


class _RunsCodeWhenUnpickled:
    """A pickled object whose loading creates a file: what a hostile 'checkpoint' could do with any code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_other_python_objects_is_refused_unread(tmp_path):
    """Checkpoints are read with weights_only=True: a file that would run code when unpickled is refused with what
    to do, and its code never runs; a real checkpoint of ours (tensors, optimizer state, RNG states, the identity's
    plain values) loads."""
    from runner import checkpoint

    marker = tmp_path / "code_ran"
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "step": 1, "identity": {}, "x": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(checkpoint.CorruptCheckpoint) as e:
        checkpoint.load(str(path))
    assert not marker.exists()
    assert "holds Python objects other than tensors" in str(e.value) and f"mv {path} {path}.foreign" in str(e.value)
    torch.save([1, 2], path)  # plain values, but not a checkpoint
    with pytest.raises(checkpoint.CorruptCheckpoint, match="it holds a list, not a checkpoint's dict"):
        checkpoint.load(str(path))


def test_our_own_checkpoint_loads_with_weights_only(reference):
    from runner import checkpoint

    state = checkpoint.load(str(reference / "checkpoints" / "last.pt"))
    assert state["step"] == 40 and state["identity"]["model"]["name"] == "tiny"
    assert isinstance(state["data_rng"], torch.Tensor) and state["optimizer"]["state"]


def test_weights_that_do_not_fit_the_model_are_refused_with_what_differs(reference):
    """A checkpoint whose identity matches but whose weights are not the model's (edited, or written by a version
    with other layers): the trained weights or their moving average, each checked by name and shape."""
    from runner import checkpoint

    path = str(reference / "checkpoints" / "last.pt")
    res, state = _record(reference), checkpoint.load(path)
    vocab = res["data"]["vocab_size"]
    model = checkpoint.run_model(res, path, vocab, "cpu", state=state)  # as written: it fits
    assert torch.equal(model.embed.weight, state["model"]["embed.weight"])
    ema = {k: v.clone() for k, v in state["model"].items()}
    ema["embed.weight"] = ema["embed.weight"][:3]
    del ema["norm.weight"]
    with pytest.raises(checkpoint.CorruptCheckpoint) as e:
        checkpoint.run_model(res, path, vocab, "cpu", state={**state, "ema": ema})
    said = str(e.value)
    assert "in its 'ema' weights, norm.weight is missing; embed.weight has shape [3, 64] where the model has" in said
    assert f"mv {path} {path}.foreign" in said
    with pytest.raises(checkpoint.CorruptCheckpoint, match="in its 'model' weights, extra.weight is not a weight"):
        checkpoint.run_model(res, path, vocab, "cpu", state={**state, "model": {**state["model"], "extra.weight":
                                                                                 torch.zeros(1)}})
