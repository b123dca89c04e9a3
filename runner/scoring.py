"""Scoring a model's outputs position by position, in batches, in eval mode: the one loop behind the validation
loss, the periodic validation of training and the synthetic tasks' accuracies. Targets of -100 (``IGNORE``) are
not scored."""
from __future__ import annotations

import math
from typing import Callable

import torch

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
    return torch.cat(out) if out else torch.zeros(x.shape, dtype=dtype)


def token_nll(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's objective's loss (nats) at every position (runner/objectives: for next-token prediction the
    cross-entropy of each token given the ones before), (N, T) float64 on the CPU; 0 where y == -100."""
    from . import objectives

    obj = objectives.get(getattr(model, "objective", "next_token"))
    views = getattr(obj, "eval_views", None)
    if views is None:
        return per_position(model, x, y, batch_size, obj.token_scores, torch.float64)
    total, n = torch.zeros(y.shape, dtype=torch.float64), 0
    for inputs, targets in views(x, y, vocab_size=model.vocab_size, settings=model.objective_settings):
        total += per_position(model, inputs, targets, batch_size, obj.token_scores, torch.float64)
        n += 1
    return total / max(n, 1)


def mean_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean loss (nats/token) over all scored positions (targets of -100 are not scored)."""
    return float(token_nll(model, x, y, batch_size).sum()) / max(int((y != IGNORE).sum()), 1)
