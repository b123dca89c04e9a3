"""recursion=trm (runner/recursion.py): the gradient comes from the last cycle of each supervision step only, (y, z)
travel detached between steps, halting stops a batch when the head is confident, the evaluation's per-step
accuracies end where the plain evaluation is, the settings are checked, and a recursive run resumes bit for bit."""
import json
import signal

import pytest
import torch
import torch.nn.functional as F

from runner import recursion
from runner.model import HybridLM
from runner.scoring import IGNORE

N_LATENT, CYCLES, STEPS = 2, 3, 3


def _model(halting=True, layers="LL", attention="softmax"):
    torch.manual_seed(0)
    spec = {"name": "trm", "latent_steps": N_LATENT, "cycles": CYCLES, "supervision_steps": STEPS,
            "halting": halting}
    return HybridLM(10, 32, 2, list(layers), {"name": attention}, {"name": "softmax"}, objective="fill",
                    recursion=spec).double()


def _batch(B=3, T=12):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 10, (B, T), generator=g)
    y = torch.where(x == 0, torch.randint(1, 10, (B, T), generator=g), torch.full_like(x, IGNORE))
    y[:, 0] = 5  # every example has answers
    return x, y


def _reference_loss(model, x, targets, detach_cycles=True):
    """TRM's deep recursion written out longhand (no halting): the loss's gradient must be this one's."""
    def net(h):
        for b in model.blocks:
            h, _ = b(h, None, need_state=False)
        return F.rms_norm(h, (h.shape[-1],), eps=model.norm.eps)

    e = F.rms_norm(model.embed(x), (model.d_model,), eps=model.norm.eps)
    y, z = model.recursion.y_init.expand_as(e), model.recursion.z_init.expand_as(e)
    scored = targets != IGNORE
    total = 0.0
    for _ in range(STEPS):
        for c in range(CYCLES):
            if detach_cycles and c == CYCLES - 1:  # the cycles before it ran without gradient
                y, z = y.detach(), z.detach()
            for _ in range(N_LATENT):
                z = net(e + y + z)
            y = net(y + z)
        logits = model.head(model.norm(y))
        q = model.recursion.halt(y.mean(1)).squeeze(-1)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none").sum(1)
        right = ((logits.argmax(-1) == targets) | ~scored).all(1).double()
        total = total + (nll / scored.sum(1) + F.binary_cross_entropy_with_logits(q, right, reduction="none")).mean()
        y, z = y.detach(), z.detach()  # carried to the next step without its graph
    return total / STEPS


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_gradient_is_the_last_cycles_of_each_step_only():
    model, (x, y) = _model(halting=False), _batch()
    with torch.no_grad():  # a halting head that says something, so that its gradient is not trivial
        model.recursion.halt.weight.normal_(0, 0.5)
        model.recursion.halt.bias.zero_()
    ours = _grads(model, model(x, targets=y)[0])
    ref = _grads(model, _reference_loss(model, x, y))
    assert set(ours) == set(ref) and "recursion.halt.weight" in ours and "embed.weight" in ours
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)
    through_all = _grads(model, _reference_loss(model, x, y, detach_cycles=False))
    assert any((through_all[k] - ref[k]).abs().max() > 1e-6 for k in ref)  # the test can tell the difference


def _backward_passes(model, x, y):
    """How many runs of the stack the backward goes through, and how many the forward made."""
    calls = {"forward": 0, "backward": 0}

    def hook(_module, _inputs, out):
        calls["forward"] += 1
        if out[0].requires_grad:
            out[0].register_hook(lambda g: calls.__setitem__("backward", calls["backward"] + 1))

    handle = model.blocks[0].register_forward_hook(hook)
    model(x, targets=y)[0].backward()
    handle.remove()
    return calls


def test_each_supervision_step_backpropagates_through_one_cycle():
    model, (x, y) = _model(halting=False), _batch()
    calls = _backward_passes(model, x, y)
    assert calls["forward"] == STEPS * CYCLES * (N_LATENT + 1)
    assert calls["backward"] == STEPS * (N_LATENT + 1)


@pytest.mark.parametrize("halting,bias,steps", [(True, 10.0, 1), (True, -10.0, STEPS), (False, 10.0, STEPS)])
def test_halting_stops_the_batch_when_the_head_is_confident(halting, bias, steps):
    model, (x, y) = _model(halting=halting), _batch()
    with torch.no_grad():
        model.recursion.halt.bias.fill_(bias)
    assert _backward_passes(model, x, y)["forward"] == steps * CYCLES * (N_LATENT + 1)
    assert model.recursion.steps_run == steps  # what training logs (metrics.jsonl "supervision_steps")


