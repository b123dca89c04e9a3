"""The evaluation task ``accuracy`` (``eval.tasks=[ppl,accuracy]``): greedy accuracy at the answers of a generated
task's test sets (runner/tasks/synthetic.py), by test length, by each of the task's tags, and per example ("exact":
every answer of the example right). The sweep report gives it per configuration over its seeds, with the 95%
interval of the mean."""
from __future__ import annotations

from ..stats import mean_text
from .synthetic import evaluate_task

NEEDS = "answers"  # what the generated tasks' sources PROVIDE


def task_problems(c) -> list[str]:
    return []


def run(ctx) -> dict:
    return {"accuracy": evaluate_task(ctx.model, ctx.data, ctx.cfg.eval.batch_size, ctx.device)}


def _row_text(r: dict) -> str:
    return f"{r['length']}{'*' if r['beyond_training'] else ''} {r['accuracy']:.3f}"


def describe(ev: dict) -> list[str]:
    a = ev.get("accuracy")
    if not isinstance(a, dict):
        return []
    per = ", ".join(_row_text(r) for r in a["by_length"])
    lines = [f"  {a['task']}: answer accuracy by length {per} (* beyond the training length {a['train_length']}); "
             f"exact {a['exact']:.3f}"]
    for r in a["by_length"]:
        if "baseline" in r:
            b = r["baseline"]
            lines.append(f"  baseline at {r['length']}, {b['name']}: answer accuracy {b['accuracy']:.3f}, exact "
                         f"{b['exact']:.3f}")
        if "by_supervision_step" in r:
            st = r["by_supervision_step"]
            per = ", ".join(f"{x['step']}: {x['exact']:.3f}" for x in st["steps"])
            h = st["halted"]
            at = ", ".join(f"{b['step']}: {b['examples']} ({b['exact']:.3f})" for b in h.get("by_step", []))
            lines.append(f"  exact after each supervision step {per}; where the halting head stops (mean "
                         f"{h['mean_steps']:.1f} steps): exact {h['exact']:.3f}, answer accuracy {h['accuracy']:.3f}"
                         + (f"; examples stopping at each step (their exact) {at}" if at else ""))
    return lines


CSV = {"task_accuracy": lambda ev: (ev.get("accuracy") or {}).get("accuracy"),
       "task_accuracy_longest": lambda ev: (ev.get("accuracy") or {}).get("accuracy_longest")}


def _groups(jobs: list) -> dict:
    """{task: {config: {"job": first job, "rows": [by_length rows of each seed]}}} of the jobs that have it."""
    out: dict = {}
    for j in jobs:
        a = (j["results"].get("eval") or {}).get("accuracy")
        if not isinstance(a, dict) or not a.get("by_length"):
            continue
        g = out.setdefault(a["task"], {}).setdefault(j["config"], {"job": j, "runs": [], "train": a["train_length"]})
        g["runs"].append({r["length"]: r for r in a["by_length"]})
    return out


def _supervision_lines(task: str, configs: dict, table) -> list[str]:
    """The recursive models' exact accuracy after each supervision step, and where their halting head stops, at
    the training length (mean ± interval over the seeds)."""
    rec = {name: [run[g["train"]]["by_supervision_step"] for run in g["runs"]
                  if "by_supervision_step" in run.get(g["train"], {})] for name, g in configs.items()}
    rec = {name: runs for name, runs in rec.items() if runs}
    if not rec:
        return []
    steps = max(len(r["steps"]) for runs in rec.values() for r in runs)
    rows = [[name, *(mean_text([r["steps"][i]["exact"] for r in runs if len(r["steps"]) > i]) for i in range(steps)),
             mean_text([r["halted"]["exact"] for r in runs]), mean_text([r["halted"]["mean_steps"] for r in runs])]
            for name, runs in rec.items()]
    return ([f"Recursive models ({task}): exact accuracy after each supervision step, and where the halting head "
             f"stops (its exact accuracy, its mean number of steps):", ""]
            + table(["config", *(f"step {i + 1}" for i in range(steps)), "halted", "halted steps"], rows) + [""])


def report_lines(jobs: list, table, fmt) -> list[str]:
    """Per task: answer accuracy by test length (mean ± 95% interval half-width over the seeds, n), and for each
    tag at the training length."""
    lines = []
    for task, configs in _groups(jobs).items():
        lengths = sorted({L for g in configs.values() for run in g["runs"] for L in run})
        train = max(g["train"] for g in configs.values())
        lines += [f"## Task accuracy ({task})", "",
                  f"Greedy accuracy at the answers of the held-out test examples, by example length (* beyond the "
                  f"training length {train}); mean ± the 95% interval's half-width over the seeds (n). Intervals "
                  f"that overlap: within noise.", ""]
        head = ["config", "layers", *(f"{L}{'*' if L > train else ''}" for L in lengths)]
        for key, words in (("accuracy", None), ("exact", "Per example (every answer of the example right):")):
            rows = [[g["job"]["config"], g["job"]["layer_types"],
                     *(mean_text([run[L][key] for run in g["runs"] if L in run]) for L in lengths)]
                    for g in configs.values()]
            base = {L: [run[L]["baseline"] for g in configs.values() for run in g["runs"]
                        if "baseline" in run.get(L, {})] for L in lengths}  # over every job's test set
            if any(base.values()):
                name = next(b for bs in base.values() for b in bs)["name"]
                rows.append([f"baseline: {name}", "-", *(mean_text([b[key] for b in base[L]]) for L in lengths)])
            lines += ([words, ""] if words else []) + table(head, rows) + [""]
        lines += _supervision_lines(task, configs, table)
        tags = sorted({t for g in configs.values() for run in g["runs"] for r in run.values() for t in r["by"]})
        for tag in tags:
            keys, cells = [], {}
            for name, g in configs.items():
                for run in g["runs"]:
                    for L, r in run.items():
                        for b in r["by"].get(tag, []):
                            key = b["value"] if "value" in b else (b["min"], b["max"])
                            if key not in keys:
                                keys.append(key)
                            cells.setdefault((name, L, key), []).append(b["accuracy"])
            keys.sort(key=lambda k: k if isinstance(k, tuple) else (k,))
            label = lambda k: (str(k[0]) if k[0] == k[1] else f"{k[0]}-{k[1]}") if isinstance(k, tuple) else str(k)
            lines += [f"By {tag} ({task}), at each test length:", ""]
            rows = [[g["job"]["config"], str(L), *(mean_text(cells.get((name, L, k), [])) for k in keys)]
                    for name, g in configs.items() for L in lengths]
            lines += table(["config", "length", *(f"{tag} {label(k)}" for k in keys)], rows) + [""]
    return lines
