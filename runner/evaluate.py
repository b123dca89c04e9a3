"""Eval stage: the tasks listed in ``eval.tasks``.

* ``ppl`` (default): validation loss (nats/token), perplexity and bits per byte, beside the bits per byte of a unigram
  model fitted on the training split and scored on the same tokens (the floor a model that learned anything must
  beat). Bits per byte divide the summed loss by the UTF-8 bytes the scored tokens stand for, so byte-level and BPE
  models compare directly. With ``data=mqar`` the scored tokens are the answers of the test set and "bytes" are
  tokens (bits per answer).
* ``extrapolation``: the same at ``eval.extrapolation_factors`` (default 2x and 4x) times the training length, over
  the same validation tokens, beside 1x; ``loss_beyond`` is the loss at the positions past the training length only.
* ``positions``: loss and bits per byte by position bucket within the window (``eval.position_buckets`` buckets per
  training length; with ``extrapolation`` also the longer windows, buckets of the same width), saved in the results
  and plotted to ``loss_by_position.png`` in the run folder.
* ``mqar``: recall accuracy by number of key-value pairs and by query distance (runner/tasks/mqar.py).

The headline keys (``loss``, ``ppl``, ``bpb``, ``unigram_bpb``, ``tokens``) come from ``ppl``; when it is not asked
for they are taken from the training-length scores another task computed anyway (positions, extrapolation's 1x,
mqar's answers), so every eval section has them.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .data import unigram_log2p

TASKS = ("ppl", "extrapolation", "positions", "mqar")
IGNORE = -100
LN2 = math.log(2)


@torch.no_grad()
def per_position(model, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``score(logits, targets)`` at every position of the windows x (N, T), run in eval mode in batches of
    ``batch_size``; (N, T) in ``dtype`` on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch_size):
        logits, _ = model(x[i:i + batch_size])
        out.append(score(logits, y[i:i + batch_size]).to(dtype).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(y.shape, dtype=dtype)


def _nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none",
                           ignore_index=IGNORE).reshape(y.shape)


def token_nll(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Next-token cross-entropy (nats) at every position, (N, T) float64 on the CPU; 0 where y == -100."""
    return per_position(model, x, y, batch_size, _nll, torch.float64)


