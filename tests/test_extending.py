"""A new evaluation task and a new data source are one module each plus their registry line (README "Extending"):
written here as modules of the test, registered, and run through a real job and the sweep report without any other
change: the task's section lands in results.json, its column in summary.csv and its table in report.md; the source's
settings are validated by the source and its data trains the model."""
import csv
import sys
import types

import pytest
import torch

from runner import evals, sources
from runner.config import ConfigError, validate
from runner.corpus import Corpus
from runner.job import run
from runner.report import build_report

TINY = ["model=tiny", "seq_len=16", "train.steps=2", "train.batch_size=2", "train.warmup_steps=1",
        "train.eval_every=0", "eval.max_tokens=64", "stages=[train,eval]", "data.max_bytes=60000", "threads=1"]


def _register(monkeypatch, registry, name, mod):
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(registry, name, mod.__name__)


def first_position_task():
    """A task: the loss at the first position of the windows (no context at all), with a csv column and a table."""
    m = types.ModuleType("tests_first_position_task")
    m.NEEDS = "text"
    m.task_problems = lambda c: [] if c.eval.options.get("first_position", {}).get("unit", "nats") in ("nats",) \
        else ["eval.options.first_position.unit must be 'nats'"]
    m.run = lambda ctx: {"first_position": ctx.scores(1).summary(positions=slice(0, 1))["loss"]}
    m.describe = lambda ev: [f"  first position: loss {ev['first_position']:.3f}"]
    m.CSV = {"first_position_loss": lambda ev: ev.get("first_position")}
    m.report_lines = lambda jobs, table, fmt: ["## First position", ""] + table(
        ["config", "loss"], [[j["label"], fmt((j["results"].get("eval") or {}).get("first_position"), ".3f")]
                             for j in jobs]) + [""]
    return m


def periodic_source():
    """A source: the text 'abc...' of data.options.period letters, repeated."""
    m = types.ModuleType("tests_periodic_source")
    m.PROVIDES, m.TOKENIZERS = {"text"}, ("bytes",)

    def problems(c):
        p = c.data.options.get("period")
        return [] if isinstance(p, int) and 1 <= p <= 26 else [f"data.options.period={p} must be in [1, 26]"]

    def load(d, seq_len=None, log=None):
        text = bytes(range(97, 97 + d.options["period"])) * 4000
        t = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        return Corpus(t[:-2000].clone(), t[-2000:].clone(), 256, "periodic", f"period {d.options['period']}")

    m.source_problems, m.load = problems, load
    return m


def test_a_new_task_runs_and_reports_with_its_registry_line_only(compose, tmp_path, monkeypatch):
    _register(monkeypatch, evals.REGISTRY, "first_position", first_position_task())
    cfg = compose(*TINY, "eval.tasks=[ppl,first_position]")
    r = run(cfg, run_dir=str(tmp_path / "sweep" / "0_job"), multirun=True)
    assert r["status"] == "completed", r.get("error")
    assert r["eval"]["tasks"] == ["ppl", "first_position"] and r["eval"]["first_position"] > 0
    out = build_report(str(tmp_path / "sweep"))
    with open(tmp_path / "sweep" / "summary.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["first_position_loss"]) == r["eval"]["first_position"]
    assert "## First position" in (tmp_path / "sweep" / "report.md").read_text() and out["jobs"]
    bad = compose(*TINY, "eval.tasks=[first_position]", "+eval.options.first_position.unit=bits")
    with pytest.raises(ConfigError, match="eval.options.first_position.unit must be 'nats'"):
        validate(bad)  # the task's own check


def test_a_new_source_trains_with_its_registry_line_only(compose, tmp_path, monkeypatch):
    _register(monkeypatch, sources.REGISTRY, "periodic", periodic_source())
    with pytest.raises(ConfigError, match=r"data.options.period=40 must be in \[1, 26\]"):
        validate(compose(*TINY, "data.name=periodic", "+data.options.period=40"))  # the source's own check
    r = run(compose(*TINY, "data.name=periodic", "+data.options.period=3", "train.steps=30", "train.lr=1e-2"),
            run_dir=str(tmp_path / "run"), multirun=True)
    assert r["status"] == "completed", r.get("error")
    assert r["data"]["source"] == "period 3" and r["eval"]["bpb"] < 4  # it learned something of 'abcabc...'
