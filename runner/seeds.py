"""The sweep's jobs grouped by configuration without the seed: for every metric the mean, the standard deviation,
n and the 95% interval of the mean; the paired difference (by seed) of each configuration against its baseline,
with its interval and, in words, whether it is significant at 95% or within noise. Written into report.md and
summary_grouped.csv by runner/report.py."""
from __future__ import annotations

import csv
import io
from typing import Callable, Optional

from .common import atomic_write_text, fmt_bytes
from .stats import LEVEL, interval, paired

# (key, name, unit for the words, formatter, lower is better)
METRICS = (
    ("eval_loss", "eval loss", "nats/token", lambda v: f"{v:.4f}", True),
    ("bpb", "bpb", "bits/byte", lambda v: f"{v:.4f}", True),
    ("mqar_accuracy", "MQAR accuracy", "", lambda v: f"{v:.3f}", False),
    ("task_accuracy", "task accuracy", "", lambda v: f"{v:.3f}", False),
    ("task_accuracy_longest", "task accuracy, longest test", "", lambda v: f"{v:.3f}", False),
    ("val_loss_at_budget", "val loss at FLOP budget", "nats/token", lambda v: f"{v:.4f}", True),
    ("final_loss", "final train loss", "nats/token", lambda v: f"{v:.4f}", True),
    ("train_tokens_per_s", "train tok/s", "tokens/s", lambda v: f"{v:,.0f}", False),
    ("decode_ms_per_token", "decode ms/tok", "ms/token", lambda v: f"{v:.3f}", True),
    ("train_peak_bytes", "train peak", "bytes", fmt_bytes, True),
)
# the differences the report says in words
WORDED = ("eval_loss", "bpb", "mqar_accuracy", "task_accuracy", "task_accuracy_longest", "val_loss_at_budget",
          "train_tokens_per_s")


def groups(jobs: list[dict]) -> list[dict]:
    """Completed jobs by ``config`` (their label without the seed), in sweep order; each group holds its jobs, its
    seeds, and per metric the values by seed and their :func:`runner.stats.interval`."""
    out: dict[str, dict] = {}
    for j in jobs:
        if not j["ok"]:
            continue
        g = out.setdefault(j["config"], {"config": j["config"], "jobs": [], "by_seed": {}, "first": j})
        g["jobs"].append(j)
        seed = j.get("seed")
        for key, *_ in METRICS:
            v = j.get(key)
            if v is not None:
                g["by_seed"].setdefault(key, {}).setdefault(seed, v)  # a repeated seed counts once
    for g in out.values():
        g["seeds"] = sorted({j.get("seed") for j in g["jobs"]}, key=lambda s: (s is None, s))
        g["stats"] = {key: interval(g["by_seed"].get(key, {}).values()) for key, *_ in METRICS}
    return list(out.values())


def compare(gs: list[dict], baseline_of: Callable[[dict], Optional[dict]]) -> None:
    """Each group's paired differences against its baseline group (``baseline_of``), in place: g["baseline"],
    g["diff"][metric]."""
    for g in gs:
        base = baseline_of(g)
        g["baseline"] = base["config"] if base is not None and base is not g else None
        g["diff"] = {}
        if g["baseline"] is None:
            continue
        for key, *_ in METRICS:
            a, b = g["by_seed"].get(key, {}), base["by_seed"].get(key, {})
            if a and b:
                g["diff"][key] = paired(a, b)


def _cell(s: dict, fmt) -> str:
    if not s["n"]:
        return "-"
    if s["std"] is None:
        return f"{fmt(s['mean'])} (1)"
    return f"{fmt(s['mean'])} ± {fmt(s['std'])} ({s['n']}) [{fmt(s['low'])}, {fmt(s['high'])}]"


def verdict(key: str, d: dict, lower_better: bool) -> str:
    if d["significant"] is None:
        return "one seed: no interval"
    if not d["significant"]:
        return "within noise"
    better = (d["mean"] < 0) == lower_better
    return f"significant: {'better' if better else 'worse'}"


