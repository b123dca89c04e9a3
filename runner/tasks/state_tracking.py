"""``data=state_tracking``: word problems of a finite group, the state-tracking tasks of Grazzi et al., "Unlocking
State-Tracking in Linear RNNs Through Negative Eigenvalues" (ICLR 2025) and Merrill et al., "The Illusion of State
in State-Space Models" (ICML 2024).

An example is a word a_1 a_2 ... a_T of group elements drawn uniformly; the answer at every position t is the
running product p_t = a_t . p_{t-1} (p_0 the identity), so each answer depends on the whole prefix:

* ``group=parity``: Z_2, the elements 0 and 1, the answer the parity of the bits so far (the simplest task a
  linear RNN whose transitions have eigenvalues in [0, 1] cannot solve at any length: Grazzi et al., Thm. 1);
* ``group=s3`` / ``group=s5``: the symmetric groups on 3 and 5 points (6 and 120 elements, permutations in
  lexicographic order, composition (a . p)(i) = a(p(i))); S5 is not solvable, so by Merrill et al. no model
  of constant depth with linear-time transitions that are diagonal or positive (nor a transformer) tracks it
  at every length; products of Householder-like transitions with negative eigenvalues can.

Tokens: element i is token i, inputs and answers alike; token |G| pads. Tag ``position`` (t, reported in power-of-
two buckets). The test sets are at 1x, 2x and 4x the training length by default (``test_lengths``), so the report
shows whether a model learned the group or the training length.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
import torch

from . import synthetic
from .synthetic import Examples, Task, as_examples

GROUPS = ("parity", "s3", "s5")


@lru_cache(maxsize=None)
def elements(group: str) -> tuple:
    """The group's elements as permutation tuples, identity first (parity: Z_2 as the permutations of 2 points)."""
    points = {"parity": 2, "s3": 3, "s5": 5}[group]
    return tuple(itertools.permutations(range(points)))


@lru_cache(maxsize=None)
def table(group: str) -> torch.Tensor:
    """(|G|, |G|) int64: table[a, p] = the index of a . p, (a . p)(i) = a(p(i))."""
    els = elements(group)
    index = {e: i for i, e in enumerate(els)}
    return torch.tensor([[index[tuple(a[p[i]] for i in range(len(a)))] for p in els] for a in els])


class StateTracking(Task):
    name = "state_tracking"
    TAGS = {"position": "log2"}
    OPTIONS = {"group": "parity", "test_lengths": None}
    TEST_FACTORS = (1, 2, 4)

    @property
    def group(self) -> str:
        return self.options["group"]

    @property
    def vocab_size(self) -> int:
        return len(elements(self.group)) + 1

    @property
    def pad(self) -> int:
        return len(elements(self.group))

    def problems(self) -> list[str]:
        if self.group not in GROUPS:
            return [f"data.options.group={self.group!r} is not a group this task knows; allowed: {list(GROUPS)}"]
        return []

    def describe(self) -> str:
        return f"state tracking ({self.group}, {len(elements(self.group))} elements)"

    def generate(self, n: int, length: int, g: torch.Generator, split: str) -> Examples:
        tab = table(self.group)
        a = torch.randint(0, tab.shape[0], (n, length), generator=g)
        y = torch.empty_like(a)
        p = torch.zeros(n, dtype=torch.long)  # the identity
        for t in range(length):
            p = tab[a[:, t], p]
            y[:, t] = p
        position = torch.arange(1, length + 1).expand(n, length)
        return as_examples(a, y, position=position)


TASK = StateTracking
PROVIDES, TOKENIZERS = synthetic.PROVIDES, synthetic.TOKENIZERS

source_problems, load, vocab_size, notes = synthetic.registry_functions(TASK)
