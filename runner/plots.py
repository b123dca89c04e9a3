"""PNG plots of one run's bench and of a whole sweep.

matplotlib is imported only when a plot is drawn, and only its object-oriented API with the Agg canvas is used
(no pyplot, no global figure state), so plotting works headless and from inside a Hydra callback.

One run (:func:`run_plots`): memory versus n (training-step peak, prefill peak, state/cache bytes analytic and
measured) and time versus n (training step, prefill, decode per token), log-log.

A sweep (used by runner/report.py): memory and time versus n with one line per configuration, quality (bpb and
perplexity) versus the fraction of full layers with one line per efficient mixer, and the trade-off of quality
against decode time and against state bytes at one n, with the Pareto front marked.

Every file is written atomically (temp file + rename), so a reader never sees half a PNG.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Sequence

from .common import _pos, atomic_write, fmt_bytes
from .stats import LEVEL

LEVEL_TEXT = f"{LEVEL:.0%}"

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
DPI = 110


# ----------------------------------------------------------------------------------------------- helpers


def ok_rows(rows: Optional[Iterable[dict]]) -> list[dict]:
    """Bench rows that were measured (status ok), sorted by n."""
    out = [r for r in rows or [] if isinstance(r, dict) and r.get("status", "ok") == "ok" and _pos(r.get("n"))]
    return sorted(out, key=lambda r: r["n"])


def _xy(rows: Sequence[dict], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = _pos(r.get(key))
        if v is not None:
            xs.append(float(r["n"]))
            ys.append(v * scale)
    return xs, ys


def _figure(ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path: str) -> str:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _colors(k: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _plain(v: float, _pos=None) -> str:
    return f"{v:g}"


def _log_n_axis(ax, ns: Iterable[float]) -> None:
    """x = context length n on a log2 axis with the ladder's values as ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ns = sorted({float(n) for n in ns})
    ax.set_xscale("log", base=2)
    if ns:
        step = max(1, math.ceil(len(ns) / 8))  # at most ~8 labelled ticks
        ax.xaxis.set_major_locator(FixedLocator(ns[::step]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("context length n (tokens, log scale)")


def _minor_labels(formatter, lo: float, hi: float):
    """Labels for the minor ticks of a log axis spanning [lo, hi]: none over more than ~2.5 decades; the 2s
    and 5s of each decade over more than a factor 3; all of them over less."""
    span = hi / lo if lo > 0 else math.inf

    def label(v: float, _pos=None) -> str:
        if v <= 0 or span >= 300:
            return ""
        mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return formatter(v) if span < 3 or round(mantissa) in (2, 5) else ""

    return label


def _log_axis(ax, formatter, axis: str = "y") -> None:
    """A log axis with readable tick labels (``formatter``: value -> text), minor ticks labelled sparingly."""
    from matplotlib.ticker import FuncFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_formatter(FuncFormatter(lambda v, _: formatter(v)))
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    a.set_minor_formatter(FuncFormatter(_minor_labels(formatter, lo, hi)))
    ax.tick_params(axis=axis, which="minor", labelsize=7)


def _log_y_axis(ax, formatter) -> None:
    _log_axis(ax, formatter, "y")


def _bytes_label(v: float) -> str:
    return fmt_bytes(v)


def run_label(results: dict) -> str:
    """'gated_deltanet 3:1 small (LLLF), T=256' for one run's results."""
    cfg = results.get("config") or {}
    att = (cfg.get("attention") or {}).get("name", "?")
    full = (cfg.get("full") or {}).get("name", "?")
    lt = "".join(results.get("layer_types") or [])
    names = []
    if "L" in lt or not lt:
        names.append(att)
    if "F" in lt:
        names.append(full)
    layout = cfg.get("pattern") or cfg.get("ratio", "?")
    model = (cfg.get("model") or {}).get("name", "?")
    return f"{'+'.join(names)} {layout} {model}" + (f" ({lt})" if lt else "") + \
        (f", T={cfg['seq_len']}" if cfg.get("seq_len") else "")


# ------------------------------------------------------------------------------------------------ one run


def run_plots(results: dict, out_dir: str) -> list[str]:
    """memory_vs_n.png and time_vs_n.png for one run's bench rows, in out_dir. Returns the paths written
    (none when the run has no measured bench row)."""
    rows = ok_rows(results.get("bench"))
    if not rows:
        return []
    label = run_label(results)
    batch = rows[0].get("batch")
    sub = f"batch {batch}" if batch is not None else ""
    ns = [r["n"] for r in rows]
    paths = []

    fig, (ax,) = _figure(1, 7.5, 5.0)
    drawn = False
    for key, name, style in (("train_peak_bytes", "training step peak (fwd + bwd + AdamW)", dict(marker="o")),
                             ("prefill_peak_bytes", "prefill peak (n tokens, no grad)", dict(marker="s")),
                             ("state_bytes", "state / KV cache after n tokens (analytic)", dict(marker="^")),
                             ("state_bytes_measured", "state / KV cache after n tokens (measured)",
                              dict(marker="x", linestyle=":", markersize=9))):
        xs, ys = _xy(rows, key)
        if xs:
            ax.plot(xs, ys, label=name, **style)
            drawn = True
    if drawn:
        _log_n_axis(ax, ns)
        _log_y_axis(ax, _bytes_label)
        ax.set_ylabel("memory (bytes, log scale; 1 MB = 10^6 B)")
        ax.set_title(f"memory vs context length\n{label}" + (f", {sub}" if sub else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, os.path.join(out_dir, "memory_vs_n.png")))

    fig, (ax,) = _figure(1, 7.5, 5.0)
    drawn = False
    for key, name, marker in (("train_step_s", "training step (s)", "o"), ("prefill_s", "prefill of n tokens (s)", "s"),
                              ("decode_s_per_token", "decode after n tokens (s per token)", "^")):
        xs, ys = _xy(rows, key)
        if xs:
            ax.plot(xs, ys, label=name, marker=marker)
            drawn = True
    if drawn:
        _log_n_axis(ax, ns)
        _log_y_axis(ax, _plain)
        ax.set_ylabel("time (seconds, log scale)")
        ax.set_title(f"time vs context length\n{label}" + (f", {sub}" if sub else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, os.path.join(out_dir, "time_vs_n.png")))
    return paths


# ------------------------------------------------------------------------------------------------- sweep


def _merged(runs: Sequence[list[dict]], key: str, scale: float) -> tuple[list[float], list[float], list]:
    """The runs of one configuration (its seeds) at each n, for a log axis: the geometric mean and the 95% interval
    of the mean of log(value) (a factor either side; costs vary by factors, and an interval on a log axis must stay
    above zero), as matplotlib's asymmetric error [below, above]; no error with one run."""
    from .stats import interval

    at: dict[float, list[float]] = {}
    for rows in runs:
        for x, y in zip(*_xy(rows, key, scale)):
            if y > 0:
                at.setdefault(x, []).append(y)
    xs = sorted(at)
    means, below, above = [], [], []
    for x in xs:
        s = interval(math.log(y) for y in at[x])
        mid = math.exp(s["mean"])
        means.append(mid)
        below.append(mid - math.exp(s["low"]) if s["low"] is not None else 0.0)
        above.append(math.exp(s["high"]) - mid if s["high"] is not None else 0.0)
    return xs, means, [below, above]


def _lines_by_config(series: Sequence[tuple[str, list[dict]]], panels, title: str, path: str) -> Optional[str]:
    """One figure with a panel per (key, scale, y label, formatter, panel title); one line per configuration: the
    geometric mean over the series that share its label (its seeds), with error bars of the 95% interval in log
    space when there are several (:func:`_merged`)."""
    by_label: dict[str, list[list[dict]]] = {}
    for label, rows in series:
        rows = ok_rows(rows)
        if rows:
            by_label.setdefault(label, []).append(rows)
    if not by_label:
        return None
    fig, axes = _figure(len(panels), 5.2 * len(panels) + 2.5, 5.0)
    colors = _colors(len(by_label))
    handles = {}
    for ax, (key, scale, ylabel, fmt, ptitle) in zip(axes, panels):
        all_ns = []
        for i, (label, runs) in enumerate(by_label.items()):
            xs, ys, errs = _merged(runs, key, scale)
            if xs:
                style = dict(marker=MARKERS[i % len(MARKERS)], color=colors[i], label=label)
                if any(errs[0]) or any(errs[1]):
                    h = ax.errorbar(xs, ys, yerr=errs, capsize=3, **style)
                else:
                    (h,) = ax.plot(xs, ys, **style)
                handles.setdefault(label, h)
                all_ns += xs
        _log_n_axis(ax, all_ns)
        if all_ns:
            _log_y_axis(ax, fmt)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(ylabel)
        ax.set_title(ptitle, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    if not handles:
        return None
    seeds = max(len(runs) for runs in by_label.values())
    fig.suptitle(title + (f"; over seeds: geometric mean, bars the {LEVEL_TEXT} interval" if seeds > 1 else ""))
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", fontsize=8,
               title="configuration")
    return _save(fig, path)


def sweep_scaling_plots(series: Sequence[tuple[str, list[dict]]], out_dir: str) -> list[str]:
    """memory_vs_n.png and time_vs_n.png for a sweep: ``series`` is [(label, bench rows)], one line each."""
    out = []
    p = _lines_by_config(series, [
        ("train_peak_bytes", 1.0, "peak memory (bytes, log)", _bytes_label, "training step peak (fwd + bwd + AdamW)"),
        ("prefill_peak_bytes", 1.0, "peak memory (bytes, log)", _bytes_label, "prefill peak (n tokens, no grad)"),
        ("state_bytes", 1.0, "state / KV cache (bytes, log)", _bytes_label, "state / KV cache after n tokens"),
    ], "memory vs context length n (log-log)", os.path.join(out_dir, "memory_vs_n.png"))
    if p:
        out.append(p)
    p = _lines_by_config(series, [
        ("train_step_s", 1e3, "time per training step (ms, log)", _plain, "training step (fwd + bwd + AdamW)"),
        ("prefill_s", 1e3, "prefill time (ms, log)", _plain, "prefill of n tokens"),
        ("decode_s_per_token", 1e3, "decode time (ms per token, log)", _plain, "decode one token after n"),
    ], "time vs context length n (log-log)", os.path.join(out_dir, "time_vs_n.png"))
    if p:
        out.append(p)
    return out


def _seed_means(points: Sequence[dict], by: tuple, keys: tuple) -> list[dict]:
    """Points that share the ``by`` fields (the seeds of one configuration) as one: the mean of each of ``keys``
    and, as ``<key>_err``, the half-width of its 95% interval (0 for a single point)."""
    from .stats import interval

    merged: dict[tuple, list[dict]] = {}
    for p in points:
        merged.setdefault(tuple(p.get(b) for b in by), []).append(p)
    out = []
    for same in merged.values():
        q = dict(same[0])
        for k in keys:
            s = interval(_pos(p.get(k)) for p in same)
            q[k], q[f"{k}_err"] = s["mean"], s["half"] or 0.0
        out.append(q)
    return out


def quality_vs_ratio_plot(points: Sequence[dict], out_path: str) -> Optional[str]:
    """bpb and perplexity versus the fraction of full layers, one line per ``group`` (the efficient mixer); points
    of the same group and layout (seeds) are drawn as their mean with the 95% interval as error bars.

    points: dicts with group, fraction (0..1), layout (e.g. '3:1', written beside the point), bpb, ppl and
    optionally unigram_bpb (drawn as the floor to beat)."""
    points = [p for p in points if p.get("fraction") is not None and (_pos(p.get("bpb")) or _pos(p.get("ppl")))]
    if not points:
        return None
    points = _seed_means(points, ("group", "fraction", "layout"), ("bpb", "ppl"))  # seeds, not layouts
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    fig, axes = _figure(2, 13.0, 5.0)
    colors = _colors(len(groups))
    for ax, key, ylabel in ((axes[0], "bpb", "bits per byte on validation (lower is better)"),
                            (axes[1], "ppl", "perplexity per byte token (lower is better)")):
        for i, (g, pts) in enumerate(groups.items()):
            pts = sorted((p for p in pts if _pos(p.get(key))), key=lambda p: p["fraction"])
            if not pts:
                continue
            xs, ys, errs = [p["fraction"] for p in pts], [p[key] for p in pts], [p[f"{key}_err"] for p in pts]
            style = dict(marker=MARKERS[i % len(MARKERS)], color=colors[i], label=g)
            if any(errs):
                ax.errorbar(xs, ys, yerr=errs, capsize=3, **style)
            else:
                ax.plot(xs, ys, **style)
            for p in pts:
                if p.get("layout"):
                    ax.annotate(str(p["layout"]), (p["fraction"], p[key]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=colors[i])
        if key == "bpb":  # the unigram floor, drawn when it does not squash the models' differences
            floors = sorted({round(p["unigram_bpb"], 4) for p in points if _pos(p.get("unigram_bpb"))})
            vals = [p["bpb"] for p in points if _pos(p.get("bpb"))]
            if floors and vals:
                top = max(vals) + max(0.5 * (max(vals) - min(vals)), 0.05 * max(vals))
                shown = [f for f in floors if f <= top]
                for j, f in enumerate(shown[:3]):
                    ax.axhline(f, color="gray", linestyle="--", linewidth=1,
                               label="unigram baseline" if j == 0 else None)
                if len(shown) < len(floors):
                    ax.text(0.99, 0.98, "unigram baseline: " + ", ".join(f"{f:.3f}" for f in floors if f > top)
                            + " bpb (above the plot)", transform=ax.transAxes, ha="right", va="top",
                            fontsize=8, color="gray")
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("fraction of full (quadratic) layers  (0 = all efficient, 1 = all full)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="efficient mixer")
    axes[0].set_title("bits per byte vs layer ratio", fontsize=10)
    axes[1].set_title("perplexity vs layer ratio", fontsize=10)
    return _save(fig, out_path)


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when both x and y are to be minimised, in order of increasing x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    front, best = [], math.inf
    for i in order:
        if ys[i] < best:
            front.append(i)
            best = ys[i]
    return front


def tradeoff_plot(points: Sequence[dict], n: Optional[int], out_path: str) -> Optional[str]:
    """Quality versus cost at one context length n: bpb vs decode ms/token, and bpb vs state bytes, each with
    its Pareto front (no configuration both cheaper and better). points: dicts label, bpb, decode_s_per_token,
    state_bytes; points of one label (its seeds) are drawn as their mean with 95% intervals as error bars."""
    panels = (("decode_s_per_token", 1e3, "decode time per token (ms, log)", _plain, "bpb vs decode time"),
              ("state_bytes", 1.0, "state / KV cache (bytes, log)", _bytes_label, "bpb vs state size"))
    points = _seed_means([p for p in points if _pos(p.get("bpb"))], ("label",),
                         ("bpb", "decode_s_per_token", "state_bytes"))
    usable = [[p for p in points if _pos(p.get("bpb")) and _pos(p.get(k))] for k, *_ in panels]
    if not any(usable):
        return None
    labels = list(dict.fromkeys(p["label"] for p in points))  # the sweep's order: same colours as its other plots
    color = dict(zip(labels, _colors(len(labels))))
    fig, axes = _figure(2, 14.5, 5.5)
    handles = {}
    for ax, pts, (key, scale, xlabel, fmt, title) in zip(axes, usable, panels):
        if not pts:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=10)
            continue
        xs = [p[key] * scale for p in pts]
        ys = [p["bpb"] for p in pts]
        for i, p in enumerate(pts):
            if p["bpb_err"] or p[f"{key}_err"]:
                ax.errorbar([xs[i]], [ys[i]], xerr=[p[f"{key}_err"] * scale], yerr=[p["bpb_err"]], fmt="none",
                            ecolor=color[p["label"]], capsize=3, zorder=2)
            h = ax.scatter([xs[i]], [ys[i]], color=color[p["label"]], s=45, zorder=3,
                           marker=MARKERS[labels.index(p["label"]) % len(MARKERS)])
            handles.setdefault(p["label"], h)
            ax.annotate(p["label"], (xs[i], ys[i]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = pareto_front(xs, ys)
        fx, fy = [xs[i] for i in front], [ys[i] for i in front]
        h = ax.step(fx, fy, where="post", color="black", linewidth=1.2, alpha=0.6, zorder=2)[0]
        ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="black", linewidths=1.4, zorder=4)
        handles.setdefault("Pareto front", h)
        _log_axis(ax, fmt, "x")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("bits per byte (lower is better)")
        ax.set_title(title + " (circled: Pareto front)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"quality vs cost at n = {n:,} tokens" if n else "quality vs cost")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", fontsize=8,
               title="configuration")
    return _save(fig, out_path)


def compute_plot(curves: Sequence[tuple[str, list[dict]]], out_path: str) -> Optional[str]:
    """loss_vs_compute.png: validation loss against training FLOPs and against training seconds, one line per job,
    one colour per configuration (its seeds share it)."""
    curves = [(label, c) for label, c in curves if c]
    if not curves:
        return None
    labels = list(dict.fromkeys(label for label, _ in curves))
    color = dict(zip(labels, _colors(len(labels))))
    fig, axes = _figure(2, 13.0, 5.0)
    handles = {}
    for ax, key, xlabel in ((axes[0], "flops", "training compute (FLOPs, forward + backward; log)"),
                            (axes[1], "train_s", "training time (s; log)")):
        for label, c in curves:
            pts = [(r[key], r["val_loss"]) for r in c if _pos(r.get(key))]
            if pts:
                (h,) = ax.plot([x for x, _ in pts], [y for _, y in pts], color=color[label],
                               marker=MARKERS[labels.index(label) % len(MARKERS)], markersize=3, alpha=0.8)
                handles.setdefault(label, h)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("loss vs compute (compare at equal FLOPs, not equal steps)", fontsize=10)
    axes[1].set_title("loss vs wall-clock training time", fontsize=10)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", fontsize=8,
               title="configuration")
    return _save(fig, out_path)