def mean_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) over all scored positions (targets of -100 are not scored)."""
    return float(token_nll(model, x, y, batch_size).sum()) / max(int((y != IGNORE).sum()), 1)


def _bytes_of(corpus, y: torch.Tensor) -> torch.Tensor:
    """UTF-8 bytes each target stands for (0 where not scored), int64."""
    mask = y != IGNORE
    b = torch.zeros(y.shape, dtype=torch.long)
    if getattr(corpus, "token_bytes", None) is None:
        b[mask] = 1
    else:
        b[mask] = corpus.token_bytes[y[mask].long()]
    return b


class _Scores:
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


def evaluate(model, corpus, cfg, device: torch.device, run_dir: Optional[str] = None,
             log: Callable[[str], None] = lambda s: None) -> dict:
    """Runs ``cfg.eval.tasks``; returns the eval section of results.json."""
    ev = cfg.eval
    tasks = [t for t in TASKS if t in ev.tasks]
    L = cfg.seq_len
    log2p = unigram_log2p(corpus.unigram_counts())
    cache: dict[int, object] = {}

    def scores(factor: int):
        """The validation windows of length factor*L scored; the same token budget at every length. A split too
        short for even one window gives the reason instead."""
        if factor not in cache:
            n = factor * L
            try:
                x, y = corpus.val_windows(n, ev.max_tokens)
            except ValueError as e:
                cache[factor] = str(e)
                return cache[factor]
            nll = token_nll(model, x.to(device), y.to(device), max(1, ev.batch_size // factor))
            cache[factor] = _Scores(nll, y, _bytes_of(corpus, y))
        return cache[factor]

    def headline() -> dict:
        s = scores(1)
        if isinstance(s, str):
            from .data import DataSettingError

            raise DataSettingError(s)
        return s.summary(log2p)

    out: dict = {"tasks": tasks}
    if "ppl" in tasks:
        out.update(headline())
    if "extrapolation" in tasks:
        rows = []
        for f in [1] + sorted(set(int(f) for f in ev.extrapolation_factors)):
            s = scores(f)
            row = {"factor": f, "seq_len": f * L}
            if isinstance(s, str):
                row.update(status="skipped", reason=s)
            else:
                row.update(status="ok", **s.summary())
                if f > 1:
                    row["loss_beyond"] = s.summary(positions=slice(L, None))["loss"]
            rows.append(row)
        out["extrapolation"] = rows
    if "positions" in tasks:
        out["positions"] = _positions(scores, L, ev, tasks)
        if run_dir:
            try:
                out["positions"]["plot"] = os.path.basename(plot_positions(out["positions"], L, run_dir,
                                                                           _label(cfg)))
            except Exception as e:  # a plot must never fail a run
                log(f"[yellow]loss_by_position.png skipped:[/] {type(e).__name__}: {e}")
    if "mqar" in tasks:
        from .tasks.mqar import evaluate_mqar

        out["mqar"] = evaluate_mqar(model, corpus.test, ev.batch_size, device)
    if "loss" not in out:  # headline numbers from what was scored anyway (cached), else scored now
        out.update(headline())
    return out


def _positions(scores, L: int, ev, tasks) -> dict:
    width = max(1, math.ceil(L / ev.position_buckets))
    factors = [1] + (sorted(set(int(f) for f in ev.extrapolation_factors)) if "extrapolation" in tasks else [])
    curves = []
    for f in factors:
        s = scores(f)
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
    return {"bucket_width": width, "train_seq_len": L, "curves": curves}


def _label(cfg) -> str:
    try:
        att, full = cfg.attention.name, cfg.full.name
        layout = cfg.pattern or cfg.ratio
        return f"{att} + {full} {layout}, {cfg.model.name}, trained at T={cfg.seq_len}"
    except Exception:  # noqa: BLE001
        return ""


def plot_positions(pos: dict, L: int, out_dir: str, label: str = "") -> str:
    """loss_by_position.png: loss (nats/token) against the position in the window, one line per window length,
    the training length marked."""
    from .plots import _figure, _save

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
    """Console lines summarising an eval section."""
    lines = [f"eval: loss {ev['loss']:.4f} nats/token, ppl {ev['ppl']:.3f}, bpb {ev['bpb']:.4f} "
             f"(unigram {ev['unigram_bpb']:.4f}), {ev['tokens']:,} tokens"]
    for r in ev.get("extrapolation", []):
        if r["status"] == "ok":
            extra = f", past the training length {r['loss_beyond']:.4f}" if "loss_beyond" in r else ""
            lines.append(f"  extrapolation {r['factor']}x (n={r['seq_len']}): loss {r['loss']:.4f}, bpb "
                         f"{r['bpb']:.4f}{extra}")
        else:
            lines.append(f"  extrapolation {r['factor']}x (n={r['seq_len']}): skipped ({r['reason']})")
    if "positions" in ev:
        c = ev["positions"]["curves"]
        if c:
            first = c[0]
            lines.append(f"  positions: loss {first['loss'][0]:.3f} in the first bucket -> {first['loss'][-1]:.3f} "
                         f"in the last ({len(first['loss'])} buckets of {ev['positions']['bucket_width']})"
                         + (f", plot {ev['positions']['plot']}" if ev["positions"].get("plot") else ""))
    if "mqar" in ev:
        m = ev["mqar"]
        per = ", ".join(f"{r['num_kv_pairs']} pairs {r['accuracy']:.3f}" for r in m["by_num_kv_pairs"])
        lines.append(f"  mqar: accuracy {m['accuracy']:.3f} ({per})")
    return lines
