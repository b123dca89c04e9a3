"""``python -m runner.lm_eval <run folder> --tasks lambada_openai,hellaswag,arc_easy``: a trained run scored by
lm-evaluation-harness (the ``lm_eval`` extra) through the adapter of runner/lm_harness.py, with the run's own
checkpoint, tokenizer and precision. lm-eval's own tasks read their data sets from the Hugging Face Hub (or its
cache); ``--include-path`` adds a folder of task YAML files of one's own (e.g. over local JSON files). Prints a
table of each task's metrics with their standard errors; ``--output`` writes them as JSON."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch
from rich.console import Console
from rich.table import Table

from .checkpoint import NoTrainedRun, run_model, trained_run
from .codec import Codec, is_text
from .common import atomic_write_text
from .errors import ActionableError
from .evals.lm_eval import INSTALL, available


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m runner.lm_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the folder of a run that trained (its results.json and checkpoints/last.pt)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated, e.g. lambada_openai,arc_easy")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction if < 1; default all)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=None, help="the model's window in tokens (default: the "
                                                                "run's seq_len)")
    p.add_argument("--include-path", default=None, help="a folder of task YAML files of one's own")
    p.add_argument("--no-builtin", action="store_true", help="only the tasks of --include-path (skips indexing "
                                                             "lm-eval's own, which takes tens of seconds)")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap for non-mean metrics' errors")
    p.add_argument("--seed", type=int, default=0, help="lm-eval's seeds (few-shot sampling; default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--output", default=None, help="write the results as JSON to this file")
    a = p.parse_args(argv)
    a.tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [m for ok, m in ((bool(a.tasks), "--tasks names no task"),
                           (a.batch_size >= 1, f"--batch-size={a.batch_size} must be >= 1"),
                           (a.limit is None or a.limit > 0, f"--limit={a.limit} must be > 0"),
                           (a.num_fewshot is None or a.num_fewshot >= 0, f"--num-fewshot={a.num_fewshot} must be >= 0"),
                           (a.max_length is None or a.max_length >= 2, f"--max-length={a.max_length} must be >= 2"),
                           (a.include_path is None or os.path.isdir(a.include_path),
                            f"--include-path={a.include_path} is not a folder"),
                           (not (a.no_builtin and a.include_path is None), "--no-builtin needs --include-path"))
           if not ok]
    if bad:
        p.error("; ".join(bad))
    return a


def table(section: dict) -> Table:
    t = Table(title="lm-eval")
    for col in ("task", "metric", "value", "± stderr", "samples"):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for name, row in section["tasks"].items():
        for metric, value in row.items():
            if "_stderr" in metric or metric == "samples":
                continue
            err = row.get(metric.replace("[", "_stderr[", 1) if "[" in metric else f"{metric}_stderr")
            t.add_row(name, metric, f"{value:.4f}", f"{err:.4f}" if isinstance(err, float) else "",
                      str(row.get("samples", "")))
    return t


def main(argv=None) -> int:
    a = _args(argv)
    if not available():
        print(f"error: lm-evaluation-harness is not installed: {INSTALL}", file=sys.stderr)
        return 2
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device={a.device}, but this machine has no usable CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    from .lm_harness import RunnerLM, run_tasks, unknown_tasks

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    console = Console()
    try:
        res, ckpt = trained_run(a.run_dir)
        data, config = res.get("data") or {}, res.get("config") or {}
        if not is_text(data):
            raise NoTrainedRun(f"{a.run_dir} trained on a synthetic task (its tokens are ids, not text): lm-eval's "
                               f"tasks are text")
        if (config.get("objective") or {}).get("name", "next_token") != "next_token":
            raise NoTrainedRun(f"{a.run_dir} is a masked-diffusion run (objective=mdlm): its scores are bounds, not "
                               f"the log-likelihoods lm-eval asks for")
        codec = Codec(data)
        unknown = unknown_tasks(a.tasks, a.include_path, not a.no_builtin)
        if unknown:
            raise NoTrainedRun(f"--tasks: {unknown} not found among lm-eval's tasks"
                               + (f" or those in {a.include_path}" if a.include_path else "")
                               + "; `lm-eval ls tasks` lists lm-eval's own")
        model = run_model(res, ckpt, data["vocab_size"], torch.device(a.device))
    except ActionableError as e:  # no results, no checkpoint, a damaged one, an unreadable tokenizer, a task
        print(f"error: {e}", file=sys.stderr)
        return 2
    lm = RunnerLM(model, codec, a.max_length or int(config.get("seq_len") or 256), a.batch_size,
                  config.get("precision", "fp32"))
    section = run_tasks(lm, a.tasks, a.num_fewshot, a.limit, a.include_path, not a.no_builtin, a.bootstrap_iters,
                        a.seed)
    console.print(table(section))
    if a.output:
        atomic_write_text(a.output, json.dumps(section, indent=2) + "\n")
        console.print(f"written: {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
