"""Each architecture at its own learning rate: the table a learning-rate sweep writes (``tuned_lr.json`` beside its
report, from ``experiment=lr``) and ``train.lr=tuned train.lr_table=<that file>``, which trains any other study's
configurations at the rate that table gives them (Zoology, Arora et al. 2023, reports every model at the best of
four rates: a comparison at one shared rate can favour whichever architecture that rate happens to suit).

A table entry is keyed by what the best rate depends on here: the mixers in use, the layer layout, the model's
width, depth and heads, the context length, the data and tokenizer and the objective. The training length and
batch the rate was tuned at are recorded with it; a job that trains differently gets a warning, not a refusal.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

TABLE = "tuned_lr.json"
VERSION = 1


def config_key(config: dict, layer_types: str) -> str:
    """The table key of a resolved configuration (a results.json ``config``) with its layer types, e.g.
    'gated_deltanet+softmax LLLF d128 L4 H2 T=256 stdlib/bytes next_token' (a text file or dataset adds its name:
    'text:tinyshakespeare.txt/bytes')."""
    get = lambda k: config.get(k) if isinstance(config.get(k), dict) else {}  # noqa: E731
    names = ([str(get("attention").get("name"))] if "L" in layer_types else []) + \
            ([str(get("full").get("name"))] if "F" in layer_types else [])
    m, d = get("model"), get("data")
    where = d.get("path") or d.get("dataset")
    data = str(d.get("name")) + (f":{os.path.basename(os.path.normpath(str(where)))}" if where else "")
    tok = str(d.get("tokenizer")) + (f"{d.get('vocab_size')}" if d.get("tokenizer") == "bpe" else "")
    return (f"{'+'.join(names)} {layer_types} d{m.get('d_model')} L{m.get('n_layers')} H{m.get('n_heads')} "
            f"T={config.get('seq_len')} {data}/{tok} {get('objective').get('name')}")


def training_of(config: dict) -> dict:
    """The training settings a tuned rate is tied to (recorded with it, compared when it is used)."""
    t = config.get("train") if isinstance(config.get("train"), dict) else {}
    return {k: t.get(k) for k in ("steps", "batch_size", "warmup_steps", "weight_decay", "min_lr_ratio")}


def write_table(path: str, sweep_dir: str, entries: dict) -> str:
    from .common import atomic_write_text

    body = {"version": VERSION, "sweep": os.path.abspath(sweep_dir), "metric": "eval_loss (mean over seeds)",
            "use": f"python -m runner <study or settings> train.lr=tuned train.lr_table={os.path.abspath(path)}",
            "entries": entries}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
    return path


def read_table(path: str) -> tuple[Optional[dict], Optional[str]]:
    """(the table's entries, None) or (None, what is wrong with the file)."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, TABLE)
    try:
        with open(path) as f:
            body = json.load(f)
    except FileNotFoundError:
        return None, (f"train.lr_table={path!r} does not exist; give the {TABLE} a learning-rate sweep wrote beside "
                      f"its report (python -m runner experiment=lr writes <sweep folder>/{TABLE})")
    except (OSError, ValueError) as e:
        return None, f"train.lr_table={path!r} cannot be read as a {TABLE}: {type(e).__name__}: {e}"
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) and isinstance(v.get("lr"), (int, float))
                                                for v in entries.values()):
        return None, f"train.lr_table={path!r} is not a {TABLE} (no 'entries' of rates); it is written by the report " \
                     f"of a sweep over train.lr"
    return entries, None


def lookup(config: dict, layer_types: str) -> tuple[Optional[dict], list[str]]:
    """For ``train.lr=tuned``: (the table entry of this configuration, warnings) or (None, [the problem])."""
    table = (config.get("train") or {}).get("lr_table")
    if not table:
        return None, [f"train.lr=tuned needs train.lr_table=<path to a {TABLE}>: run python -m runner experiment=lr "
                      f"(or any sweep over train.lr) first; its report writes <sweep folder>/{TABLE}"]
    entries, why = read_table(str(table))
    if why:
        return None, [why]
    key = config_key(config, layer_types)
    entry = entries.get(key)
    if entry is None:
        have = "; ".join(sorted(entries)) or "nothing"
        return None, [f"train.lr=tuned: {table} has no rate for this configuration ({key}); it has: {have}. Tune it "
                      f"with python -m runner experiment=lr and these settings, or give train.lr=<a number>"]
    warnings = []
    mine, theirs = training_of(config), entry.get("train") or {}
    differ = [f"{k}={mine[k]} (tuned at {theirs.get(k)})" for k in mine if k in theirs and theirs[k] != mine[k]]
    if differ:
        warnings.append(f"train.lr=tuned: the rate {entry['lr']:g} was tuned with other training settings: "
                        f"{', '.join(differ)}; the best rate may differ at these")
    if entry.get("also"):
        warnings.append(f"train.lr=tuned: {table} tuned this configuration more than once ({entry.get('label')}; "
                        f"{'; '.join(entry['also'])}); using the first, {entry['lr']:g}")
    if entry.get("at_edge"):
        warnings.append(f"train.lr=tuned: the rate {entry['lr']:g} is at the edge of the grid it was chosen from "
                        f"({entry.get('grid')}): a rate beyond it may be better")
    return entry, warnings


