"""``positions``: loss and bits per byte by position bucket within the window (``eval.position_buckets`` buckets per
training length; with ``extrapolation`` also the longer windows, buckets of the same width), saved in the results
and plotted to ``loss_by_position.png`` in the run folder. Does the model use far context?"""
from __future__ import annotations

import math
import os

NEEDS = "text"  # windows of running text, also longer ones with extrapolation


def task_problems(c) -> list[str]:
    b = c.eval.position_buckets
    if isinstance(b, int) and 1 <= b <= 1 << 20:
        return []
    return [f"eval.position_buckets={b} must be a whole number in [1, 1048576], e.g. 32"]


def run(ctx) -> dict:
    from .extrapolation import factors as longer

    ev, L = ctx.cfg.eval, ctx.cfg.seq_len
    width = max(1, math.ceil(L / ev.position_buckets))
    factors = [1] + (longer(ev) if "extrapolation" in ctx.tasks else [])
    curves = []
    for f in factors:
        s = ctx.scores(f)
        if isinstance(s, str):
            continue
        T = s.nll.shape[1]
        starts, losses, bpbs, counts = [], [], [], []
        for a in range(0, T, width):
            bucket = s.summary(positions=slice(a, min(T, a + width)))
            if bucket["tokens"] == 0:
                continue
            starts.append(a)
            losses.append(bucket["loss"])
            bpbs.append(bucket["bpb"])
            counts.append(bucket["tokens"])
        curves.append({"factor": f, "seq_len": T, "start": starts, "loss": losses, "bpb": bpbs, "tokens": counts})
    out = {"bucket_width": width, "train_seq_len": L, "curves": curves}
    if ctx.run_dir:
        try:
            out["plot"] = os.path.basename(plot(out, L, ctx.run_dir, ctx.label()))
        except Exception as e:  # a plot must never fail a run
            ctx.log(f"[yellow]loss_by_position.png skipped:[/] {type(e).__name__}: {e}")
    return {"positions": out}


def plot(pos: dict, L: int, out_dir: str, label: str = "") -> str:
    """loss_by_position.png: loss (nats/token) against the position in the window, one line per window length,
    the training length marked."""
    from ..plots import _figure, _save

    fig, (ax,) = _figure(1, 7.5, 4.8)
    w = pos["bucket_width"]
    for c in pos["curves"]:
        xs = [a + (min(a + w, c["seq_len"]) - a - 1) / 2 for a in c["start"]]
        ax.plot(xs, c["loss"], marker="o", markersize=3,
                label=f"window {c['seq_len']}" + (" (training length)" if c["factor"] == 1 else f" ({c['factor']}x)"))
    ax.axvline(L - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"position in the window (tokens; buckets of {w})")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("loss by position" + (f"\n{label}" if label else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, os.path.join(out_dir, "loss_by_position.png"))


def describe(ev: dict) -> list[str]:
    c = ev["positions"]["curves"] if "positions" in ev else []
    if not c:
        return []
    first = c[0]
    return [f"  positions: loss {first['loss'][0]:.3f} in the first bucket -> {first['loss'][-1]:.3f} in the last "
            f"({len(first['loss'])} buckets of {ev['positions']['bucket_width']})"
            + (f", plot {ev['positions']['plot']}" if ev["positions"].get("plot") else "")]
