"""Property: for any values of the numeric settings, a run is either refused before any work, with a message that
names a setting it was given, or it starts and ends as completed, or as failed with an error the user can act on
(a message, no stack trace), or is still going after a few seconds (a valid but long run, e.g. 2^31 steps: it is
then stopped as a SIGTERM would, and must say 'interrupted'). Never a crash or a silent nonsense run. Values are drawn by hypothesis from
the edges (negative, zero, NaN, infinities, beyond 64-bit) and from small ordinary ones, one or two keys at a time on
top of the tiny model."""
import json
import math
import os
import signal

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from runner.job import run
from runner.stops import Interrupted

BASE = ["model=tiny", "seq_len=16", "train.steps=2", "train.batch_size=2", "train.warmup_steps=1",
        "train.eval_every=0", "train.log_every=1", "eval.max_tokens=64", "eval.batch_size=4", "bench.lengths=[16]",
        "bench.repeats=1", "bench.decode_tokens=1", "data.max_bytes=60000", "threads=1"]

EDGE_INTS = [-(2**70), -(2**31), -1, 0, 2**31, 2**63, 2**64 + 1, 10**30]
EDGE_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-300, 1e300]


def ints(lo, hi):  # an edge one time in four, else an ordinary value (ranges that hold bad ones too)
    return st.one_of(st.sampled_from(EDGE_INTS), *[st.integers(lo, hi)] * 3)


def floats(lo, hi):
    return st.one_of(st.sampled_from(EDGE_FLOATS), *[st.floats(lo, hi, allow_nan=False)] * 3)


KEYS = {
    "model.d_model": ints(1, 96), "model.n_layers": ints(1, 6), "model.n_heads": ints(1, 8),
    "model.mlp_hidden": ints(1, 256), "model.norm_eps": floats(-0.1, 0.5), "model.init_std": floats(-0.1, 1),
    "seq_len": ints(1, 48), "seed": ints(0, 1000), "threads": ints(0, 16),
    "train.steps": ints(0, 6), "train.batch_size": ints(0, 8), "train.lr": floats(-0.1, 12),
    "train.min_lr_ratio": floats(-0.1, 1.2), "train.warmup_steps": ints(0, 10), "train.weight_decay": floats(-1, 12),
    "train.beta1": floats(-0.1, 1.1), "train.beta2": floats(-0.1, 1.1), "train.grad_clip": floats(-1, 10),
    "train.log_every": ints(0, 5), "train.eval_every": ints(0, 3), "train.eval_batches": ints(0, 3),
    "train.ckpt_every": ints(0, 3), "eval.max_tokens": ints(0, 512), "eval.batch_size": ints(0, 16),
    "eval.position_buckets": ints(0, 64), "bench.batch_size": ints(0, 4), "bench.decode_tokens": ints(0, 4),
    "bench.repeats": ints(0, 3), "bench.time_budget_s": floats(-1, 60), "bench.memory_budget_gb": floats(-1, 10),
    "data.val_fraction": floats(-0.1, 1.1), "data.max_bytes": ints(0, 100000),
    "logger.init_timeout_s": floats(-1, 60),
}
# how a refusal may name a key besides its own dotted name: the mixers speak of their own options, the memory
# check of what does not fit
ALIASES = {"model.n_heads": ["num_heads"], "model.d_model": ["d_model", "cannot fit"],
           "model.n_layers": ["cannot fit"], "model.mlp_hidden": ["cannot fit"], "seq_len": ["cannot fit"],
           "train.batch_size": ["cannot fit"], "model.norm_eps": ["norm_eps"]}
LIMIT_S = 6.0  # a run still going after this long has started: it is stopped there
ACTIONABLE = ("DataSettingError", "DataUnavailable", "OutOfMemory", "DiskFull", "NonFiniteLoss")


def _literal(v):
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(KEYS)), st.just(None), min_size=1, max_size=2).flatmap(
    lambda keys: st.fixed_dictionaries({k: KEYS[k] for k in keys})))
@example({"train.steps": 2**31})  # valid and endless: stopped by the time limit, recorded as interrupted
@example({"seq_len": 48, "train.batch_size": 8})
def test_any_values_are_refused_cleanly_or_run(compose, tmp_path_factory, values):
    overrides = [*BASE, *(f"{k}={_literal(v)}" for k, v in values.items())]
    cfg = compose(*overrides)
    run_dir = tmp_path_factory.mktemp("prop")
    threads = torch.get_num_threads()

    def time_limit(signum, frame):
        raise Interrupted("SIGTERM", "the test's time limit")

    old = signal.signal(signal.SIGALRM, time_limit)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    try:
        r = run(cfg, run_dir=str(run_dir), multirun=True)
    except Interrupted:
        r = json.loads((run_dir / "results.json").read_text())
        assert r["status"] == "interrupted" and r["error"].startswith("SIGTERM"), r
        event("still running")
        return
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        torch.set_num_threads(threads)
    status, error = r["status"], str(r.get("error", ""))
    event(status)
    assert status in ("invalid_config", "completed", "failed"), (values, status, error)
    if status == "invalid_config":
        said = " ".join(error.split())
        named = [k for k in values if f"{k}=" in said or any(a in said for a in ALIASES.get(k, []))]
        assert named, f"the refusal names none of {sorted(values)}: {error}"
        assert not os.path.exists(run_dir / "metrics.jsonl") and not os.path.exists(run_dir / "checkpoints")
    elif status == "failed":  # started, then stopped by something the message explains (data too short, ...)
        assert error.startswith(ACTIONABLE) and "Traceback" not in error, (values, error)
    else:
        assert r["train"]["steps"] == cfg.train.steps and math.isfinite(r["eval"]["loss"])


@pytest.mark.parametrize("key,value", [("train.lr", "nan"), ("train.lr", "inf"), ("seed", str(2**64)),
                                       ("threads", "1000000"), ("model.d_model", str(2**40))])
def test_edges_hypothesis_might_not_draw(compose, tmp_path, key, value):
    r = run(compose(*BASE, f"{key}={value}"), run_dir=str(tmp_path), multirun=True)
    assert r["status"] == "invalid_config" and f"{key}=" in r["error"], r