def entries_of(groups: list[dict]) -> dict:
    """The table of a learning-rate sweep's report: for every configuration-without-rate its best rate.

    groups: dicts with key (config_key), label, config (a results.json config), by_lr {lr: mean eval loss},
    seeds (n)."""
    out: dict[str, Any] = {}
    for g in groups:
        if not g["by_lr"]:
            continue
        grid = sorted(g["by_lr"])
        best = min(grid, key=lambda lr: g["by_lr"][lr])
        if g["key"] in out:  # the same configuration tuned at other steps or batch: the first stays, the rest noted
            out[g["key"]].setdefault("also", []).append(g["label"])
            continue
        out[g["key"]] = {"lr": best, "loss": g["by_lr"][best], "grid": grid, "losses": [g["by_lr"][lr] for lr in grid],
                         "at_edge": len(grid) > 1 and best in (grid[0], grid[-1]), "seeds": g["seeds"],
                         "label": g["label"], "train": training_of(g["config"])}
    return out


def by_rate(grouped: list[dict]) -> list[dict]:
    """The seed groups of a sweep over train.lr (runner/seeds.groups, each job with ``settings``) gathered per
    configuration-without-rate: key, label, config, seeds, by_lr {lr: mean eval loss}, groups {lr: seed group}."""
    out: dict[str, dict] = {}
    for g in grouped:
        j = g["first"]
        lr = (j.get("settings") or {}).get("train.lr")
        mean = g["stats"]["eval_loss"]["mean"]
        if not isinstance(lr, (int, float)) or mean is None:
            continue
        config = j["results"].get("config") or {}
        key = config_key(config, j["layer_types"])
        label = " ".join(t for t in g["config"].split(" ") if not t.startswith("train.lr="))
        r = out.setdefault(label, {"key": key, "label": label, "config": config, "seeds": 0, "by_lr": {},
                                   "groups": {}})  # by label: a sweep may also vary the steps or the batch
        r["by_lr"][float(lr)] = mean
        r["groups"][float(lr)] = g
        r["seeds"] = max(r["seeds"], g["stats"]["eval_loss"]["n"])
    return [r for r in out.values() if len(r["by_lr"]) > 1]  # one rate each (a sweep at tuned rates): no search


def _word(d: dict) -> str:
    if not d["significant"]:
        return "within noise"
    return "significantly worse" if d["mean"] > 0 else "significantly better on the seeds both ran"


def _ranking(rs: list[dict], pick) -> Optional[list[str]]:
    scored = [(pick(r), r["label"]) for r in rs]
    if any(s is None for s, _ in scored):
        return None
    return [label for _, label in sorted(scored)]


def md_lines(rs: list[dict], table, table_path: Optional[str]) -> list[str]:
    """report.md's "Learning rate" section: every configuration's eval loss at each rate, its best rate with the
    paired difference to the next best, and whether the ranking of the configurations at one shared rate is the
    ranking at their tuned rates."""
    from .stats import LEVEL, paired

    if not rs:
        return []
    grid = sorted({lr for r in rs for lr in r["by_lr"]})
    lines = ["## Learning rate", "",
             f"The sweep varies train.lr: each configuration's eval loss at each rate, mean ± std (n seeds); "
             f"**bold** its best rate. Its 'next best' is compared by seed ({LEVEL:.0%} interval of the paired "
             f"difference).", ""]
    rows, words = [], []
    for r in rs:
        best = min(r["by_lr"], key=r["by_lr"].get)
        cells = []
        for lr in grid:
            g = r["groups"].get(lr)
            if g is None:
                cells.append("-")
                continue
            s = g["stats"]["eval_loss"]
            cell = f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "") + f" ({s['n']})"
            cells.append(f"**{cell}**" if lr == best else cell)
        others = sorted((lr for lr in r["by_lr"] if lr != best), key=r["by_lr"].get)
        verdict = "only one rate"
        if others:
            nxt = others[0]
            d = paired(r["groups"][nxt]["by_seed"].get("eval_loss", {}), r["groups"][best]["by_seed"].get(
                "eval_loss", {}))
            if d["significant"] is None:
                verdict = f"{nxt:g} is {r['by_lr'][nxt] - r['by_lr'][best]:+.4f} (one seed: no interval)"
            else:
                verdict = (f"{nxt:g} is {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]: "
                           f"{_word(d)}")
        rate_grid = sorted(r["by_lr"])
        edge = len(rate_grid) > 1 and best in (rate_grid[0], rate_grid[-1])
        rows.append([r["label"], *cells, f"{best:g}" + (" (grid edge)" if edge else ""), verdict])
        words.append(f"- {r['label']}: best rate {best:g} (eval loss {r['by_lr'][best]:.4f}); next best "
                     f"{verdict}" + ("; the best is at the edge of the grid: a rate beyond it may be better, widen "
                                     "the grid" if edge else "") + ".")
    lines += table(["configuration", *(f"lr {lr:g}" for lr in grid), "best rate", "next best"], rows) + [""]
    lines += ["In words:", ""] + words + [""]
    if len(rs) > 1:
        tuned = _ranking(rs, lambda r: min(r["by_lr"].values()))
        lines += ["Ranking by mean eval loss (best first; an order, not a significance: the paired differences are "
                  "in 'Seeds and noise'):", ""]
        lines.append(f"- each at its best rate: {' < '.join(tuned)}")
        for lr in grid:
            at = _ranking(rs, lambda r: r["by_lr"].get(lr))
            if at is None:
                continue
            same = "the same order as at the tuned rates" if at == tuned else "a different order from the tuned rates"
            lines.append(f"- all at {lr:g}: {' < '.join(at)} ({same})")
        lines.append("")
    if table_path:
        lines += [f"The best rates are written to [{os.path.basename(table_path)}]({os.path.basename(table_path)}): "
                  f"run any study at them with `train.lr=tuned train.lr_table={os.path.abspath(table_path)}`.", ""]
    return lines
