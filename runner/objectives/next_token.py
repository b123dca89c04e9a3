"""Next-token prediction: autoregressive language modelling, the cross-entropy of each token given the ones before
it (GPT-2, Llama, and the published hybrids this runner compares). Validation scores are the exact loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CAUSAL = True
BOUND = False
IGNORE = -100


def prepare(x: torch.Tensor, y: torch.Tensor, generator=None, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """The data's pairs as they are: inputs x, targets y (x shifted by one)."""
    return x, y


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) over the scored targets, in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def token_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) at every position, 0 where the target is not scored."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
                           ignore_index=IGNORE).reshape(targets.shape)
