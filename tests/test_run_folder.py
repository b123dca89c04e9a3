"""The run folder's rules, in process: the record of attempts (a completed record is never downgraded, sections are
replaced only by a completed attempt and the replaced ones kept), dead attempts, the lock, leftovers, unreadable
records, the full-disk translation of atomic writes, and metrics.jsonl staying one curve."""
import errno
import json
import os
import subprocess
import sys
import time

import pytest

from runner import run_folder as rf
from runner.common import atomic_write
from runner.track import Tracker

CFG = {"stages": ["train", "eval", "bench"], "seq_len": 32, "eval": {"tasks": ["ppl"]}, "bench": {"lengths": [16]}}


def _completed():
    r = rf.Record(CFG)
    r.set(train={"steps": 4}, eval={"loss": 3.0}, bench=[{"n": 16}], n_params=10)
    r.end("completed")
    return json.loads(json.dumps(r.results()))


def test_a_first_attempt_writes_its_sections_as_they_come():
    r = rf.Record(CFG)
    r.set(train={"steps": 4})
    now = r.results()
    assert now["status"] == "running" and now["train"] == {"steps": 4} and now["produced_by"] == {"train": 1}
    assert [a["status"] for a in now["attempts"]] == ["running"] and "changes" not in now["attempts"][0]
    r.end("failed", "boom")
    out = r.results()
    assert out["status"] == "failed" and out["error"] == "boom" and out["attempts"][0]["error"] == "boom"


def test_an_attempt_that_does_not_complete_leaves_a_completed_record_as_it_was():
    prev = _completed()
    cfg = {**CFG, "stages": ["eval"], "eval": {"tasks": ["positions"]}}
    r = rf.Record(cfg, prev, cfg["stages"])
    r.set(eval={"loss": 2.5})
    for status in ("running", "interrupted"):
        if status != "running":
            r.end(status, "SIGTERM during the bench stage")
        out = r.results()
        assert {k: v for k, v in out.items() if k != "attempts"} == {k: v for k, v in prev.items() if k != "attempts"}
        last = out["attempts"][-1]
        assert last["status"] == status and last["results"] == {"eval": {"loss": 2.5}}  # what it measured is kept
        assert last["changes"] == {"eval.tasks": [["ppl"], ["positions"]], "stages": [CFG["stages"], ["eval"]]}


def test_a_completed_attempt_replaces_its_sections_and_keeps_the_replaced_ones():
    prev = _completed()
    cfg = {**CFG, "stages": ["eval"], "eval": {"tasks": ["positions"]}, "bench": {"lengths": [99]}}
    r = rf.Record(cfg, prev, cfg["stages"])
    r.set(eval={"loss": 2.5})
    r.end("completed")
    out = r.results()
    assert out["status"] == "completed" and out["eval"] == {"loss": 2.5} and out["train"] == {"steps": 4}
    assert out["produced_by"] == {"train": 1, "bench": 1, "eval": 2}
    assert out["attempts"][0]["superseded"] == {"eval": {"loss": 3.0}}
    # the config describes every section: eval from this attempt, bench (not run) as it was measured
    assert out["config"]["eval"] == {"tasks": ["positions"]} and out["config"]["bench"] == {"lengths": [16]}
    assert out["config"]["stages"] == ["train", "eval", "bench"]


def test_sections_of_other_weights_do_not_stay():
    prev = _completed()
    prev["status"] = "failed"
    r = rf.Record(CFG, prev, CFG["stages"], same_weights=False)
    out = r.results()
    assert not {"train", "eval", "bench"} & set(out) and out["produced_by"] == {}
    assert out["attempts"][0]["superseded"]["eval"] == {"loss": 3.0}


def test_an_attempt_left_running_is_marked_died():
    prev = rf.Record(CFG).results()  # written by a process that was then killed
    dead = rf.died_record(prev)
    assert dead["status"] == "died" and dead["attempts"][0]["status"] == "died" and "SIGKILL" in dead["error"]
    again = rf.Record(CFG, dead).results()
    assert [a["status"] for a in again["attempts"]] == ["died", "running"]


def test_refusals_are_added_to_the_record_without_changing_it():
    prev = _completed()
    out = rf.append_attempt(prev, {**CFG, "seq_len": 64}, ["eval"], "refused", "no")
    assert {k: v for k, v in out.items() if k != "attempts"} == {k: v for k, v in prev.items() if k != "attempts"}
    assert out["attempts"][-1]["status"] == "refused" and out["attempts"][-1]["changes"]["seq_len"] == [32, 64]
    fresh = rf.append_attempt(None, CFG, ["eval"], "invalid_config", "bad")
    assert fresh["status"] == "invalid_config" and fresh["error"] == "bad"


