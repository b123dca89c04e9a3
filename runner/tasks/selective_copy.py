"""``data=selective_copy``: selective copying (Gu & Dao, "Mamba", 2023, section 4.1.1; the MAD suite, Poli et al.
2024): ``tokens`` data tokens scattered at random positions among blanks, then a delimiter, then the data tokens
in their order. A time-invariant linear recurrence cannot skip the blanks by content; input-dependent gates and
attention can.

Layout of an example of length L (n = ``tokens``)::

    0 0 d1 0 0 0 d2 0 ... 0 dn 0   DELIM d1 d2 ... d_{n-1}
    \\______ L - n tokens ______/  answers: d1 at DELIM, d_{i+1} at d_i

Data tokens are 1..``vocab`` (repeats allowed), 0 is the blank (and the padding), DELIM = vocab + 1. The answers
are teacher-forced: each is predicted from the true ones before it. Tag ``index`` (i of the answer d_i, in
power-of-two buckets).
"""
from __future__ import annotations

import torch

from . import synthetic
from ..common import whole
from ..scoring import IGNORE
from .synthetic import Examples, Task, as_examples


class SelectiveCopy(Task):
    name = "selective_copy"
    TAGS = {"index": "log2"}
    OPTIONS = {"tokens": 16, "vocab": 16, "test_lengths": None}

    @property
    def vocab_size(self) -> int:
        return int(self.options["vocab"]) + 2

    def min_length(self) -> int:
        return 2 * int(self.options["tokens"])

    def problems(self) -> list[str]:
        out = []
        whole(out, "data.options.tokens", self.options["tokens"], 1, 1 << 16, "16", " (data tokens to copy)")
        whole(out, "data.options.vocab", self.options["vocab"], 1, 1 << 20, "16", " (distinct data tokens)")
        return out

    def describe(self) -> str:
        return f"selective copying ({self.options['tokens']} tokens of {self.options['vocab']})"

    def generate(self, n: int, length: int, g: torch.Generator, split: str) -> Examples:
        k, V = int(self.options["tokens"]), int(self.options["vocab"])
        R = length - k  # the scattered region
        data = torch.randint(1, V + 1, (n, k), generator=g)
        where = torch.rand(n, R, generator=g).argsort(1)[:, :k].sort(1).values  # positions in order
        x = torch.zeros(n, length, dtype=torch.long)
        x.scatter_(1, where, data)
        x[:, R] = V + 1
        x[:, R + 1:] = data[:, :-1]
        y = torch.full((n, length), IGNORE, dtype=torch.long)
        y[:, R:] = data
        tag = torch.zeros(n, length, dtype=torch.long)
        tag[:, R:] = torch.arange(1, k + 1)
        return as_examples(x, y, index=tag)


TASK = SelectiveCopy
PROVIDES, TOKENIZERS = synthetic.PROVIDES, synthetic.TOKENIZERS

source_problems, load, vocab_size, notes = synthetic.registry_functions(TASK)
