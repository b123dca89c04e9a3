"""Failure isolation in a sweep: a job that fails (an impossible size, an error while training) is recorded with its
status and error, the other jobs complete, the report lists the failure, and the sweep exits 0. With
logger=wandb every job is one offline W&B run grouped by the sweep, a failed one included (summary status
failed), the bench rows as a table with line plots of time and memory vs n. Also the error handling itself:
a failure outside the stages (W&B start) is recorded, and the W&B run is closed whatever fails while finishing."""
import csv
import glob
import json
import os
import random
import types

import pytest

from test_end_to_end import TINY, run_cli
from wandb_reader import read_offline_run

WORDS = ("the model reads a token and writes a state that the next layer mixes with softmax or a linear "
         "recurrence; every sweep records its jobs").split()


def write_corpus(path, n_bytes=20_000, seed=0):
    """A small text corpus (about n_bytes) for jobs that must not depend on the machine's files."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(WORDS) for _ in range(12)) + ".\n"
        lines.append(line)
        size += len(line)
    path.write_text("".join(lines))
    return path


def _tiny_text(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    return [o for o in TINY if not o.startswith("data.max_bytes")] + ["data=text", f"data.path={corpus}"]


def test_failed_jobs_are_recorded_and_the_sweep_completes(tmp_path):
    sweep = tmp_path / "sweep"
    # n_heads=3 does not divide d_model=64: invalid_config before any work; seq_len=32768 is longer than the
    # 18 KB training split: the job fails when training starts. Only (n_heads=2, seq_len=32) can complete.
    p = run_cli("-m", *_tiny_text(tmp_path), "attention=softmax", "threads=1", "logger=wandb",
                "model.n_heads=2,3", "seq_len=32,32768", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    jobs = sorted(d for d in os.listdir(sweep) if (sweep / d).is_dir() and not d.startswith("."))
    assert len(jobs) == 4, jobs
    results = {}
    for d in jobs:
        r = json.loads((sweep / d / "results.json").read_text())  # every job has its results.json
        results[(r["config"]["model"]["n_heads"], r["config"]["seq_len"])] = (d, r)
    assert {k: r["status"] for k, (_, r) in results.items()} == {
        (2, 32): "completed", (2, 32768): "failed", (3, 32): "invalid_config", (3, 32768): "invalid_config"}
    ok_dir, ok = results[(2, 32)]
    assert ok["eval"]["bpb"] > 0 and [row["n"] for row in ok["bench"]] == [16, 32] and "error" not in ok
    failed_dir, failed = results[(2, 32768)]
    assert "too few for seq_len=32768" in failed["error"] and failed["layer_types"] == ["L", "L", "L", "F"]
    for key in ((3, 32), (3, 32768)):
        assert "not divisible by num_heads=3" in results[key][1]["error"]
        assert not (sweep / results[key][0] / "wandb").exists()  # nothing was started

    # the report lists every job, the failures with their errors
    with open(sweep / "summary.csv") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(jobs)
    assert rows[failed_dir]["status"] == "failed" and "too few" in rows[failed_dir]["error"]
    assert rows[ok_dir]["status"] == "completed" and float(rows[ok_dir]["bpb"]) > 0
    report = (sweep / "report.md").read_text()
    assert "4 jobs: 1 completed, 1 failed, 2 invalid_config" in report
    assert "## Jobs that did not complete" in report
    for key in ((2, 32768), (3, 32), (3, 32768)):
        assert f"**{results[key][0]}**" in report

    # W&B: one offline run per started job, grouped by the sweep folder; the failed one says so
    run_ok, run_failed = read_offline_run(str(sweep / ok_dir)), read_offline_run(str(sweep / failed_dir))
    assert run_ok["group"] == run_failed["group"] == "sweep"
    assert run_ok["job_type"] == "softmax+gated_attention 3:1 tiny T=32 text"  # the configuration without the seed
    assert run_ok["summary"]["status"] == "completed"
    assert run_failed["summary"]["status"] == "failed" and "too few" in run_failed["summary"]["error"]
    for tag in ("attention=softmax", "ratio=3:1", "model=tiny", "seq_len=32"):
        assert tag in run_ok["tags"], run_ok["tags"]
    logged = {k: v for h in run_ok["history"] for k, v in h.items()}
    assert logged["bench/_type"] == "table-file" and logged["bench/nrows"] == 2, sorted(logged)
    for name, keys, unit in (("time", ("train_step_s", "prefill_s", "decode_s_per_token"), "s"),
                             ("memory", ("train_peak_bytes", "prefill_peak_bytes", "state_bytes"), "bytes")):
        chart = f"bench/{name}_vs_n"
        assert logged[f"{chart}_table/_type"] == "table-file"
        points = _table_file(sweep / ok_dir, logged[f"{chart}_table/path"])
        expected = {(row["n"], k, row[k]) for row in ok["bench"] for k in keys}
        assert {tuple(p) for p in points["data"]} == expected, points
        spec = _chart_specs(sweep / ok_dir)[chart]
        assert spec["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
        assert "vs context length n" in spec["panel_config"]["stringSettings"]["title"]
    table = _table_file(sweep / ok_dir, logged["bench/path"])
    assert table["columns"][:2] == ["n", "status"] and [r[:2] for r in table["data"]] == [[16, "ok"], [32, "ok"]]


def _table_file(run_dir, rel):
    (path,) = glob.glob(os.path.join(str(run_dir), "wandb", "*run-*", "files", rel))
    with open(path) as f:
        return json.load(f)


def _chart_specs(run_dir) -> dict:
    """The custom charts of an offline run: its config entries _wandb/visualize/<key> (nested keys, which
    wandb_reader leaves out)."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb_reader import _chunks

    (path,) = glob.glob(os.path.join(str(run_dir), "wandb", "*run-*", "run-*.wandb"))
    with open(path, "rb") as f:
        data = f.read()
    specs = {}
    for raw in _chunks(data):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                if list(item.nested_key[:2]) == ["_wandb", "visualize"]:
                    specs[item.nested_key[2]] = json.loads(item.value_json)
    return specs


