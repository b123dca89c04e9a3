"""runner/cpu_runtime.py: the process-wide OpenMP and malloc settings are applied on import of the package,
and a user's own setting of either always wins."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import os, runner, runner.cpu_runtime as r; "
         "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), r._malloc_tuned); "
         "print(r.describe())")


def _probe(**env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                         "LD_PRELOAD")}
    p = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_defaults_are_applied_on_import():
    values, said = _probe()
    assert values == "10000 None True"
    assert "GOMP_SPINCOUNT=10000" in said and "malloc keeps freed memory" in said


def test_the_users_openmp_policy_wins():
    values, said = _probe(OMP_WAIT_POLICY="PASSIVE")
    assert values.startswith("None PASSIVE")
    assert "OMP_WAIT_POLICY=PASSIVE" in said
    values, said = _probe(GOMP_SPINCOUNT="5")
    assert values.startswith("5 None") and "GOMP_SPINCOUNT=5" in said


def test_the_users_malloc_settings_win():
    values, said = _probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert values.endswith("False") and "malloc as configured" in said


def test_importing_torch_first_is_reported():
    p = subprocess.run([sys.executable, "-c", "import torch; " + PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert "torch was imported before runner" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("level, shown", [(None, False), ("WARNING", True)])
def test_the_profilers_cpp_warning_is_kept_out_of_the_bench_table_unless_asked_for(tmp_path, level, shown):
    """The CPU memory profiler's C++ warning ("Memory block of unknown size ...") came in the middle of the bench
    table; PyTorch's C++ log shows errors only unless the user sets TORCH_CPP_LOG_LEVEL (e.g. WARNING)."""
    from bad_inputs import run_cli

    p = run_cli(["attention=gated_deltanet", "model=tiny", "seq_len=32", "stages=[bench]", "weights=random",
                 "bench.lengths=[64]", "bench.repeats=1", "bench.memory=tensors", "data.max_bytes=100000",
                 "threads=1", f"hydra.run.dir={tmp_path}/run"], env={"TORCH_CPP_LOG_LEVEL": level or ""})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-2000:]
    assert "bench n=    64" in out
    assert ("Memory block of unknown size" in out) == shown, out[-2000:]
