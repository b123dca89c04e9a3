"""The end-of-sweep report: one table, the scaling exponents, crossovers and plots over every job of a sweep.

``build_report(sweep_dir)`` reads every ``results.json`` under the sweep folder (job folders one level down or
deeper) and writes, beside the jobs:

- ``summary.csv``: one row per job (also failed ones, with the head of their error and whatever they finished);
- ``report.md``: the comparison table in human units, the jobs that did not complete with their errors, the
  crossover n of each configuration against the all-full model of the same size and seq_len (with the range
  of n the timing noise moves it over: :func:`runner.common.crossover_noise`), the Pareto front, and links to
  the plots;
- ``memory_vs_n.png``, ``time_vs_n.png``, ``quality_vs_ratio.png``, ``tradeoff.png`` (runner/plots.py).

Jobs whose status is not ``completed`` appear in the table and the csv, but not in the plots, the common n, the
Pareto front or the crossovers. Every file is written atomically.

``python -m runner.report DIR`` rebuilds it for a finished sweep; :class:`ReportCallback` builds it when a Hydra
multirun ends.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any, Optional

from hydra.experimental.callback import Callback

from .common import (_pos, _series, atomic_write_text, crossover, crossover_noise, fmt_bytes,  # noqa: F401
                     scaling_exponent)

log = logging.getLogger(__name__)

TIME_KEYS = ("train_step_s", "prefill_s", "decode_s_per_token")
MEMORY_KEYS = ("train_peak_bytes", "prefill_peak_bytes", "state_bytes")
CROSSOVER_KEYS = (("train_step_s", "train step"), ("prefill_s", "prefill"), ("decode_s_per_token", "decode"),
                  ("train_peak_bytes", "train peak memory"))
PLOT_FILES = ("memory_vs_n.png", "time_vs_n.png", "quality_vs_ratio.png", "tradeoff.png", "loss_vs_compute.png")
SKIP_DIRS = {"checkpoints", "wandb", ".hydra", "__pycache__"}

def _task_columns() -> dict:
    """summary.csv columns the evaluation tasks contribute (runner/evals: each task's CSV), in registry order."""
    from . import evals

    return {col: fn for name in evals.names() for col, fn in getattr(evals.get(name), "CSV", {}).items()}


def _job_columns(ev: dict) -> dict:
    """summary.csv columns that depend on what a job was scored on (runner/evals: a task's ``columns(ev)``, e.g.
    one per lm-eval task and metric), after the fixed ones."""
    from . import evals

    found = (getattr(evals.get(name), "columns", None) for name in evals.names())
    return {col: v for columns in found if columns is not None for col, v in columns(ev).items()}


def csv_columns() -> list[str]:
    """summary.csv's columns: the job, its configuration and outcome, the headline numbers, the registered
    evaluation tasks' own columns, and the cost-versus-n figures."""
    return ["job", "attention", "full", "ratio", "pattern", "layer_types", "full_fraction", "model", "seq_len", "seed",
            "n_params", "status", "error", "train_tokens_per_s", "final_loss", "eval_loss", "ppl", "bpb",
            "unigram_bpb", *_task_columns(), "train_flops", "val_loss_at_budget", "flops_budget", "n_common",
            "decode_ms_per_token", "train_peak_bytes", "state_bytes",
            *(f"exp_{k}" for k in TIME_KEYS + MEMORY_KEYS),
            "baseline", *(f"crossover_{k}" for k, _ in CROSSOVER_KEYS),
            *(f"crossover_{k}_{end}" for k in TIME_KEYS for end in ("lo", "hi"))]


# ------------------------------------------------------------------------------------------ scaling maths


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def find_results(sweep_dir: str) -> list[str]:
    """Every results.json under sweep_dir (its own, if any, and in job folders at any depth), in natural order
    of the job folders (so '2_...' comes before '10_...')."""
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        if "results.json" in files:
            found.append(os.path.join(root, "results.json"))
    return sorted(found, key=lambda p: _natural(os.path.relpath(p, sweep_dir)))


def error_head(err: Any, limit: int = 240) -> str:
    """The informative first line of an error: the exception line, or for a list of problems ('invalid
    configuration:' followed by '- ...' lines) the problems joined by '; '."""
    if not err:
        return ""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    head = lines[0]
    if head.endswith(":") and len(lines) > 1:
        problems = []
        for ln in lines[1:]:
            if ln.startswith("Traceback"):
                break
            problems.append(ln.lstrip("-* ").strip())
        head = f"{head} {'; '.join(problems)}"
    return head if len(head) <= limit else head[:limit - 1] + "…"


def _job(path: str, sweep_dir: str) -> dict:
    folder = os.path.dirname(path)
    rel = os.path.relpath(folder, sweep_dir)
    job = {"job": os.path.basename(os.path.abspath(folder)) if rel == "." else rel.replace(os.sep, "/"),
           "dir": folder}
    try:
        with open(path) as f:
            res = json.load(f)
        if not isinstance(res, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        res = {"status": "unreadable", "error": f"{path}: {type(e).__name__}: {e}"}
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    sec = lambda name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}  # noqa: E731
    lt = res.get("layer_types") or []
    lt = "".join(str(t) for t in lt) if isinstance(lt, list) else str(lt)
    status = str(res.get("status", "unknown"))
    err = res.get("error")
    if status == "running":
        from .run_folder import in_use

        if not in_use(os.path.dirname(path)):  # no process holds the folder: the job died without a word
            status = "died"
            err = err or "no outcome recorded and no process holds the folder: the job died (killed?)"
        elif not err:
            err = "still running"
    train, ev = res.get("train") or {}, res.get("eval") or {}
    job.update(
        results=res, status=status, error=str(err) if err else "", error_head=error_head(err),
        attention=sec("attention").get("name"), full=sec("full").get("name"), ratio=cfg.get("ratio"),
        pattern=cfg.get("pattern"), layer_types=lt, model=sec("model").get("name"), seq_len=cfg.get("seq_len"),
        seed=cfg.get("seed"), n_params=res.get("n_params"), objective=sec("objective").get("name") or "next_token",
        bound=bool(ev.get("bound")), generation=[g for g in (res.get("bench_generation") or [])
                                                 if isinstance(g, dict) and g.get("status") == "ok"],
        full_fraction=(lt.count("F") / len(lt)) if lt else None,
        train_tokens_per_s=train.get("tokens_per_s"), final_loss=train.get("final_loss"),
        eval_loss=ev.get("loss"), ppl=ev.get("ppl"), bpb=ev.get("bpb"), unigram_bpb=ev.get("unigram_bpb"),
        **{col: fn(ev) for col, fn in _task_columns().items()}, extra=_job_columns(ev),
        rows=[r for r in (res.get("bench") or []) if isinstance(r, dict) and r.get("status", "ok") == "ok"
              and _pos(r.get("n"))],
    )
    job["ok"] = status == "completed"
    from .compute import val_curve

    job["curve"] = val_curve(folder)
    job["train_flops"] = job["curve"][-1]["flops"] if job["curve"] else None
    return job


def _mixers(job: dict) -> set:
    lt = job["layer_types"]
    used = set()
    if "L" in lt:
        used.add(job["attention"])
    if "F" in lt:
        used.add(job["full"])
    return used


SHOWN = {"attention.name", "full.name", "model.name", "ratio", "pattern", "seq_len", "seed"}  # in a label already
UNCOMPARED = ("seed", "resume", "logger.", "device", "stages", "weights")  # settings that do not make a configuration


def _flat(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix[:-1]: json.dumps(d, sort_keys=True) if isinstance(d, list) else d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _varying(jobs: list[dict]) -> list[str]:
    """The settings beyond those a label shows (mixers, layout, size, seq_len, seed) that differ between the jobs,
    e.g. train.lr in a learning-rate sweep: a configuration is everything but the seed. A setting of a mixer or a
    model size counts only where it differs between jobs of the same name (attention.chunk_size of one mixer), and
    so does a setting of a named section inside them (model.recursion.cycles between jobs with recursion=trm: in a
    sweep of recursion=trm against none, the label names model.recursion.name, not each of trm's settings)."""
    flats = [_flat(j["results"]["config"]) for j in jobs if isinstance(j["results"].get("config"), dict)
             and j["results"]["config"]]  # a job without a recorded config (unreadable) varies nothing
    keys = sorted({k for f in flats for k in f} - SHOWN)
    out = []
    for k in keys:
        if k.startswith(UNCOMPARED) or k in UNCOMPARED:
            continue
        group = k.split(".")[0]
        if group in ("attention", "full", "model", "objective"):
            parts = k.split(".")
            owners = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]  # the nearest section first
            owner = next(o for o in owners if o == group or (f"{o}.name" != k and any(f"{o}.name" in f for f in flats)))
            values: dict = {}
            for f in flats:
                values.setdefault(f.get(f"{owner}.name"), set()).add(repr(f.get(k)))
            if any(len(v) > 1 for v in values.values()):
                out.append(k)
        elif len({repr(f.get(k)) for f in flats}) > 1:
            out.append(k)
    return out


def _label(jobs: list[dict]) -> None:
    """A short label per job naming what varies: 'gated_deltanet 3:1 small', plus the full mixer when the sweep
    varies it, T=seq_len and seed when they vary, and ``key=value`` for every other setting that varies
    (:func:`_varying`, e.g. train.lr=0.001); ``config`` is the same without the seed (what a configuration's seeds
    share), ``settings`` the other varying settings. Ties between completed jobs get the job folder appended to
    the label."""
    varies = lambda k: len({j[k] for j in jobs}) > 1  # noqa: E731
    vary_full, vary_t, vary_seed = varies("full"), varies("seq_len"), varies("seed")
    vary_obj = len({j.get("objective", "next_token") for j in jobs}) > 1
    others = _varying(jobs)
    for j in jobs:
        lt = j["layer_types"]
        names = []
        if "L" in lt or not lt:
            names.append(str(j["attention"]))
        if "F" in lt and ("L" not in lt or vary_full):
            names.append(str(j["full"]))
        extra = ([f"T={j['seq_len']}"] if vary_t else []) + ([str(j.get("objective"))] if vary_obj else [])
        flat = _flat(j["results"].get("config") or {})
        # the varying settings this job has (model.recursion.cycles in the recursive jobs, not "None" in the others)
        j["settings"] = {k: flat.get(k) for k in others if k in flat}
        settings = [f"{k}={_setting(v)}" for k, v in j["settings"].items()]
        seed = [f"seed={j['seed']}"] if vary_seed else []
        j["layout"] = str(j["pattern"] or j["ratio"])
        j["config"] = " ".join(["+".join(names), j["layout"], str(j["model"]), *extra, *settings])
        j["label"] = " ".join([j["config"], *seed])
        group = [str(j["attention"])] + ([f"(full {j['full']})"] if vary_full else []) + [str(j["model"])] + extra
        j["group"] = " ".join(group + settings)
    seen: dict[str, int] = {}
    for j in jobs:
        if j["ok"]:
            seen[j["label"]] = seen.get(j["label"], 0) + 1
    for j in jobs:
        if j["ok"] and seen[j["label"]] > 1:
            j["label"] += f" [{j['job']}]"


def _bounded(j: dict, key: str) -> str:
    """A loss cell, marked '≤' where it is an upper bound (masked diffusion's NELBO)."""
    cell = _f(j[key], ".3f")
    return f"≤ {cell}" if j.get("bound") and cell != "-" else cell


def _generation_lines(jobs: list[dict]) -> list[str]:
    """The bench stage's generation per job: tokens/s (decoding, or diffusion at each number of steps) and the
    samples' quality (unigram entropy, judge perplexity), beside the validation text's own ('data')."""
    done = [j for j in jobs if j["ok"] and j.get("generation")]
    if not done:
        return []
    header = ["job", "config", "sampler", "steps", "tokens", "tokens/s", "entropy (bits)", "judge ppl"]
    rows = [[j["job"], j["label"], g["sampler"], str(g["steps"]) if g.get("steps") is not None else "-",
             str(g["tokens"]), _count(g.get("tokens_per_s")), _f(g.get("entropy_bits"), ".2f"),
             _f(g.get("judge_ppl"), ".2f")] for j in done for g in j["generation"]]
    return (["## Generation", "", "Generated tokens/s after a 16-token prompt (bench.generate_tokens, batch "
             "bench.batch_size): autoregressive models one decode step per token, masked-diffusion models S "
             "denoising steps over the whole block (bench.diffusion_steps). Quality of samples after prompts from "
             "the validation text: the unigram entropy of each sample (falls when a sampler repeats itself) and, "
             "with bench.judge, the perplexity under that autoregressive run; 'data' is the validation text's own "
             "continuation.", ""] + _table(header, rows) + [""])


def _setting(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _common_n(jobs: list[dict]) -> Optional[int]:
    sets = [{r["n"] for r in j["rows"]} for j in jobs if j["ok"] and j["rows"]]
    if not sets:
        return None
    common = set.intersection(*sets)
    return int(max(common)) if common else None


def _at(job: dict, n: Optional[int], key: str):
    if n is None:
        return None
    for r in job["rows"]:
        if r["n"] == n:
            return r.get(key)
    return None


def _all_full(job: dict) -> Optional[str]:
    """The mixer of a job whose every layer is one quadratic (full-attention) mixer, else None."""
    from .mixers import REGISTRY

    used = _mixers(job)
    if job["layer_types"] and len(used) == 1:
        name = next(iter(used))
        if name in REGISTRY and REGISTRY[name][3]:
            return name
    return None


def _baselines(items: list[dict], job=lambda x: x, bench: bool = True) -> dict:
    """(model, seq_len, other varying settings, full mixer) -> the first item (a job, or a seed group whose
    ``job(item)`` is its first job) that is a completed all-full model of that mixer, with bench rows if
    ``bench``."""
    out = {}
    for x in items:
        j = job(x)
        if j["ok"] and (j["rows"] or not bench) and _all_full(j):
            out.setdefault((*_peers(j), _all_full(j)), x)
    return out


def _peers(job: dict) -> tuple:
    """What a job and its baseline share: the model size, seq_len and every other setting the sweep varies (a
    learning-rate sweep compares each rate with the all-full model at that rate)."""
    return job["model"], job["seq_len"], repr(sorted((job.get("settings") or {}).items()))


def _baseline_of(job: dict, bases: dict) -> Optional[dict]:
    """A job's baseline: the all-full model of the full mixer it uses (or would use), of the same size and seq_len;
    else the all-softmax one."""
    key = _peers(job)
    return bases.get((*key, job["full"])) or bases.get((*key, "softmax"))


# ------------------------------------------------------------------------------------------------- output


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def _write_csv(path: str, jobs: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = csv_columns()
    columns += sorted({c for j in jobs for c in j.get("extra", {})} - set(columns))
    w.writerow(columns)
    for j in jobs:
        row = {**j.get("extra", {}), **j, "error": j["error_head"]}
        w.writerow([_csv_value(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _f(v, fmt: str, scale: float = 1.0) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return format(v * scale, fmt)


def _count(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.0f}"


def _cross_cell(x: Optional[float], a: dict, b: dict) -> str:
    ns = sorted(set(a) & set(b))
    if not ns:
        return "-"
    if x is None:
        return f"> {ns[-1]:,.0f}"
    if x == ns[0] and a[ns[0]] < b[ns[0]]:
        return f"≤ {ns[0]:,.0f}"
    return f"{x:,.0f}"


def _cross_text(x: Optional[float], a_rows, b_rows, key: str, noise: Optional[tuple] = None) -> str:
    """The crossover's cell; with ``noise`` (:func:`crossover_noise`) followed by the range of n the timing noise
    moves it over, '(lo - hi)', unless the noise does not move it."""
    text = _cross_cell(x, _series(a_rows, key), _series(b_rows, key))
    if noise is None:
        return text
    lo = _cross_cell(noise[0], _series(a_rows, key, 0), _series(b_rows, key, 1))
    hi = _cross_cell(noise[1], _series(a_rows, key, 1), _series(b_rows, key, 0))
    return text if lo == hi == text else f"{text} ({lo} – {hi})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return out


def _write_md(path: str, sweep_dir: str, jobs: list[dict], n: Optional[int], crossings: list[dict],
              front: list[dict], plots: list[str], seed_lines: list[str] = ()) -> None:
    done = [j for j in jobs if j["ok"]]
    notdone = [j for j in jobs if not j["ok"]]
    lines = [f"# Sweep report: {os.path.abspath(sweep_dir)}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. {len(jobs)} jobs: {len(done)} completed"
             + (", " + ", ".join(f"{sum(j['status'] == s for j in notdone)} {s}"
                                 for s in sorted({j['status'] for j in notdone})) if notdone else "") + ".", ""]
    at = f"n = {n:,}" if n else "n (none common)"
    lines += ["## Comparison", "",
              f"Costs at {at}, the largest context length measured by every completed job. Exponents: slope of "
              "log(cost) vs log(n) over the upper half of each job's bench ladder (~2 quadratic, ~1 linear, "
              "~0 constant). Losses in nats per token; bpb = bits per byte (unigram: the floor to beat).", ""]
    header = ["job", "config", "layers", "params", "status", "train tok/s", "final loss", "eval loss", "ppl", "bpb",
              "unigram bpb", "decode ms/tok", "train peak", "state", "exp train step", "exp prefill",
              "exp decode", "exp train mem", "exp state"]
    rows = []
    for j in jobs:
        rows.append([j["job"], j["label"], j["layer_types"] or "-", _count(j["n_params"]), j["status"],
                     _count(j["train_tokens_per_s"]), _f(j["final_loss"], ".3f"),
                     *(_bounded(j, k) for k in ("eval_loss", "ppl", "bpb")), _f(j["unigram_bpb"], ".3f"),
                     _f(j["decode_ms_per_token"], ".3f"),
                     fmt_bytes(j["train_peak_bytes"]) if _pos(j["train_peak_bytes"]) else "-",
                     fmt_bytes(j["state_bytes"]) if _pos(j["state_bytes"]) else "-",
                     *(_f(j[f"exp_{k}"], ".2f") for k in ("train_step_s", "prefill_s", "decode_s_per_token",
                                                          "train_peak_bytes", "state_bytes"))])
    lines += _table(header, rows) + [""]
    if any(j.get("bound") for j in jobs):
        lines += ["'≤': the masked-diffusion jobs' eval loss, ppl and bpb are upper bounds (the NELBO, "
                  "runner/objectives/mdlm.py), beside the autoregressive jobs' exact ones on the same bytes.", ""]
    lines += _generation_lines(jobs)
    lines += list(seed_lines)

    from . import evals

    for name in evals.names():  # each evaluation task's own section, when it has one and its numbers are there
        section = getattr(evals.get(name), "report_lines", None)
        if section is not None:
            lines += section(done, _table, _f)

    if notdone:
        lines += ["## Jobs that did not complete", ""]
        for j in notdone:
            lines.append(f"- **{_md(j['job'])}** ({j['status']}): {_md(j['error_head'] or 'no error recorded')}")
        lines.append("")
        for j in notdone:
            if j["error"] and j["error"].strip() != j["error_head"]:
                text = "\n".join(j["error"].strip().splitlines()[:40])
                lines += [f"<details><summary>{_md(j['job'])}: full error</summary>", "", "```", text, "```", "",
                          "</details>", ""]

    lines += ["## Crossover against the all-full model", ""]
    if crossings:
        lines += ["The context length n from which each configuration costs less than the all-full model (every "
                  "layer the full mixer it uses, else all softmax) of the same size and seq_len (interpolated in "
                  "log-log between ladder points; '≤ n' cheaper from the first common n, '> n' not cheaper within "
                  "the ladder). In parentheses, where the timing noise moves it: the same crossing of each side's "
                  "fastest run against the other's slowest (the bench stage's repeats; decode: its steps), from "
                  "where it could be cheaper to where it is cheaper beyond the noise. A crossover inside that "
                  "range is within noise; a wide one says to measure again with more bench.repeats.", ""]
        lines += _table(["config", "baseline", *(name for _, name in CROSSOVER_KEYS)],
                        [[c["label"], c["baseline"], *c["text"]] for c in crossings]) + [""]
    else:
        lines += ["No pair to compare: the sweep has no completed all-full job with bench results and another "
                  "completed job of the same model and seq_len.", ""]

    if front:
        lines += [f"## Pareto front at {at}", "",
                  "Configurations that no other is both better (bpb) and cheaper than:", ""]
        for f in front:
            lines.append(f"- {f['cost']}: " + ", ".join(f"{_md(p['label'])} (bpb {p['bpb']:.3f}, {p['value']})"
                                                        for p in f["points"]))
        lines.append("")

    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            name = os.path.basename(p)
            lines += [f"[{name}]({name})", "", f"![{name[:-4].replace('_', ' ')}]({name})", ""]
    lines += ["Per-job data: [summary.csv](summary.csv); per configuration over its seeds: "
              "[summary_grouped.csv](summary_grouped.csv).", ""]
    atomic_write_text(path, "\n".join(lines))


def build_report(sweep_dir: str) -> dict:
    """Collect every results.json under sweep_dir, write summary.csv, report.md and the plots beside them.
    Returns {"jobs": [csv rows], "n_common", "crossovers", "summary_csv", "report_md", "plots"}."""
    sweep_dir = os.path.abspath(os.path.expanduser(str(sweep_dir)))
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"{sweep_dir} is not a folder")
    paths = find_results(sweep_dir)
    if not paths:
        raise FileNotFoundError(f"no results.json under {sweep_dir}: not a sweep folder, or no job has started")
    jobs = [_job(p, sweep_dir) for p in paths]
    _label(jobs)
    n = _common_n(jobs)
    for j in jobs:
        j["n_common"] = n if j["ok"] and j["rows"] else None
        dec = _at(j, j["n_common"], "decode_s_per_token")
        j["decode_ms_per_token"] = dec * 1e3 if _pos(dec) else None
        j["train_peak_bytes"] = _at(j, j["n_common"], "train_peak_bytes")
        j["state_bytes"] = _at(j, j["n_common"], "state_bytes")
        ns = [r["n"] for r in j["rows"]]
        for k in TIME_KEYS + MEMORY_KEYS:
            e = scaling_exponent(ns, [r.get(k) for r in j["rows"]])
            j[f"exp_{k}"] = None if e is None else round(e, 4)

    crossings = []
    bases = _baselines(jobs)
    for j in jobs:
        j["baseline"] = None
        base = _baseline_of(j, bases)
        if not (j["ok"] and j["rows"]) or base is None or base is j or _all_full(j):
            continue
        j["baseline"] = base["job"]
        text = []
        for k, _ in CROSSOVER_KEYS:
            x = crossover(j["rows"], base["rows"], k)
            j[f"crossover_{k}"] = None if x is None else round(x, 2)
            noise = crossover_noise(j["rows"], base["rows"], k)
            if k in TIME_KEYS:
                for end, v in zip(("lo", "hi"), noise or (None, None)):
                    j[f"crossover_{k}_{end}"] = None if v is None else round(v, 2)
            text.append(_cross_text(x, j["rows"], base["rows"], k, noise))
        crossings.append({"label": j["label"], "job": j["job"], "baseline": base["label"], "text": text,
                          **{k: j[f"crossover_{k}"] for k, _ in CROSSOVER_KEYS}})

    from .plots import pareto_front

    front = []
    done = [j for j in jobs if j["ok"] and _pos(j["bpb"])]
    for key, name, show in (("decode_ms_per_token", "decode time", lambda v: f"{v:.3f} ms/token"),
                            ("state_bytes", "state bytes", fmt_bytes)):
        pts = [j for j in done if _pos(j[key])]
        if len(pts) >= 2:
            idx = pareto_front([j[key] for j in pts], [j["bpb"] for j in pts])
            front.append({"cost": f"bpb vs {name}",
                          "points": [{"label": pts[i]["label"], "bpb": pts[i]["bpb"], "value": show(pts[i][key])}
                                     for i in idx]})

    from . import compute, seeds

    flops = compute.budget([j["curve"] for j in jobs if j["ok"] and j["curve"]])
    for j in jobs:
        j["flops_budget"] = flops if j["ok"] and j["curve"] else None
        j["val_loss_at_budget"] = compute.loss_at(j["curve"], flops) if j["ok"] else None
    grouped = seeds.groups(jobs)
    group_bases = _baselines(grouped, job=lambda g: g["first"], bench=False)
    seeds.compare(grouped, lambda g: _baseline_of(g["first"], group_bases))
    plots = _plots(sweep_dir, jobs, n)
    summary_csv = os.path.join(sweep_dir, "summary.csv")
    grouped_csv = os.path.join(sweep_dir, "summary_grouped.csv")
    report_md = os.path.join(sweep_dir, "report.md")
    _write_csv(summary_csv, jobs)
    seeds.write_csv(grouped_csv, grouped)
    from . import tuned_lr

    rates = tuned_lr.by_rate(grouped)
    lr_table = os.path.join(sweep_dir, tuned_lr.TABLE) if rates else None
    if lr_table:
        tuned_lr.write_table(lr_table, sweep_dir, tuned_lr.entries_of(rates))
    _write_md(report_md, sweep_dir, jobs, n, crossings, front, plots,
              seeds.md_lines(grouped, _table) + tuned_lr.md_lines(rates, _table, lr_table) +
              _compute_lines(jobs, flops))
    return {"jobs": [{c: j.get(c) for c in csv_columns()} for j in jobs], "n_common": n, "crossovers": crossings,
            "groups": grouped, "tuned_lr": lr_table, "summary_csv": summary_csv, "summary_grouped_csv": grouped_csv,
            "report_md": report_md, "plots": plots}


def _compute_lines(jobs: list[dict], flops: Optional[float]) -> list[str]:
    """The compute-matched view: every job's validation loss at the largest training-FLOP budget all reached."""
    done = [j for j in jobs if j["ok"] and j["curve"]]
    if not done:
        return []
    lines = ["## Compute-matched", "",
             f"The comparison table above and its eval loss are at equal steps (each job's train.steps). Here every "
             f"job's validation loss (periodic validation, train.eval_every) at equal training compute: the largest "
             f"budget every job reached, {flops:.3g} FLOPs (forward + backward), interpolated in log FLOPs between "
             f"its validation points; '-' where a job logged no validation point that early. The seeds table "
             f"above gives it per configuration ('val loss at FLOP budget').", ""]
    rows = [[j["job"], j["label"], f"{j['train_flops']:.3g}", _f(j["curve"][-1]["val_loss"], ".4f"),
             _f(j["val_loss_at_budget"], ".4f")] for j in done]
    return lines + _table(["job", "config", "train FLOPs", "val loss at the end", "val loss at the budget"],
                          rows) + [""]


def _plots(sweep_dir: str, jobs: list[dict], n: Optional[int]) -> list[str]:
    from . import plots as P

    done = [j for j in jobs if j["ok"]]
    # a configuration's seeds are one line or point, their mean with the 95% interval as error bars
    written = P.sweep_scaling_plots([(j["config"], j["rows"]) for j in done if j["rows"]], sweep_dir)
    p = P.quality_vs_ratio_plot([{"group": j["group"], "fraction": j["full_fraction"], "layout": j["layout"],
                                  "bpb": j["bpb"], "ppl": j["ppl"], "unigram_bpb": j["unigram_bpb"]}
                                 for j in done], os.path.join(sweep_dir, "quality_vs_ratio.png"))
    if p:
        written.append(p)
    p = P.compute_plot([(j["config"], j["curve"]) for j in done if j["curve"]],
                       os.path.join(sweep_dir, "loss_vs_compute.png"))
    if p:
        written.append(p)
    if n is not None:
        p = P.tradeoff_plot([{"label": j["config"], "bpb": j["bpb"],
                              "decode_s_per_token": _at(j, n, "decode_s_per_token"),
                              "state_bytes": _at(j, n, "state_bytes")} for j in done],
                            n, os.path.join(sweep_dir, "tradeoff.png"))
        if p:
            written.append(p)
    for name in PLOT_FILES:  # a plot from an earlier build that no longer applies would mislead
        stale = os.path.join(sweep_dir, name)
        if stale not in written and os.path.exists(stale):
            os.unlink(stale)
    return written


# ---------------------------------------------------------------------------------------- entry points


class ReportCallback(Callback):
    """Hydra callback: when a multirun ends, build the report in ``hydra.sweep.dir``. A failing report is
    logged, never raised: the jobs' results are already on disk and `python -m runner.report DIR` can retry."""

    def __init__(self, enabled: bool = True, **_: Any) -> None:
        self.enabled = enabled

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if not self.enabled:
            return
        try:
            sweep_dir = str(config.hydra.sweep.dir)
            out = build_report(sweep_dir)
            log.info("sweep report: %s (%d jobs, %d plots)", out["report_md"], len(out["jobs"]), len(out["plots"]))
        except BaseException as e:  # noqa: BLE001 - a report must never fail the sweep
            if isinstance(e, KeyboardInterrupt):
                log.warning("sweep report interrupted")
                return
            log.warning("sweep report failed: %s: %s", type(e).__name__, e, exc_info=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.report",
                                 description="Build summary.csv, report.md and the plots of a finished sweep folder.")
    ap.add_argument("dir", help="the sweep folder (e.g. multirun/2025-01-01/12-00-00), or one run folder")
    args = ap.parse_args(argv)
    try:
        out = build_report(args.dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = sum(j["status"] == "completed" for j in out["jobs"])
    print(f"{len(out['jobs'])} jobs ({ok} completed), common n = {out['n_common']}")
    for p in [out["summary_csv"], out["report_md"], *out["plots"]]:
        print(f"  wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