def test_inference_runs_every_step_and_the_per_step_accuracy_ends_at_the_answer():
    model, (x, y) = _model(), _batch(B=5)
    model.eval()
    with torch.no_grad():
        logits, state = model(x)
        every = list(recursion.steps(model, x))
        model.recursion.halt.weight.normal_(0, 1.0)
        model.recursion.halt.bias.zero_()
        out, last = recursion.by_supervision_step(model, x, y, batch_size=2)
    assert state is None and len(every) == STEPS
    torch.testing.assert_close(logits, every[-1][0])
    scored = y != IGNORE
    ok = (logits.argmax(-1) == y) & scored
    assert torch.equal(last, ok) and not model.training
    assert out["steps"][-1]["accuracy"] == pytest.approx(float(ok[scored].double().mean()))
    assert [s["step"] for s in out["steps"]] == list(range(1, STEPS + 1))
    q = torch.stack([qs for _, qs in recursion.steps(model, x)])  # (steps, B)
    first = [next((i + 1 for i in range(STEPS) if q[i, b] > 0), STEPS) for b in range(len(x))]
    assert out["halted"]["mean_steps"] == pytest.approx(sum(first) / len(first))
    by = out["halted"]["by_step"]
    assert [(b["step"], b["examples"]) for b in by] == sorted((s, first.count(s)) for s in set(first))
    right = torch.stack([((lg.argmax(-1) == y) | ~scored).all(1) for lg, _ in every])  # (steps, B)
    for b in by:
        solved = [bool(right[s - 1, i]) for i, s in enumerate(first) if s == b["step"]]
        assert b["exact"] == pytest.approx(sum(solved) / len(solved))
    with pytest.raises(ValueError, match="keeps no state"):
        model(x, need_state=True)


@pytest.mark.parametrize("spec,causal,says", [
    ({"name": "loop"}, False, "is not a recursion scheme"),
    ({"name": "trm", "cycle": 2}, False, "model.recursion.cycle is not a setting of recursion=trm"),
    ({"name": "trm", "cycles": 0}, False, "model.recursion.cycles=0 must be a whole number in [1, 64]"),
    ({"name": "trm", "halting": "yes"}, False, "is not a switch"),
    ({"name": "trm"}, True, "use objective=fill"),
    ({"name": "none", "cycles": 2}, False, "the recursion is none"),
])
def test_the_settings_are_checked(spec, causal, says):
    assert any(says in p for p in recursion.problems(spec, causal)), recursion.problems(spec, causal)
    assert recursion.problems({"name": "trm"}, False) == [] and recursion.problems({"name": "none"}, True) == []


RUN = ["recursion=trm", "objective=fill", "data=sudoku", "seq_len=81", "model=tiny", "model.n_layers=2",
       "attention=softmax", "ratio=1:0", "model.recursion.latent_steps=2", "model.recursion.cycles=2",
       "model.recursion.supervision_steps=2", "data.n_train=32", "data.n_test=8", "data.options.min_clues=34",
       "train.steps=24", "train.batch_size=4", "train.log_every=1", "train.eval_every=0", "train.warmup_steps=2",
       "train.ckpt_every=3", "train.ema=0.9", "eval.tasks=[ppl,accuracy]", "stages=[train,eval]", "threads=1"]


