"""Experiment runner comparing softmax attention with linear-attention layers in hybrid language models."""
import os
import sys

__version__ = "0.1.0"

# How long an idle OpenMP thread spins before it sleeps. Read once, when torch starts its OpenMP runtime, so it is
# set here, before any submodule imports torch. Measured on a 2-core machine (one Gated DeltaNet layer, forward +
# backward, T 2048, 2 threads): sleeping at once (OMP_WAIT_POLICY=PASSIVE) made it 2x slower on a quiet machine
# (116 vs 52-62 ms); spinning without limit (ACTIVE), or libgomp's default, made it 100x slower or hang when other
# processes held the cores (11 s and > 60 s against 100 ms). A short spin (10,000 rounds) was as fast as ACTIVE
# when quiet and within 15% of PASSIVE when busy. Either variable set by the user wins.
SPIN_COUNT = "10000"
_TORCH_FIRST = "torch" in sys.modules  # then the setting below comes too late for this process
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def openmp_wait_policy() -> str:
    """The OpenMP idle-thread setting in force for this process, for benchmark headers."""
    if "OMP_WAIT_POLICY" in os.environ:
        said = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    else:
        said = f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}"
    return said + (" (torch was imported before runner: the setting in force is the one of that moment)"
                   if _TORCH_FIRST else "")
