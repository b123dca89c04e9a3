"""The memory measurement can fail: a known allocation is seen, an empty region reports (almost) nothing."""
import pytest
import torch

from runner.peakmem import measure

MB = 1_000_000


def _alloc_200mb():
    a = torch.ones(50_000_000)  # 200 MB, every page touched
    return float(a[0])


def test_known_allocation_is_seen():
    m = measure(_alloc_200mb)
    assert 200 * MB <= m.peak_bytes < 201 * MB, m.peak_bytes
    r = measure(_alloc_200mb, memory="rss")
    if r.peak_bytes is not None:  # physical pages, within the kernel's lazy counters of 200 MB
        assert 199 * MB <= r.peak_bytes < 210 * MB, r.peak_bytes


def test_peak_is_the_high_water_mark_not_the_end_state():
    def region():
        a = torch.ones(25_000_000)  # 100 MB
        del a
        b = torch.ones(12_500_000)  # 50 MB
        return float(b[0])

    m = measure(region)
    assert 100 * MB <= m.peak_bytes < 101 * MB, m.peak_bytes


def test_empty_region_reports_almost_nothing():
    m = measure(lambda: 1 + 1)
    assert m.peak_bytes < 1000, m.peak_bytes
    r = measure(lambda: 1 + 1, memory="rss")
    if r.peak_bytes is not None:
        assert r.peak_bytes < 2 * MB, r.peak_bytes


def test_freed_memory_from_earlier_region_does_not_hide_a_later_peak():
    for method, floor in (("tensors", 100 * MB), ("rss", 99 * MB)):
        measure(lambda: float(torch.ones(25_000_000)[0]), memory=method)
        m = measure(lambda: float(torch.ones(25_000_000)[0]), memory=method)
        if m.peak_bytes is not None:
            assert m.peak_bytes >= floor, (method, m.peak_bytes)


def test_timing_only_mode_skips_the_profiler():
    m = measure(lambda: 3, memory="none")
    assert m.value == 3 and m.peak_bytes is None and m.seconds >= 0


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="allowed"):
        measure(lambda: 0, memory="vibes")


def test_a_stop_signal_never_lands_inside_the_profilers_start_or_stop(monkeypatch):
    """SIGTERM arriving while the CPU profiler starts (or stops) is raised after it, never in its middle (a
    half-started profiler crashed the process at exit with SIGSEGV instead of exit 143), and the profiler is
    always stopped."""
    import os
    import signal

    import torch.profiler

    from runner import peakmem, stops

    calls = []

    class Profile:
        def __init__(self, *a, **k):
            self.profiler = None

        def start(self):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered at the next bytecode, inside start
            calls.append("started")

        def stop(self):
            calls.append("stopped")

    monkeypatch.setattr(torch.profiler, "profile", Profile)
    with stops.handling():
        with pytest.raises(stops.Interrupted) as e:
            peakmem.measure(lambda: calls.append("ran"), "cpu", "tensors")
    assert e.value.exit_code == 143
    assert calls == ["started", "stopped"], calls  # start finished, the work was not begun, stop ran


def _faults_of_mid_size_allocations() -> int:
    """Minor page faults of 50 allocations of 4 MB, each touched (heap-sized: below the runner's 32 MiB mmap
    threshold), after a warm-up that leaves the memory in the heap for reuse."""
    import resource

    for _ in range(5):
        torch.ones(1_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        torch.ones(1_000_000)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_an_rss_measurement_leaves_the_processs_allocations_alone():
    """memory="rss" once pinned glibc's mmap threshold at 64 KiB for the rest of the process: every later tensor
    above it was mapped afresh and page-faulted in, which made the bench stage's training steps after an rss
    measurement 1.3-1.7x slower (n = 1,024-2,048) than with memory="tensors"."""
    from runner import cpu_runtime

    if not cpu_runtime._malloc_tuned:
        pytest.skip("glibc malloc not tuned by runner.cpu_runtime here (environment settings or another libc)")
    before = _faults_of_mid_size_allocations()
    measure(_alloc_200mb, memory="rss")
    after = _faults_of_mid_size_allocations()
    assert after < 2_000, f"{after} minor faults for 50 reused 4 MB allocations after an rss measurement " \
                          f"({before} before): freed memory is no longer reused"


def test_freed_heap_memory_does_not_hide_a_later_peak():
    """Mid-size tensors live in the heap, which keeps freed memory resident; the rss baseline is taken after
    malloc_trim hands it back, so a region re-using it still shows its peak."""
    def region():
        xs = [torch.ones(2_000_000) for _ in range(10)]  # 10 x 8 MB, heap-sized, every page touched
        return float(sum(float(x[0]) for x in xs))

    region()  # the heap now holds 80 MB of freed memory
    r = measure(region, memory="rss")
    if r.peak_bytes is not None:
        assert r.peak_bytes >= 79 * MB, r.peak_bytes
