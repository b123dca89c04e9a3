"""Evaluation tasks: ``eval.tasks`` names -> the module that runs each. One module per task, registered here by one
line; they run in this order.

A task module defines:

* ``NEEDS``: what the data must offer (a member of the source's ``PROVIDES``, runner/sources), or None (any);
* ``task_problems(c) -> list[str]``: the problems of its own settings in the validated config ``c`` (a task
  registered beyond the built-in ones keeps them under ``eval.options.<name>``);
* ``run(ctx) -> dict``: what it adds to the eval section of results.json (:class:`runner.evaluate.Context`
  gives the model, the data, the config and the per-token scores of the validation windows at any length);
* ``describe(ev) -> list[str]``: its console lines, from the eval section;
* optionally ``CSV``: ``{column: function(eval section) -> value}`` for the sweep's summary.csv, and
  ``report_lines(jobs, table, fmt) -> list[str]``: its section of the sweep's report.md.
"""
from __future__ import annotations

from ..common import lazy_registry

REGISTRY: dict[str, str] = {
    "ppl": "runner.evals.ppl",
    "extrapolation": "runner.evals.extrapolation",
    "positions": "runner.evals.positions",
    "lm_eval": "runner.evals.lm_eval",
    "mqar": "runner.tasks.mqar",
    "accuracy": "runner.tasks.accuracy",
}


names, get = lazy_registry(REGISTRY, "eval.tasks: {name!r} is not a known task; allowed: {allowed}")
