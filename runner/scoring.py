"""Scoring a model's outputs position by position, in batches, in eval mode: the one loop behind the validation
loss, the periodic validation of training and the synthetic tasks' accuracies. Targets of -100 (``IGNORE``) are
not scored."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

IGNORE = -100
LN2 = math.log(2)


@torch.no_grad()
def per_position(model, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dtype: torch.dtype,
                 on_rows: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """``score(logits, targets)`` at every position of the windows x (N, T), run in eval mode in batches of
    ``batch_size``; (N, T) in ``dtype`` on the CPU. ``on_rows(k)`` is told after each batch of k windows."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch_size):
        logits, _ = model(x[i:i + batch_size])
        out.append(score(logits, y[i:i + batch_size]).to(dtype).cpu())
        if on_rows is not None:
            on_rows(out[-1].shape[0])
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(x.shape, dtype=dtype)


def token_nll(model, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              on_rows: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """The model's objective's loss (nats) at every position (runner/objectives: for next-token prediction the
    cross-entropy of each token given the ones before), (N, T) float64 on the CPU; 0 where y == -100. ``on_rows``:
    as in :func:`per_position` (an objective that scores several views of each window tells it once per view)."""
    from . import objectives

    obj = objectives.get(getattr(model, "objective", "next_token"))
    views = getattr(obj, "eval_views", None)
    if views is None:
        return per_position(model, x, y, batch_size, obj.token_scores, torch.float64, on_rows)
    total, n = torch.zeros(y.shape, dtype=torch.float64), 0
    for inputs, targets in views(x, y, vocab_size=model.vocab_size, settings=model.objective_settings):
        total += per_position(model, inputs, targets, batch_size, obj.token_scores, torch.float64, on_rows)
        n += 1
    return total / max(n, 1)


def mean_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean loss (nats/token) over all scored positions (targets of -100 are not scored)."""
    return float(token_nll(model, x, y, batch_size).sum()) / max(int((y != IGNORE).sum()), 1)


@torch.no_grad()
def judge_nll(judge, prompt: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (nats/token) of each sample (B, L) after its prompt (B, P), under the judge."""
    seq = torch.cat([prompt, sample], 1)
    logits = judge(seq[:, :-1])[0][:, prompt.shape[1] - 1:, :judge.vocab_size].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), sample.reshape(-1), reduction="none")
    return nll.view(sample.shape).mean(1)


def unigram_entropy(sample: torch.Tensor) -> torch.Tensor:
    """The entropy (bits) of each sample's (B, L) token histogram."""
    out = []
    for row in sample:
        p = torch.bincount(row.long().cpu()).double()
        p = p[p > 0] / row.numel()
        out.append(float(-(p * p.log2()).sum()))
    return torch.tensor(out, dtype=torch.float64)


def sample_quality(samples: torch.Tensor, prompt: torch.Tensor, judge=None) -> dict:
    """Entropy (and judge perplexity, with a judge) of samples, averaged over them."""
    out = {"entropy_bits": float(unigram_entropy(samples).mean())}
    if judge is not None:
        out["judge_ppl"] = math.exp(float(judge_nll(judge, prompt.to(next(judge.parameters()).device),
                                                    samples.to(next(judge.parameters()).device)).mean()))
    return out
