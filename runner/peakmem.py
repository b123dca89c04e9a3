"""Peak memory of a measured region, one function for the whole project: :func:`measure`.

Two methods, both in bytes above the baseline just before the region:

* ``memory="tensors"`` (default) -- tensor memory. On CUDA the caching allocator's peak statistic
  (``torch.cuda.max_memory_allocated``, reset before the region). On CPU the PyTorch profiler's allocation
  events (``profile_memory=True``): every allocation and free of PyTorch's CPU allocator in the region, in time
  order; the peak is the largest running sum. It counts what PyTorch allocates (tensors, autograd's saved
  activations, optimizer states, kernels' scratch buffers taken from the allocator), exactly and the same on
  every machine; not Python objects, the allocator's or libc's slack, or memory libraries take from the system
  themselves. The profiler slows the region, so timing runs are separate.
* ``memory="rss"`` (CPU) -- physical memory: the resident-set high-water mark (``VmHWM``), reset before
  the region through /proc/self/clear_refs, minus the resident size before it. Freed heap memory is handed back
  (``malloc_trim``) before the region, so earlier regions do not hide later peaks; the process's malloc settings
  (runner/cpu_runtime.py) are left as they are (pinning glibc's mmap threshold at 64 KiB here, as this once did,
  made every later tensor above it a fresh mapping faulted in page by page: the bench stage's training steps after
  an rss measurement took 1.3-1.7x their time). It counts every page touched (tensors, allocator slack and
  everything else), not memory allocated but never touched, and the kernel updates its counters lazily (up to 64
  pages per thread), so it is accurate to a few hundred KB. None where the kernel refuses the reset.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

_libc = None


def _get_libc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
        except OSError:
            _libc = False
    return _libc


def _proc_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> Optional[int]:
    """Reset the high-water mark; return the resident size now (None if not possible)."""
    gc.collect()
    libc = _get_libc()
    if libc:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status("VmRSS:")


def _cpu_tensor_peak(events) -> int:
    """Largest running sum of the allocator's [memory] events, in time order."""
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type() ==
                 torch.autograd.DeviceType.CPU)
    cur = peak = 0
    for _, nbytes in mem:
        cur += nbytes
        peak = max(peak, cur)
    return peak


METHODS = ("tensors", "rss", "none")


@contextlib.contextmanager
def _quiet_stderr():
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


@dataclass
class Measured:
    value: object
    seconds: float
    peak_bytes: Optional[int]  # None when memory="none" or the method is unavailable here
    method: str = "none"


def measure(fn: Callable[[], object], device: torch.device | str = "cpu", memory: str = "tensors") -> Measured:
    """Run ``fn()`` once; return its value, wall seconds and the peak bytes above the baseline before it.

    ``memory``: "tensors" (CUDA allocator peak / CPU profiler allocation events), "rss" (CPU resident-set
    high-water mark; on CUDA the same as "tensors") or "none" (timing only). On CPU "tensors" runs ``fn`` under
    the profiler, which slows it: time with "none"."""
    if memory not in METHODS:
        raise ValueError(f"memory={memory!r} is not a measurement method; allowed: {list(METHODS)}")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        value = fn()
        torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if memory == "none":
            return Measured(value, dt, None)
        return Measured(value, dt, torch.cuda.max_memory_allocated(device) - base, "cuda_allocator")
    if memory == "none":
        t0 = time.perf_counter()
        value = fn()
        return Measured(value, time.perf_counter() - t0, None)
    if memory == "rss":
        base = _reset_rss_peak()
        t0 = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t0
        hwm = _proc_status("VmHWM:")
        peak = max(0, hwm - base) if (base is not None and hwm is not None) else None
        return Measured(value, dt, peak, "rss" if peak is not None else "none")
    from torch.profiler import ProfilerActivity, profile

    from . import stops

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    started, t0 = False, time.perf_counter()
    try:
        # a stop signal (SIGTERM, Ctrl-C) raises where Python happens to be: never inside the profiler's start or
        # stop, whose half-done state crashed the process at exit (SIGSEGV instead of exit 143); it is raised
        # right after them instead
        with stops.deferred(), _quiet_stderr():  # the profiler's start/stop chatter, not fn's own messages
            prof.start()
            started = True
        t0 = time.perf_counter()
        value = fn()
    finally:
        dt = time.perf_counter() - t0
        if started:
            with stops.deferred(), _quiet_stderr():
                prof.stop()
    return Measured(value, dt, _cpu_tensor_peak(prof.profiler.kineto_results.events()), "cpu_profiler")
