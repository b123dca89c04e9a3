"""``ppl``: validation loss (nats per token), perplexity and bits per byte at the training length, beside the bits
per byte of a unigram model fitted on the training split and scored on the same tokens: the floor a model that
learned anything must beat. Bits per byte divide the summed loss by the UTF-8 bytes the scored tokens stand for, so
byte-level and BPE models compare directly; with synthetic data (no bytes) they are bits per scored token."""
from __future__ import annotations

NEEDS = None  # any data: its validation windows at the training length


def task_problems(c) -> list[str]:
    return []


def run(ctx) -> dict:
    return ctx.headline()


def describe(ev: dict) -> list[str]:
    return []  # the headline line of the eval stage says it (runner/evaluate.describe)