def md_lines(gs: list[dict], table: Callable) -> list[str]:
    if not gs:
        return []
    shown = [(k, n, f) for k, n, _, f, _ in METRICS if any(g["stats"][k]["n"] for g in gs)]
    lines = ["## Seeds and noise", "",
             f"Each configuration over its seeds: mean ± standard deviation (n seeds) [{LEVEL:.0%} confidence "
             "interval of the mean, Student t]. One seed gives no interval: run more "
             "(`-m seed=0,1,2`, or `seeds=3`).", ""]
    lines += table(["config", "seeds", *(n for _, n, _ in shown)],
                   [[g["config"], ",".join(str(s) for s in g["seeds"]), *(_cell(g["stats"][k], f) for k, _, f in shown)]
                    for g in gs]) + [""]
    compared = [g for g in gs if g["diff"]]
    if not compared:
        lines += ["No paired differences: no configuration has a baseline in this sweep (the all-full model of "
                  "the same size and seq_len).", ""]
        return lines + _pair_lines(gs, table)
    lines += [f"### Differences against the baseline, paired by seed ({LEVEL:.0%} interval)", "",
              "The difference is this configuration minus its baseline, over the seeds both ran; significant when "
              "the interval excludes 0, else within noise.", ""]
    rows, words = [], []
    for g in compared:
        for key, name, unit, fmt, lower in METRICS:
            d = g["diff"].get(key)
            if d is None or not d["n"]:
                continue
            iv = f"[{fmt(d['low'])}, {fmt(d['high'])}]" if d["low"] is not None else "-"
            v = verdict(key, d, lower)
            rows.append([g["config"], g["baseline"], name, fmt(d["mean"]), iv, str(d["n"]), v])
            if key in WORDED:
                span = (f" ({LEVEL:.0%} interval {fmt(d['low'])} to {fmt(d['high'])}, {d['n']} seeds)"
                        if d["low"] is not None else f" ({d['n']} seed)")
                words.append(f"- {g['config']} against {g['baseline']}: {name} {fmt(d['mean'])} {unit}{span}: "
                             f"{v}.")
    lines += table(["config", "baseline", "metric", "difference", "interval", "pairs", "verdict"], rows) + [""]
    lines += ["In words:", ""] + words + [""]
    return lines + _pair_lines(gs, table)


MAX_PAIRED = 8  # the "every pair" table up to this many configurations (28 pairs)


def every_pair(gs: list[dict], key: str = "eval_loss") -> list[dict]:
    """The paired difference (by seed) of every two configurations with at least two common seeds in ``key``, at
    95% and at the Bonferroni level for the number of pairs (95% that none of the verdicts is a false alarm)."""
    usable = [g for g in gs if len(g["by_seed"].get(key, {})) >= 2]
    if not 3 <= len(usable) <= MAX_PAIRED:
        return []
    pairs = [(a, b) for i, a in enumerate(usable) for b in usable[i + 1:]]
    out = []
    for a, b in pairs:
        d = paired(a["by_seed"][key], b["by_seed"][key])
        if d["low"] is None:
            continue
        strict = paired(a["by_seed"][key], b["by_seed"][key], level=1 - (1 - LEVEL) / len(pairs))
        out.append({"a": a["config"], "b": b["config"], "diff": d, "strict": strict, "pairs": len(pairs)})
    return out


def _pair_lines(gs: list[dict], table: Callable) -> list[str]:
    pairs = every_pair(gs)
    if not pairs:
        return []
    k = pairs[0]["pairs"]
    word = lambda d: "within noise" if not d["significant"] else ("A better" if d["mean"] < 0 else "A worse")  # noqa
    rows = [[p["a"], p["b"], f"{p['diff']['mean']:+.4f}", f"[{p['diff']['low']:+.4f}, {p['diff']['high']:+.4f}]",
             str(p["diff"]["n"]), word(p["diff"]), word(p["strict"])] for p in pairs]
    return ["### Every pair (eval loss, paired by seed)", "",
            f"A minus B over the seeds both ran; negative: A has the lower loss. With {k} pairs about "
            f"{k * (1 - LEVEL):.1f} would look significant at {LEVEL:.0%} by chance alone; the last column holds "
            f"the verdict at the Bonferroni level ({1 - (1 - LEVEL) / k:.2%} per pair: {LEVEL:.0%} that no verdict "
            f"of the table is a false alarm).", ""] + \
        table(["A", "B", "A - B", f"{LEVEL:.0%} interval", "pairs", f"verdict at {LEVEL:.0%}", "verdict, Bonferroni"],
              rows) + [""]


def write_csv(path: str, gs: list[dict]) -> None:
    """summary_grouped.csv: one row per configuration, every metric's mean, std, n and interval, and the paired
    difference against the baseline with its interval and significance."""
    cols = ["config", "baseline", "jobs", "seeds"]
    for key, *_ in METRICS:
        cols += [f"{key}_mean", f"{key}_std", f"{key}_n", f"{key}_ci_low", f"{key}_ci_high",
                 f"{key}_diff", f"{key}_diff_low", f"{key}_diff_high", f"{key}_significant"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for g in gs:
        row = [g["config"], g.get("baseline") or "", len(g["jobs"]), " ".join(str(s) for s in g["seeds"])]
        for key, *_ in METRICS:
            s, d = g["stats"][key], g.get("diff", {}).get(key) or {}
            row += [s["mean"], s["std"], s["n"], s["low"], s["high"], d.get("mean"), d.get("low"), d.get("high"),
                    d.get("significant")]
        w.writerow(["" if v is None else v for v in row])
    atomic_write_text(path, buf.getvalue())
