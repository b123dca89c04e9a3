"""Eval stage: validation loss, perplexity and bits-per-byte, beside the bits-per-byte of a unigram model fitted
on the training split and scored on the same tokens (the floor a model that learned anything must beat)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import Corpus, eval_windows, unigram_bits_per_token


@torch.no_grad()
def mean_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) over all windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        logits, _ = model(x[i:i + batch_size])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y[i:i + batch_size].reshape(-1),
                               reduction="sum")
        total += loss.item()
        count += y[i:i + batch_size].numel()
    model.train(was_training)
    return total / count


def evaluate(model, corpus: Corpus, cfg, device: torch.device) -> dict:
    x, y = eval_windows(corpus.val, cfg.seq_len, cfg.eval.max_tokens)
    loss = mean_loss(model, x.to(device), y.to(device), cfg.eval.batch_size)
    bytes_per_token = 1.0  # byte-level tokens
    bpb = loss / math.log(2) / bytes_per_token
    return {"loss": loss, "ppl": math.exp(loss), "bpb": bpb, "tokens": int(y.numel()),
            "unigram_bpb": unigram_bits_per_token(corpus.train, y.flatten(), corpus.vocab_size) / bytes_per_token}
