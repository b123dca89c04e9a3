"""Small helpers several layers share: atomic file writes, byte formatting, and the power-law arithmetic of cost
versus n (the scaling exponent of a cost, the crossover of two cost curves) that the bench stage and the sweep
report both use."""
from __future__ import annotations

import errno
import importlib
import math
import os
import shutil
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence


def lazy_registry(entries: dict, unknown: str) -> tuple[Callable[[], list], Callable[[str], ModuleType]]:
    """``names()`` and ``get(name)`` of a registry {name: module path}: the module is imported when asked, so a
    schema can name every entry without importing any. ``unknown`` formats the error for a name not in it, from
    ``name`` and ``allowed``."""
    def names() -> list:
        return list(entries)

    def get(name: str) -> ModuleType:
        if name not in entries:
            raise ValueError(unknown.format(name=name, allowed=names()))
        return importlib.import_module(entries[name])

    return names, get


def whole(out: list, key: str, v, lo: int, hi: int, eg, why: str = "") -> bool:
    """Append a message unless ``v`` is a whole number in [lo, hi]; True when it is."""
    if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
        return True
    out.append(f"{key}={v!r} must be a whole number in [{lo}, {hi}]{why}, e.g. {eg}")
    return False


def answer_scores(ok, scored) -> dict:
    """Answer accuracy (the share of scored positions that are right) and exact accuracy (the share of rows, one
    example each, with every scored position right) from boolean tensors ``ok`` and ``scored`` of shape (N, T)."""
    return {"accuracy": float(ok[scored].double().mean()), "exact": float((ok | ~scored).all(1).double().mean())}


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write ``path`` so that a reader (or a resumed run) sees the old file or the new one, never part of one:
    ``write(tmp)`` writes a temporary file in the same folder, which is flushed to disk and renamed over ``path``;
    on any failure the temporary file is removed and ``path`` is left as it was. A writer that fails in its own way
    when the disk fills up (torch.save raises a RuntimeError about the file position) is reported as the full disk
    it met (OSError ENOSPC), so that the message can say so."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        try:
            write(tmp)
        except Exception as e:
            if not isinstance(e, OSError) and _nearly_full(d):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
            raise
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _nearly_full(folder: str, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _pos(v: Any) -> Optional[float]:
    """v as a float when it is a finite positive number (plottable on a log axis), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v > 0 else None


def scaling_exponent(ns: Sequence[float], values: Sequence[Optional[float]]) -> Optional[float]:
    """Slope of log(value) against log(n) by least squares over the upper half of the ladder (the largest
    ceil(k/2) of the k usable points, at least 2), where the asymptotic cost dominates: ~2 for a cost quadratic
    in n, ~1 linear, ~0 constant. Points with a missing, zero or non-finite value are not usable. None when
    fewer than 2 usable points (or a single distinct n) remain."""
    pts = sorted((float(n), float(v)) for n, v in zip(ns, values) if _pos(n) and _pos(v))
    if len(pts) < 2:
        return None
    pts = pts[-max(2, math.ceil(len(pts) / 2)):]
    xs = [math.log(n) for n, _ in pts]
    ys = [math.log(v) for _, v in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def _series(rows: Optional[Iterable[dict]], key: str, bound: Optional[int] = None) -> dict[float, float]:
    """{n: value of ``key``} over a ladder's completed rows; with ``bound`` 0 or 1 the fastest or slowest of the
    timed runs instead (the row's ``<key>_range``; rows without one are left out)."""
    out = {}
    for r in rows or []:
        if not isinstance(r, dict) or r.get("status", "ok") != "ok":
            continue
        v = r.get(key)
        if bound is not None:
            span = r.get(f"{key}_range")
            v = span[bound] if isinstance(span, (list, tuple)) and len(span) == 2 else None
        n, v = _pos(r.get("n")), _pos(v)
        if n is not None and v is not None:
            out[n] = v
    return out


def _crossing(a: dict[float, float], b: dict[float, float]) -> Optional[float]:
    """:func:`crossover` on two {n: cost} series."""
    ns = sorted(set(a) & set(b))
    if not ns:
        return None
    d = [math.log(a[n]) - math.log(b[n]) for n in ns]
    if d[-1] >= 0:
        return None
    i = len(d) - 1
    while i > 0 and d[i - 1] < 0:
        i -= 1
    if i == 0:
        return ns[0]
    d0, d1 = d[i - 1], d[i]  # d0 >= 0 > d1
    t = d0 / (d0 - d1)
    return math.exp(math.log(ns[i - 1]) + t * (math.log(ns[i]) - math.log(ns[i - 1])))


def crossover(rows_a: Iterable[dict], rows_b: Iterable[dict], key: str) -> Optional[float]:
    """The smallest n from which configuration a costs less than b in ``key`` (time or bytes: lower is better)
    for the rest of the ladder, located by linear interpolation in log-log between the ladder points where the
    sign of log(a/b) last changes. The smallest common n when a is cheaper at every common n; None when a is
    not cheaper at the largest common n (never within the ladder) or the two share no measured n."""
    return _crossing(_series(rows_a, key), _series(rows_b, key))


def crossover_noise(rows_a: Iterable[dict], rows_b: Iterable[dict], key: str) -> Optional[tuple]:
    """How far the timing noise moves :func:`crossover`: (from which n a could be cheaper, its fastest run
    against b's slowest; from which n a is cheaper beyond the noise, its slowest against b's fastest), each as
    crossover returns it (None: not within the ladder). None when the rows carry no spread of their runs
    (``<key>_range``, written by the bench stage; memory has none)."""
    lo_a, hi_a, lo_b, hi_b = (_series(r, key, i) for r, i in ((rows_a, 0), (rows_a, 1), (rows_b, 0), (rows_b, 1)))
    if not (set(lo_a) & set(lo_b)):
        return None
    return _crossing(lo_a, hi_b), _crossing(hi_a, lo_b)


# ------------------------------------------------------------------------------------------ collecting jobs