def test_a_recursive_run_resumes_bit_for_bit(tmp_path):
    from test_end_to_end import run_cli, start_cli
    from test_resume import _wait_for_checkpoint

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    p = run_cli(*RUN, f"hydra.run.dir={ref}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    said = " ".join(p.stdout.split())
    assert "recursion trm: 2 supervision steps x 2 cycles" in said and "exact after each supervision step 1:" in said
    proc = start_cli(cut, *RUN)
    _wait_for_checkpoint(cut, proc, min_step=6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["step"]
    p = run_cli(*RUN, f"hydra.run.dir={cut}")
    assert p.returncode == 0 and "resuming from" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    a, b = json.loads((ref / "results.json").read_text()), json.loads((cut / "results.json").read_text())
    assert killed_at < 24 and b["train"]["resumed_from_step"] == killed_at
    curve = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss")) for r in curve] == [(r["step"], r.get("loss")) for r in again]
    assert a["eval"]["accuracy"] == b["eval"]["accuracy"] and a["eval"]["loss"] == b["eval"]["loss"]
    ours, theirs = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (ref, cut))
    for key, t in ours["ema"].items():  # the moving average resumes too (train.ema, TRM's EMA of the weights)
        assert torch.equal(t, theirs["ema"][key]), key
    assert any(not torch.equal(t, ours["model"][k]) for k, t in ours["ema"].items())
    assert "measure the moving average of the weights" in p.stdout
    row = a["eval"]["accuracy"]["by_length"][0]
    assert len(row["by_supervision_step"]["steps"]) == 2
    assert all(1 <= r["supervision_steps"] <= 2 for r in curve if "loss" in r)  # each batch's steps run
    assert row["by_supervision_step"]["steps"][-1]["exact"] == row["exact"]


def test_the_report_gives_the_recursive_models_accuracy_by_supervision_step_and_the_baseline():
    from runner.tasks import accuracy

    def row(exact, seed):
        steps = [{"step": i + 1, "accuracy": 0.5, "exact": e} for i, e in enumerate(exact)]
        return {"length": 81, "accuracy": 0.5, "exact": exact[-1], "examples": 10, "answers": 500,
                "beyond_training": False, "by": {}, "baseline": {"name": "propagation", "accuracy": 0.6, "exact": 0.5},
                "by_supervision_step": {"steps": steps, "halted": {"mean_steps": 2.0 + seed, "accuracy": 0.5,
                                                                   "exact": exact[min(1, len(exact) - 1)]}}}

    def job(config, rows):
        return [{"config": config, "label": f"{config} {i}", "layer_types": "LL",
                 "results": {"eval": {"accuracy": {"task": "sudoku", "train_length": 81, "by_length": [r]}}}}
                for i, r in enumerate(rows)]

    jobs = job("trm", [row([0.1, 0.2, 0.3], 0), row([0.1, 0.2, 0.3], 1)]) + job("stack", [
        {k: v for k, v in row([0.4], 0).items() if k != "by_supervision_step"}])
    table = lambda h, rows: ["|".join(h)] + ["|".join(map(str, r)) for r in rows]  # noqa: E731
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = accuracy.report_lines(jobs, table, fmt)
    assert "config|step 1|step 2|step 3|halted|halted steps" in lines
    assert "trm|0.100 ± 0.000 (2)|0.200 ± 0.000 (2)|0.300 ± 0.000 (2)|0.200 ± 0.000 (2)|2.500 ± 6.353 (2)" in lines
    assert not any(line.startswith("stack|0") for line in lines)  # a model without recursion has no such row
    assert any(line.startswith("baseline: propagation|-|0.500 ± 0.000 (3)") for line in lines)


def _vote(rank, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out[rank] = recursion._anyone_running(torch.tensor([False, rank == 1]))  # only rank 1 still runs
    finally:
        dist.destroy_process_group()


def test_under_torchrun_every_rank_runs_as_long_as_the_longest():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_vote, args=(port, out), nprocs=2)
    assert dict(out) == {0: True, 1: True}  # rank 0's examples all halted, yet it runs on with rank 1
    assert recursion._anyone_running(torch.tensor([False, False])) is False


def test_the_stages_after_training_measure_the_moving_average(compose, tmp_path):
    from runner.checkpoint import load, run_model
    from runner.job import run
    from runner.scoring import mean_loss
    from runner.data import load_corpus

    cfg = compose(*[a for a in RUN if not a.startswith(("threads", "train.ckpt_every"))], "train.steps=6")
    r = run(cfg, run_dir=str(tmp_path), multirun=False)
    assert r["status"] == "completed"
    state = load(str(tmp_path / "checkpoints" / "last.pt"))
    corpus = load_corpus(cfg.data, seq_len=81)
    model = run_model(r, str(tmp_path / "checkpoints" / "last.pt"), corpus.vocab_size, "cpu", state)
    assert all(torch.equal(p, state["ema"][k]) for k, p in model.state_dict().items())
    trained = run_model(r, "", corpus.vocab_size, "cpu", {**state, "ema": None})
    assert any(not torch.equal(p, state["ema"][k]) for k, p in trained.state_dict().items())
    vx, vy = corpus.val_windows(81, 8 * 81)
    assert mean_loss(model, vx, vy, 8) != mean_loss(trained, vx, vy, 8)


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_a_moving_average_decay_outside_0_1_is_refused(compose, value):
    from runner.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"train.ema=.* must be a decay in \[0, 1\), e.g. 0.999"):
        validate(compose(f"train.ema={value}"))


def test_the_fit_check_counts_every_supervision_steps_logits(compose, monkeypatch):
    """Deep supervision keeps each step's logits until the backward: the memory floor has N copies of them."""
    from runner import fit
    from runner.config import validate

    args = [a for a in RUN if not a.startswith("model.recursion.supervision_steps")] + ["train.batch_size=1000"]
    one_batch = 1000 * 81 * fit.vocab_size(compose(*args)) * fit.BYTES_PER_LOGIT
    monkeypatch.setattr(fit, "machine_memory", lambda device: (20 * one_batch, "this machine's"))
    for steps, fits in ((16, True), (32, False)):
        cfg = compose(*args, f"model.recursion.supervision_steps={steps}")
        why = fit.problem(cfg, validate(cfg), "cpu")
        assert (why is None) == fits, why
    assert "x 32 supervision steps" in why and "fewer model.recursion.supervision_steps" in why
