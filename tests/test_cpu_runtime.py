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