HOLD = "import sys, time; from runner import run_folder as rf; rf.acquire(sys.argv[1]); print('held', flush=True); " \
       "time.sleep(60)"


def test_one_writer_per_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rf.FolderBusy, match=f"another run \\(pid {holder.pid} on .*\\) is writing to {tmp_path}"):
            rf.acquire(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    rf.acquire(str(tmp_path))  # the lock went with the process
    try:
        assert rf.holds(str(tmp_path))
        rf.acquire(str(tmp_path))  # this process again: fine
    finally:
        rf.release(str(tmp_path))
    assert not rf.holds(str(tmp_path))


def test_a_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(rf.FolderError, match="is a file, not a folder"):
        rf.acquire(str(tmp_path / "f"))
    with pytest.raises(rf.FolderError, match="cannot create the run folder"):
        rf.acquire(str(tmp_path / "f" / "sub"))


def test_leftovers_go_and_unreadable_records_are_kept_aside(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".tmp-123-last.pt").write_bytes(b"half")
    (tmp_path / ".tmp-9-results.json").write_text("{")
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"whole")
    assert sorted(os.path.basename(p) for p in rf.remove_leftovers(str(tmp_path))) == [".tmp-123-last.pt",
                                                                                      ".tmp-9-results.json"]
    assert os.listdir(tmp_path / "checkpoints") == ["last.pt"]
    (tmp_path / "results.json").write_text('{"status": "compl')
    rec, note = rf.read_record(str(tmp_path))
    assert rec is None and "could not be read" in note
    aside = [n for n in os.listdir(tmp_path) if n.startswith("results.json.unreadable-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_text() == '{"status": "compl'


def test_a_writer_failing_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    import runner.common

    def writer(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("unexpected pos 704 vs 598")  # what torch.save says when the disk fills up

    monkeypatch.setattr(runner.common, "_nearly_full", lambda folder, margin=0: True)
    with pytest.raises(OSError) as e:
        atomic_write(str(tmp_path / "last.pt"), writer)
    assert e.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []
    monkeypatch.setattr(runner.common, "_nearly_full", lambda folder, margin=0: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room left it is not a full disk
        atomic_write(str(tmp_path / "last.pt"), writer)


def test_metrics_stay_one_curve(tmp_path):
    t = Tracker(str(tmp_path), CFG)
    for step in (1, 2, 3):
        t.log({"step": step, "loss": 1.0 / step})
    t.log({"step": 3, "eval_loss": 0.5}, replaces="eval_loss")
    t.log({"step": 3, "eval_loss": 0.4}, replaces="eval_loss")
    with open(t.metrics_path, "a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by a kill
    t.trim_metrics(2)
    rows = [json.loads(x) for x in open(t.metrics_path)]
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    t.log({"step": 3, "eval_loss": 0.3}, replaces="eval_loss")
    t.finish("completed")
    rows = [json.loads(x) for x in open(t.metrics_path)]
    assert [r.get("eval_loss") for r in rows] == [None, None, 0.3]

    # on a completed record the rows of a later attempt wait for it to complete
    prev = json.loads((tmp_path / "results.json").read_text())
    t2 = Tracker(str(tmp_path), {**CFG, "stages": ["eval"]}, previous=prev, stages=["eval"])
    t2.log({"step": 3, "eval_loss": 0.2}, replaces="eval_loss")
    assert [json.loads(x).get("eval_loss") for x in open(t.metrics_path)][-1] == 0.3
    t2.finish("interrupted", "SIGINT")
    assert [json.loads(x).get("eval_loss") for x in open(t.metrics_path)][-1] == 0.3
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"


def test_the_final_record_is_written_on_a_full_disk_from_the_reserve(tmp_path, monkeypatch):
    t = Tracker(str(tmp_path), CFG)
    assert rf.reserve(str(tmp_path)) and os.path.getsize(tmp_path / rf.RESERVE) == rf.RESERVE_BYTES
    real = Tracker.save
    calls = []

    def save(self):
        calls.append(os.path.exists(tmp_path / rf.RESERVE))
        if os.path.exists(tmp_path / rf.RESERVE):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self)

    monkeypatch.setattr(Tracker, "save", save)
    t.finish("failed", "DiskFull: the disk is full")
    assert calls == [True, False]  # the reserve was released, then the record written
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"


def test_a_lock_file_does_not_outlive_its_meaning(tmp_path):
    """A folder whose lock file remains after its process ended (the file stays, the lock does not) is free."""
    take = "import sys; from runner import run_folder as rf; rf.acquire(sys.argv[1])"
    p = subprocess.run([sys.executable, "-c", take, str(tmp_path)], check=True)
    assert p.returncode == 0 and (tmp_path / rf.LOCK).exists()
    t0 = time.time()
    rf.acquire(str(tmp_path))
    rf.release(str(tmp_path))
    assert time.time() - t0 < 1