# ------------------------------------------------------------------------- the error handling, in process


def test_a_failure_before_the_stages_is_recorded_in_a_sweep_and_raised_in_a_single_run(compose, tmp_path,
                                                                                      monkeypatch):
    import runner.track
    from runner.job import run

    def down(*_a, **_k):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(runner.track, "_start_wandb", down)
    cfg = compose(*TINY, "logger=wandb")
    res = run(cfg, run_dir=str(tmp_path / "job"), multirun=True)
    assert res["status"] == "failed" and "RuntimeError: W&B is down" in res["error"]
    on_disk = json.loads((tmp_path / "job" / "results.json").read_text())
    assert on_disk["status"] == "failed" and "W&B is down" in on_disk["error"]
    assert on_disk["config"]["model"]["name"] == "tiny"
    with pytest.raises(RuntimeError, match="W&B is down"):
        run(cfg, run_dir=str(tmp_path / "single"), multirun=False)


class FakeRun:
    """Stands in for a wandb run: records the summary, what was logged and how it was finished."""

    def __init__(self):
        self.summary, self.logged, self.finished = {}, [], []
        self.config = types.SimpleNamespace(update=lambda *a, **k: None)

    def log(self, row, step=None):
        self.logged.append(row)

    def finish(self, exit_code=None):
        self.finished.append(exit_code)


def _tracker(tmp_path, monkeypatch):
    import runner.track

    fake = FakeRun()
    monkeypatch.setattr(runner.track, "_start_wandb", lambda *a: fake)
    logger = types.SimpleNamespace(name="wandb")
    return runner.track.Tracker(str(tmp_path), {"attention": {"name": "softmax"}}, logger), fake


def test_wandb_run_is_finished_when_the_summary_fails(tmp_path, monkeypatch):
    import runner.track

    t, fake = _tracker(tmp_path, monkeypatch)

    def broken(run, results):
        run.summary["status"] = results["status"]
        raise ValueError("cannot serialise")

    monkeypatch.setattr(runner.track, "_summarise_wandb", broken)
    t.finish("failed", "boom")
    assert fake.finished == [1] and fake.summary["status"] == "failed"
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    assert t.wandb is None


def test_wandb_run_is_finished_when_results_cannot_be_written(tmp_path, monkeypatch):
    import runner.track

    t, fake = _tracker(tmp_path, monkeypatch)

    def no_disk(self):
        raise OSError("disk full")

    monkeypatch.setattr(runner.track.Tracker, "save", no_disk)
    with pytest.raises(OSError, match="disk full"):
        t.finish("completed")
    assert fake.finished == [0] and fake.summary["status"] == "completed"


def test_wandb_summary_holds_the_bench_table_and_plots(tmp_path, monkeypatch):
    t, fake = _tracker(tmp_path, monkeypatch)
    rows = [{"n": n, "status": "ok", "train_step_s": 1e-3 * n, "prefill_s": 5e-4 * n, "decode_s_per_token": 1e-3,
             "train_peak_bytes": 1000 * n, "prefill_peak_bytes": 500 * n, "state_bytes": 64 * n,
             "train_step_s_range": [0.9e-3 * n, 1.2e-3 * n]}
            for n in (16, 32, 64)] + [{"n": 128, "status": "over_budget", "reason": "too slow"}]
    t.update(bench=rows, train={"final_loss": 2.5, "steps": 6}, n_params=123)
    t.finish("completed")
    assert fake.finished == [0]
    assert fake.summary["status"] == "completed" and fake.summary["train/final_loss"] == 2.5
    assert fake.summary["n_params"] == 123
    (logged,) = fake.logged
    table = logged["bench"]
    assert table.columns[:2] == ["n", "status"] and len(table.data) == 4
    assert table.get_column("reason")[3] == "too slow"
    # a timing range is two number columns W&B can chart, not a cell holding a list
    assert "train_step_s_range" not in table.columns
    assert table.get_column("train_step_s_fastest")[:3] == [0.9e-3 * n for n in (16, 32, 64)]
    assert table.get_column("train_step_s_slowest") == [1.2e-3 * n for n in (16, 32, 64)] + [None]
    for key, series in (("bench/time_vs_n", {"train_step_s", "prefill_s", "decode_s_per_token"}),
                        ("bench/memory_vs_n", {"train_peak_bytes", "prefill_peak_bytes", "state_bytes"})):
        chart_table = logged[key].table
        assert set(chart_table.get_column("lineKey")) == series
        assert sorted(set(chart_table.get_column("step"))) == [16, 32, 64]  # the over-budget length is left out
