"""Hydra launchers (the `launchers` extra): a two-job sweep runs through the joblib launcher (jobs in worker
processes) and through the submitit launcher's local executor (jobs as submitit subprocesses, the same path as
on a Slurm cluster), each job writes its results.json and the end-of-sweep report covers both."""
import csv
import json
import os

import pytest

from test_end_to_end import run_cli
from test_sweep import write_corpus

# the cheapest real job: an untrained tiny model scored on a small local corpus
EVAL_ONLY = ["model=tiny", "seq_len=32", "stages=[eval]", "weights=random", "eval.max_tokens=256", "threads=1",
             "data=text"]

LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher",
                       ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                        "hydra.launcher.cpus_per_task=1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_job_sweep_through_launcher(tmp_path, launcher):
    module, overrides = LAUNCHERS[launcher]
    pytest.importorskip(module, reason=f"pip install -e '.[launchers]' for the {launcher} launcher")
    corpus = write_corpus(tmp_path / "corpus.txt")
    sweep = tmp_path / "sweep"
    p = run_cli("-m", *EVAL_ONLY, f"data.path={corpus}", "attention=softmax,gated_deltanet", *overrides,
                f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = sorted(d for d in os.listdir(sweep) if (sweep / d).is_dir() and not d.startswith("."))
    # the groups chosen away from the defaults are in the names (model=tiny data=text)
    assert jobs == ["0_softmax_3-1_32_seed0_model=tiny_data=text",
                    "1_gated_deltanet_3-1_32_seed0_model=tiny_data=text"], jobs
    for d in jobs:
        r = json.loads((sweep / d / "results.json").read_text())
        assert r["status"] == "completed", r.get("error")
        assert r["eval"]["bpb"] > 0 and r["run_dir"] == str(sweep / d)
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["job"] for r in rows) == jobs and {r["status"] for r in rows} == {"completed"}
    if launcher == "joblib":
        assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr  # Hydra's log line of the launcher
    else:  # each job went through submitit: its own folder with the pickled result
        done = [d for d in os.listdir(sweep / ".submitit") if list((sweep / ".submitit" / d).glob("*_result.pkl"))]
        assert len(done) == 2, os.listdir(sweep / ".submitit")
