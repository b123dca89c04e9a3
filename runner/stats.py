"""Seed-to-seed noise: the mean, standard deviation and Student-t confidence interval of a few runs, and the paired
difference of two configurations run with the same seeds (the same seed draws the same data order, so pairing
removes the noise the two share). The t quantiles come from scipy."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

LEVEL = 0.95  # the confidence level of every interval the reports give


def interval(values: Iterable[Optional[float]], level: float = LEVEL) -> dict:
    """``{"n", "mean", "std", "half", "low", "high"}`` of the finite values: std with n - 1 degrees of freedom; the
    interval mean ± t_{(1+level)/2, n-1} std / sqrt(n). With one value, std and the interval are None."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    out = {"n": n, "mean": None, "std": None, "half": None, "low": None, "high": None}
    if not n:
        return out
    mean = sum(xs) / n
    out["mean"] = mean
    if n < 2:
        return out
    from scipy import stats

    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    out.update(std=std, half=half, low=mean - half, high=mean + half)
    return out


def mean_text(values: Iterable[Optional[float]], spec: str = ".3f") -> str:
    """The report's cell for a few seeds' values: "mean ± the half-width of the 95% interval (n)", "mean (1)" for
    one value, "-" for none."""
    s = interval(values)
    if not s["n"]:
        return "-"
    if s["half"] is None:
        return f"{s['mean']:{spec}} (1)"
    return f"{s['mean']:{spec}} ± {s['half']:{spec}} ({s['n']})"


def paired(a: Mapping, b: Mapping, level: float = LEVEL) -> dict:
    """The difference a - b over the keys (seeds) both have: its :func:`interval`, the seeds used, and
    ``significant``: True when the interval excludes 0, False when it includes it, None with fewer than two pairs."""
    seeds = sorted(k for k in a if k in b and a[k] is not None and b[k] is not None)
    out = interval([a[k] - b[k] for k in seeds], level)
    out["seeds"] = seeds
    out["significant"] = None if out["low"] is None else bool(out["low"] > 0 or out["high"] < 0)
    return out
