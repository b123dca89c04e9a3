"""Timing helpers shared by the benchmarks: median of repeated runs after warm-up, and the machine's measured
matmul peak so achieved GFLOP/s mean something."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, max_s: float = 60.0) -> float:
    """Median wall seconds of ``fn()``; stops early once ``max_s`` is spent (at least one timed run)."""
    for _ in range(warmup):
        fn()
    times, t_all = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_all > max_s:
            break
    return statistics.median(times)


def matmul_peak_gflops(n: int = 1024, dtype=torch.float32, repeats: int = 7) -> float:
    """GFLOP/s of a square matmul at the current thread count: the practical peak to compare kernels against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = median_time(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n ** 3 / t / 1e9
