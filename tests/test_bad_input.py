"""Every bad input of tests/bad_inputs.py, through `python -m runner`: the exit status it must end with, the message
it must print, never a stack trace, and, when refused before any work, nothing written: no results.json in a new
folder, and a folder's completed record kept as it was (the refused attempt added to its attempts). The table of
docs/bad-input.md is written from the same cases and must name every one."""
import json
import os

import pytest

from bad_inputs import CASES, ROOT, cleanup, has_traceback, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name.replace(" ", "_") for c in CASES])
def test_bad_input(case, tmp_path):
    if case.needs_root and os.geteuid() != 0:
        pytest.skip("mounts a read-only file system: needs root")
    tmp = str(tmp_path)
    try:
        p = run_case(case, tmp)
    finally:
        cleanup()
    out = p.stdout + p.stderr
    assert p.returncode == case.status, f"exit {p.returncode}, expected {case.status}:\n{out[-3000:]}"
    assert case.says in " ".join(out.split()), f"{case.says!r} not in:\n{out[-3000:]}"
    assert not has_traceback(p), out[-3000:]
    record = tmp_path / "run" / "results.json"
    if case.status == 2 and case.setup is None:
        assert not record.exists(), "a refusal before any work wrote a record"
    if case.status == 2 and record.exists():  # a trained run's folder: its record says what it said before
        r = json.loads(record.read_text())
        assert r["status"] == "completed" and r["train"]["steps"] == 4
        assert [a["status"] for a in r["attempts"]] == ["completed", "refused"]
        assert case.says.split(" (")[0] in " ".join(r["attempts"][-1]["error"].split())


def test_the_reference_page_lists_every_case():
    page = open(os.path.join(ROOT, "docs", "bad-input.md")).read()
    missing = [c.name for c in CASES if f"| {c.name} |" not in page]
    assert not missing, f"docs/bad-input.md lacks {missing}: python tests/bad_inputs.py > docs/bad-input.md"
    assert f"{len(CASES)} cases, 0 with a stack trace." in page
