"""Process-wide CPU runtime settings, applied when the runner package is imported (before any of its modules
imports torch). Each is skipped when the user has set the corresponding environment variable.

* OpenMP idle threads spin briefly, then sleep (``GOMP_SPINCOUNT=10000``; read once, when torch starts its OpenMP
  runtime). Measured on a 2-core machine (one Gated DeltaNet layer, forward + backward, T 2048, 2 threads):
  sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) made it 2x slower on a quiet machine (116 vs 52-62 ms); spinning
  without limit (ACTIVE) or libgomp's default made it 100x slower, or hang, when other processes held the cores
  (11 s and > 60 s against 100 ms). The short spin was as fast as ACTIVE when quiet and within 15% of PASSIVE
  when busy.
* glibc malloc keeps freed memory for reuse (mmap threshold 32 MiB, trim threshold 1 GiB) instead of handing
  every large block back to the kernel and page-faulting it in again at the next allocation. On the kernel
  benchmark at T 2048 and 8192 this took the system time from 3-3.7 s to 0.8 s and the time(8192)/time(2048)
  of the linear ops from 3.95-4.55 to 3.70-3.98. Resident memory then stays at its high-water mark while the
  process runs; ``bench.memory=rss`` hands freed memory back before each of its measurements (``malloc_trim``,
  runner/peakmem.py) and leaves these settings as they are.
* PyTorch's C++ log shows errors only (``TORCH_CPP_LOG_LEVEL=ERROR``): its warnings, such as the profiler's "Memory
  block of unknown size was allocated before the profiling started" in the middle of the bench table, are
  notes about the library, not about the run. ``TORCH_CPP_LOG_LEVEL=WARNING python -m runner ...`` shows them.
  (Python warnings, which torch's own TORCH_WARN also goes through, are untouched.)
"""
from __future__ import annotations

import ctypes
import os
import sys

SPIN_COUNT = "10000"
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)

_torch_first = False  # torch was imported before these settings: the OpenMP one came too late
_malloc_tuned = False


def apply() -> None:
    global _torch_first, _malloc_tuned
    _torch_first = "torch" in sys.modules
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # read once, when torch's C++ library loads
    if sys.platform.startswith("linux") and not any(v in os.environ for v in (
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")):
        try:
            libc = ctypes.CDLL("libc.so.6")
            _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # not glibc (musl, another libc): leave the allocator alone
            _malloc_tuned = False


def describe() -> str:
    """The settings in force, for benchmark headers."""
    if "OMP_WAIT_POLICY" in os.environ:
        said = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    else:
        said = f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}"
    if _torch_first:
        said += " (torch was imported before runner: the OpenMP setting in force is the one of that moment)"
    return said + (", malloc keeps freed memory" if _malloc_tuned else ", malloc as configured")
