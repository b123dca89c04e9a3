"""Eval stage: the tasks of ``eval.tasks``, each a module of the registry runner/evals (ppl, extrapolation,
positions, and the synthetic tasks' scoring such as runner/tasks/mqar.py), run in the registry's order.

The headline keys (``loss``, ``ppl``, ``bpb``, ``unigram_bpb``, ``tokens``) come from ``ppl``; when it is not asked
for they are taken from the training-length scores another task computed anyway (positions, extrapolation's 1x,
mqar's answers), so every eval section has them.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from rich.console import Console

from . import evals, objectives
from .progress import bar
from .corpus import unigram_log2p
from .scoring import IGNORE, LN2, mean_loss, per_position, token_nll  # noqa: F401 - the scoring functions' home

__all__ = ["Context", "evaluate", "describe", "mean_loss", "token_nll", "per_position", "IGNORE"]


def _bytes_of(corpus, y: torch.Tensor) -> torch.Tensor:
    """UTF-8 bytes each target stands for (0 where not scored), int64."""
    mask = y != IGNORE
    b = torch.zeros(y.shape, dtype=torch.long)
    if getattr(corpus, "token_bytes", None) is None:
        b[mask] = 1
    else:
        b[mask] = corpus.token_bytes[y[mask].long()]
    return b


class Scores:
    """Per-token losses of the validation windows at one length."""

    def __init__(self, nll: torch.Tensor, y: torch.Tensor, nbytes: torch.Tensor):
        self.nll, self.y, self.bytes = nll, y, nbytes
        self.mask = y != IGNORE

    def summary(self, log2p: Optional[torch.Tensor] = None, positions: slice = slice(None)) -> dict:
        m = self.mask[:, positions]
        tokens = int(m.sum())
        total = float(self.nll[:, positions][m].sum())
        nbytes = int(self.bytes[:, positions].sum())
        loss = total / max(tokens, 1)
        out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": total / LN2 / max(nbytes, 1),
               "tokens": tokens, "bytes": nbytes}
        if log2p is not None:
            out["unigram_bpb"] = float(-log2p[self.y[:, positions][m].long()].sum()) / max(nbytes, 1)
        return out


class Context:
    """What a task's ``run`` gets: the model, the data, the config, and the per-token scores of the validation
    windows at ``factor`` times the training length, computed once and shared by the tasks that ask."""

    def __init__(self, model, data, cfg, device: torch.device, run_dir: Optional[str], log: Callable[[str], None],
                 console=None):
        self.model, self.data, self.cfg, self.device, self.run_dir, self.log = model, data, cfg, device, run_dir, log
        self.console = console or Console(quiet=True)  # where the progress bars go
        self.tasks = [t for t in evals.names() if t in cfg.eval.tasks]
        self.log2p = unigram_log2p(data.unigram_counts())
        self._cache: dict[int, object] = {}

    def scores(self, factor: int):
        """The validation windows of length factor * seq_len scored, the same token budget at every length; a
        split too short for even one window gives the reason (a str) instead."""
        if factor not in self._cache:
            ev, n = self.cfg.eval, factor * self.cfg.seq_len
            try:
                x, y = self.data.val_windows(n, ev.max_tokens)
            except ValueError as e:
                self._cache[factor] = str(e)
                return self._cache[factor]
            views = getattr(objectives.get(getattr(self.model, "objective", "next_token")), "eval_views", None)
            with bar(self.console, f"eval n={n}", x.shape[0] if views is None else None) as advance:
                nll = token_nll(self.model, x.to(self.device), y.to(self.device), max(1, ev.batch_size // factor),
                                on_rows=advance)
            self._cache[factor] = Scores(nll, y, _bytes_of(self.data, y))
        return self._cache[factor]

    def headline(self) -> dict:
        s = self.scores(1)
        if isinstance(s, str):
            from .corpus import DataSettingError

            raise DataSettingError(s)
        # bound: the scores are an upper bound on the loss (masked diffusion's NELBO), not the loss itself
        objective = objectives.get(getattr(self.model, "objective", "next_token"))
        return {**s.summary(self.log2p), "bound": bool(objective.BOUND)}

    def label(self) -> str:
        c = self.cfg
        try:
            return (f"{c.attention.name} + {c.full.name} {c.pattern or c.ratio}, {c.model.name}, trained at "
                    f"T={c.seq_len}")
        except Exception:  # noqa: BLE001
            return ""


def evaluate(model, corpus, cfg, device: torch.device, run_dir: Optional[str] = None,
             log: Callable[[str], None] = lambda s: None, console=None) -> dict:
    """Runs ``cfg.eval.tasks``; returns the eval section of results.json. ``console``: where progress bars go."""
    ctx = Context(model, corpus, cfg, device, run_dir, log, console)
    out: dict = {"tasks": ctx.tasks}
    for name in ctx.tasks:
        out.update(evals.get(name).run(ctx))
    if "loss" not in out:  # headline numbers from what was scored anyway (cached), else scored now
        out.update(ctx.headline())
    return out


def describe(ev: dict) -> list[str]:
    """Console lines summarising an eval section: the headline, then each task's own lines."""
    bound = "<= " if ev.get("bound") else ""
    lines = [f"eval: loss {bound}{ev['loss']:.4f} nats/token, ppl {bound}{ev['ppl']:.3f}, bpb {bound}{ev['bpb']:.4f} "
             f"(unigram {ev['unigram_bpb']:.4f}), {ev['tokens']:,} tokens"
             + (" (upper bounds: the NELBO)" if bound else "")]
    for name in ev.get("tasks", []):
        lines += evals.get(name).describe(ev)
    return lines
