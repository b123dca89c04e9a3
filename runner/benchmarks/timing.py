"""Timing helpers shared by the benchmarks: median of repeated runs after warm-up, runs of several functions
interleaved (so that a ratio between them does not carry the machine's drift), and the machine's measured matmul
peak so achieved GFLOP/s mean something."""
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


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                      max_s: float = 60.0) -> dict[str, list[float]]:
    """Wall seconds of every function, run in rounds of one call each (the order reversed every other round), so
    that the i-th times of two functions were taken moments apart; stops early once ``max_s`` is spent (at least
    one round). Compare two with :func:`ratio`, not with their separate medians."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    items, t_all = list(fns.items()), time.perf_counter()
    for r in range(repeats):
        for name, fn in (items if r % 2 == 0 else items[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - t_all > max_s:
            break
    return times


def ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios a_i / b_i of two :func:`interleaved_times` series."""
    return statistics.median(x / y for x, y in zip(a, b))


def matmul_peak_gflops(n: int = 1024, dtype=torch.float32, repeats: int = 7) -> float:
    """GFLOP/s of a square matmul at the current thread count: the practical peak to compare kernels against."""
    fn, flops = matmul_probe(n, dtype)
    return flops / median_time(fn, repeats=repeats, warmup=2) / 1e9


def matmul_probe(n: int = 1024, dtype=torch.float32):
    """(a square matmul to time, its FLOPs): the peak's measurement, to interleave with the kernels timed."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return (lambda: a @ b), 2 * n ** 3
