"""``lm_eval``: the tasks of ``eval.lm_eval.tasks`` through lm-evaluation-harness (runner/lm_harness.py, the
``lm_eval`` extra), scored on the trained model with its own tokenizer: each task's metrics with their standard
errors in the eval section. lm-eval's own tasks read their data sets from the Hugging Face Hub (or its cache);
``eval.lm_eval.include_path`` adds tasks of one's own, e.g. over local JSON files."""
from __future__ import annotations

import importlib.util
import logging
import os

from ..stats import mean_text

NEEDS = "text"  # the harness's tasks are text


def available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


INSTALL = "pip install -e '.[lm_eval]' (lm-evaluation-harness)"


def task_problems(c) -> list[str]:
    s, out = c.eval.lm_eval, []
    tasks = list(s.tasks)
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        out.append(f"eval.lm_eval.tasks={tasks} must be a non-empty list of lm-eval task names, e.g. "
                   f"[lambada_openai,hellaswag,arc_easy]")
    if s.num_fewshot is not None and not (isinstance(s.num_fewshot, int) and 0 <= s.num_fewshot <= 1000):
        out.append(f"eval.lm_eval.num_fewshot={s.num_fewshot} must be a whole number in [0, 1000] or null (each "
                   f"task's own)")
    if s.limit is not None and not (isinstance(s.limit, (int, float)) and s.limit > 0):
        out.append(f"eval.lm_eval.limit={s.limit} must be > 0 (documents per task; a fraction if < 1) or null (all)")
    if s.max_length is not None and not (isinstance(s.max_length, int) and s.max_length >= 2):
        out.append(f"eval.lm_eval.max_length={s.max_length} must be a whole number >= 2 or null (seq_len)")
    if not (isinstance(s.bootstrap_iters, int) and s.bootstrap_iters >= 0):
        out.append(f"eval.lm_eval.bootstrap_iters={s.bootstrap_iters} must be a whole number >= 0")
    if s.include_path is not None:
        if not os.path.isdir(os.path.expanduser(str(s.include_path))):
            out.append(f"eval.lm_eval.include_path={s.include_path!r} is not a folder; give a folder of lm-eval task "
                       f"YAML files")
    if "lm_eval" not in c.eval.tasks:
        return out
    if c.objective.get("name", "next_token") != "next_token":
        out.append(f"eval.tasks has lm_eval, which scores an autoregressive model's log-likelihoods; "
                   f"objective={c.objective.get('name')} gives bounds, not log-likelihoods: leave lm_eval out")
    if not available():
        out.append(f"eval.tasks has lm_eval, but lm-evaluation-harness is not installed: {INSTALL}")
    elif not out:
        from ..lm_harness import unknown_tasks

        unknown = unknown_tasks(tasks, _path(s), bool(s.builtin))
        if unknown:
            looked = ([] if not s.builtin else ["lm-eval's own tasks"]) + \
                ([] if s.include_path is None else [f"the tasks in {s.include_path}"])
            out.append(f"eval.lm_eval.tasks: {unknown} not found among {' and '.join(looked) or 'no tasks at all'}; "
                       f"`lm-eval ls tasks` lists lm-eval's own, eval.lm_eval.include_path adds a folder of one's own")
    return out


def _path(s):
    return os.path.expanduser(str(s.include_path)) if s.include_path is not None else None


def run(ctx) -> dict:
    from ..codec import Codec
    from ..lm_harness import RunnerLM, run_tasks

    s, cfg = ctx.cfg.eval.lm_eval, ctx.cfg
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines would drown the run's own
    lm = RunnerLM(ctx.model, Codec(ctx.data.info()), s.max_length or cfg.seq_len, cfg.eval.batch_size,
                  cfg.precision)
    return {"lm_eval": run_tasks(lm, list(s.tasks), s.num_fewshot, s.limit, _path(s), bool(s.builtin),
                                 int(s.bootstrap_iters), int(cfg.seed))}


def describe(ev: dict) -> list[str]:
    """Console lines: one per task, its metrics with their standard errors."""
    tasks = (ev.get("lm_eval") or {}).get("tasks") or {}
    lines = []
    for task, ms in _scores(ev).items():
        n = f" ({tasks[task]['samples']} samples)" if "samples" in tasks[task] else ""
        lines.append(f"  lm_eval {task}{n}: " + ", ".join(
            f"{metric} {v:.4f}" + (f" ± {err:.4f}" if err is not None else "") for metric, (v, err) in ms.items()))
    return lines


def _scores(ev: dict) -> dict:
    """{task: {metric: (value, its standard error or None)}} of one job's lm_eval section."""
    out: dict = {}
    for task, row in ((ev.get("lm_eval") or {}).get("tasks") or {}).items():
        out[task] = {}
        for metric, value in row.items():
            if metric == "samples" or metric.endswith("_stderr") or "_stderr[" in metric \
                    or not isinstance(value, (int, float)):
                continue
            err = row.get(metric.replace("[", "_stderr[", 1) if "[" in metric else f"{metric}_stderr")
            out[task][metric] = (float(value), err if isinstance(err, (int, float)) else None)
    return out


def columns(ev: dict) -> dict:
    """summary.csv columns of one job: lm_eval_<task>_<metric>, one per task and metric it was scored on."""
    return {f"lm_eval_{task}_{metric}": v for task, ms in _scores(ev).items() for metric, (v, _) in ms.items()}


def report_lines(jobs: list, table, fmt) -> list[str]:
    """Per lm-eval task: each metric per configuration, mean ± the 95% interval's half-width over the seeds (n);
    a configuration run with one seed shows its value ± lm-eval's own standard error instead (s.e.)."""
    runs: dict = {}  # task -> config -> [each seed's {metric: (value, stderr)}]
    for j in jobs:
        for task, ms in _scores(j["results"].get("eval") or {}).items():
            runs.setdefault(task, {}).setdefault(j["config"], []).append(ms)
    if not runs:
        return []
    lines = ["## lm-eval tasks", "",
             "Each task's metrics (lm-evaluation-harness on the trained model): mean ± the 95% interval's half-width "
             "over the seeds (n); with one seed, the value ± lm-eval's standard error over the task's documents "
             "(s.e.). Intervals that overlap: within noise.", ""]
    for task, configs in runs.items():
        metrics = list(dict.fromkeys(m for seeds in configs.values() for ms in seeds for m in ms))
        rows = []
        for config, seeds in configs.items():
            cells = []
            for m in metrics:
                got = [ms[m] for ms in seeds if m in ms]
                if len(got) == 1 and got[0][1] is not None:
                    cells.append(f"{got[0][0]:.4f} ± {got[0][1]:.4f} s.e. (1)")
                else:
                    cells.append(mean_text([v for v, _ in got], ".4f"))
            rows.append([config, *cells])
        lines += [f"{task}:", ""] + table(["config", *metrics], rows) + [""]
    return lines
