"""What the generated tasks share (state tracking, multi-hop recall, selective copying, needle in a haystack):
examples with answers, a data source built from a task, and the ``accuracy`` evaluation.

A task (a subclass of :class:`Task`, one module each under runner/tasks) knows its vocabulary and how to generate
``n`` examples of exactly ``length`` tokens from a generator. Every example has targets only at its answers (-100,
``F.cross_entropy``'s ``ignore_index``, everywhere else, so training and scoring see only the answers) and, at each
answer, the values of the task's *tags*: the properties that make an answer hard (its position, the number of
hops, the needle's depth), which the evaluation breaks accuracy down by.

:class:`TaskData` turns a task into a data source (the interface of :class:`runner.corpus.Corpus`): ``data.n_train``
training examples drawn from seed ``2 * data.seed`` with lengths from the task's ``train_lengths`` (mixed in equal
shares with ``data.mix_lengths``, each padded on the right to ``seq_len``), and ``data.n_test`` test examples for each
of the task's test lengths from seed ``2 * data.seed + 1``. A test example whose tokens equal a training example's
is dropped (counted in ``info()``), so train and test are disjoint as sets, not only by seed.

The evaluation task ``accuracy`` (``eval.tasks=[ppl,accuracy]``, any of these sources) scores greedy predictions
(arg-max over the whole vocabulary) at every answer of every test set: per answer, per example (every answer of
the example right: "exact"), by test length and by tag, with the test sets longer than ``seq_len`` measuring
extrapolation beyond the training length.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from .. import recursion
from ..common import answer_scores, whole
from ..scoring import IGNORE, per_position

GEN_VERSION = 1  # bump when a generator's output changes (it is part of every task's fingerprint)


@dataclass
class Examples:
    """``n`` examples of one length ``T`` (before padding)."""

    x: torch.Tensor  # (N, T) int32 inputs
    y: torch.Tensor  # (N, T) int32 targets: IGNORE except at answers
    tags: dict = field(default_factory=dict)  # tag -> (N, T) int32, the property of each answer (0 elsewhere)
    length: Optional[torch.Tensor] = None  # (N,) int32 tokens before padding; None = all T

    def __post_init__(self):
        if self.length is None:
            self.length = torch.full((self.x.shape[0],), self.x.shape[1], dtype=torch.int32)

    def __len__(self) -> int:
        return self.x.shape[0]

    def padded(self, T: int, pad: int) -> "Examples":
        """Padded on the right to ``T`` tokens with input ``pad``, target IGNORE and tag 0."""
        extra = T - self.x.shape[1]
        if extra < 0:
            raise ValueError(f"examples of {self.x.shape[1]} tokens do not fit {T}")
        if extra == 0:
            return self
        n = len(self)
        cat = lambda t, v: torch.cat([t, torch.full((n, extra), v, dtype=t.dtype)], 1)
        return Examples(cat(self.x, pad), cat(self.y, IGNORE), {k: cat(v, 0) for k, v in self.tags.items()},
                        self.length)

    def take(self, idx: torch.Tensor) -> "Examples":
        return Examples(self.x[idx], self.y[idx], {k: v[idx] for k, v in self.tags.items()}, self.length[idx])

    @staticmethod
    def cat(parts: Sequence["Examples"]) -> "Examples":
        return Examples(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                        {k: torch.cat([p.tags[k] for p in parts]) for k in parts[0].tags},
                        torch.cat([p.length for p in parts]))


def as_examples(x: torch.Tensor, y: torch.Tensor, **tags: torch.Tensor) -> Examples:
    """Examples from long tensors (the generators' working dtype), stored as int32; every answer must have a target
    in [0, 2^31) and every tag must be 0 where there is no answer (checked: a generator's bug, not the user's)."""
    scored = y != IGNORE
    for name, t in tags.items():
        if t.shape != y.shape or bool((t[~scored] != 0).any()):
            raise AssertionError(f"tag {name!r} must have y's shape and be 0 where nothing is scored")
    i32 = torch.int32
    return Examples(x.to(i32), y.to(i32), {k: v.to(i32) for k, v in tags.items()})


class Task:
    """A generated task. Subclasses set ``name``, ``TAGS`` ({tag: "value" (report each value) | "log2" (report
    power-of-two buckets)}), ``OPTIONS`` ({data.options key: default}) and implement :meth:`generate`; they may
    override :meth:`problems`, :meth:`train_lengths`, :meth:`test_lengths`, :meth:`describe`."""

    name = "?"
    TAGS: dict = {}
    OPTIONS: dict = {}
    TEST_FACTORS = (1,)  # default test lengths: these multiples of seq_len

    def __init__(self, options, seq_len: int):
        from omegaconf import DictConfig, OmegaConf

        if isinstance(options, DictConfig):  # plain values: the options go into results.json
            options = OmegaConf.to_container(options, resolve=True)
        self.seq_len = seq_len
        self.options = {**self.OPTIONS, **dict(options or {})}

    # ---- what a subclass provides
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def pad(self) -> int:
        """The input token after an example's end (never an answer)."""
        return 0

    def min_length(self) -> int:
        """The shortest example the settings allow."""
        return 1

    def generate(self, n: int, length: int, g: torch.Generator, split: str) -> Examples:
        """``n`` examples of exactly ``length`` tokens drawn from ``g``; ``split`` is "train" or "test" (a task
        whose examples embed outside text takes it from that split)."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """What is wrong with the options (each message names the key, the value and what would be right)."""
        return []

    def describe(self) -> str:
        return self.name

    # ---- lengths
    def train_lengths(self, mix: bool) -> list[int]:
        """Training example lengths, mixed in equal shares: seq_len, and with ``mix`` also seq_len/2 and seq_len/4
        (those the settings allow)."""
        T = self.seq_len
        if not mix:
            return [T]
        return [L for L in (T, T // 2, T // 4) if L >= self.min_length()] or [T]

    def test_lengths(self) -> list[int]:
        given = self.options.get("test_lengths")
        if given:
            return sorted({int(v) for v in given})
        return [f * self.seq_len for f in self.TEST_FACTORS]

    def option_problems(self) -> list[str]:
        """Unknown option keys, and test lengths that are not whole numbers the task allows."""
        out = []
        unknown = sorted(set(self.options) - set(self.OPTIONS))
        if unknown:
            out.append(f"data.options: {unknown} are not options of data={self.name}; its options are "
                       f"{sorted(self.OPTIONS)}")
        given = self.options.get("test_lengths")
        if given is not None:
            ok = isinstance(given, (list, tuple)) and given and all(isinstance(v, int) and not isinstance(v, bool)
                                                                      for v in given)
            if not ok:
                out.append(f"data.options.test_lengths={given} must be null (the task's default) or a non-empty "
                           f"list of whole numbers, e.g. [{self.seq_len}, {2 * self.seq_len}]")
        return out

    def length_problems(self) -> list[str]:
        """Test lengths shorter than the settings allow (asked once the other options are sound)."""
        given = self.options.get("test_lengths")
        if given and min(given) < self.min_length():
            return [f"data.options.test_lengths={list(given)}: data={self.name} with these settings needs examples "
                    f"of at least {self.min_length()} tokens"]
        return []


def _shares(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _row_key(e: Examples, i: int) -> bytes:
    """Example i's tokens before its padding, as a hashable key."""
    return bytes(e.x[i, :int(e.length[i])].numpy().tobytes())


class ExampleSource:
    """What a source of examples with answers shares (``self.train`` with x and y, ``self.vocab_size``): random
    training batches and the counts of the training answers."""

    token_bytes = None  # synthetic tokens: "bits per byte" is bits per scored token

    def batches(self, batch: int, seq_len: int, generator: torch.Generator) -> Iterator:
        """Endless (x, y) batches of training examples drawn with ``generator``."""
        n = len(self.train)
        while True:
            idx = torch.randint(0, n, (batch,), generator=generator)
            yield self.train.x[idx].long(), self.train.y[idx].long()

    def unigram_counts(self) -> torch.Tensor:
        """Counts of the training answers (the only scored tokens)."""
        ans = self.train.y[self.train.y != IGNORE].long()
        return torch.bincount(ans, minlength=self.vocab_size)


class TaskData(ExampleSource):
    """The data source of a generated task (the interface of :class:`runner.corpus.Corpus`; module docstring)."""

    def __init__(self, task: Task, d, seq_len: int):
        self.task, self.seq_len = task, seq_len
        self.vocab_size = task.vocab_size
        g = torch.Generator().manual_seed(2 * int(d.seed))
        lengths = task.train_lengths(bool(d.mix_lengths))
        parts = [task.generate(n, L, g, "train").padded(seq_len, task.pad)
                 for L, n in zip(lengths, _shares(int(d.n_train), len(lengths))) if n]
        self.train = Examples.cat(parts)
        self.train.tags = {}  # only the test sets are broken down by tag: no need to hold them for training
        seen = {_row_key(self.train, i) for i in range(len(self.train))}
        g = torch.Generator().manual_seed(2 * int(d.seed) + 1)
        self.tests: dict[int, Examples] = {}
        self.dropped: dict[int, int] = {}
        for L in task.test_lengths():
            t = task.generate(int(d.n_test), L, g, "test")
            keep = torch.tensor([_row_key(t, i) not in seen for i in range(len(t))], dtype=torch.bool)
            self.dropped[L] = int((~keep).sum())
            self.tests[L] = t.take(keep.nonzero().flatten())
        h = hashlib.sha256(f"{task.name}-v{GEN_VERSION}".encode())
        for t in (self.train.x, self.train.y, *(s.x for s in self.tests.values()), *(s.y for s in self.tests.values())):
            h.update(t.numpy().tobytes())
        self.fingerprint = h.hexdigest()[:16]
        self.description = (f"{task.describe()}: {len(self.train):,} train examples of lengths {lengths}, "
                            f"{int(d.n_test):,} test examples at each of the lengths {list(self.tests)}, seed {d.seed}")

    def val_windows(self, seq_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first test examples of the longest test length up to ``seq_len`` (padded to it), covering
        ``max_tokens`` positions."""
        fit = [L for L in self.tests if L <= seq_len and len(self.tests[L])]
        if not fit:
            raise ValueError(f"data={self.task.name} has no test examples of at most {seq_len} tokens (test lengths "
                             f"{list(self.tests)})")
        s = self.tests[max(fit)].padded(seq_len, self.task.pad)
        rows = min(len(s), max(1, math.ceil(max_tokens / seq_len)))
        return s.x[:rows].long(), s.y[:rows].long()

    def info(self) -> dict:
        return {"source": self.description, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "tokenizer": self.task.name, "train_examples": len(self.train),
                "train_tokens": int(self.train.x.numel()), "train_answers": int((self.train.y != IGNORE).sum()),
                "test_examples": {str(L): len(s) for L, s in self.tests.items()},
                "test_dropped_as_in_training": {str(L): n for L, n in self.dropped.items()},
                "val_tokens": sum(int(s.x.numel()) for s in self.tests.values()),
                "options": dict(self.task.options)}

    def summary(self) -> str:
        return f"{int((self.train.y != IGNORE).sum()):,} scored training answers"


# ------------------------------------------------------------------------------------------- the evaluation


def power_of_two_edges(max_value: int) -> list[int]:
    """Power-of-two bucket edges 1, 2, 4, ... covering values up to ``max_value`` (a bucket is [edge, next))."""
    edges = [1]
    while edges[-1] <= max_value:
        edges.append(edges[-1] * 2)
    return edges


def _buckets(values: torch.Tensor, ok: torch.Tensor, kind: str) -> list[dict]:
    out = []
    if not values.numel():
        return out
    if kind == "value":
        for v in sorted(set(values.tolist())):
            m = values == v
            out.append({"value": v, "accuracy": float(ok[m].mean()), "answers": int(m.sum())})
        return out
    edges = power_of_two_edges(int(values.max()))
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (values >= lo) & (values < hi)
        if m.any():
            out.append({"min": lo, "max": hi - 1, "accuracy": float(ok[m].mean()), "answers": int(m.sum())})
    return out


@torch.no_grad()
def evaluate_task(model, data: TaskData, batch_size: int, device: torch.device) -> dict:
    """Greedy accuracy on every test set: per answer, per example (exact), by length and by tag."""
    by_length = []
    for L, s in data.tests.items():
        if not len(s):
            continue
        bs = max(1, batch_size * data.seq_len // max(L, data.seq_len))
        x, y = s.x.long().to(device), s.y.long().to(device)
        steps = None
        if getattr(model, "recursion", None) is not None:  # recursion=trm: after each supervision step, and halted
            steps, correct = recursion.by_supervision_step(model, x, y, bs)
        else:
            correct = per_position(model, x, y, bs, lambda logits, y: (logits.argmax(-1) == y) & (y != IGNORE),
                                   torch.bool)
        scored = s.y != IGNORE
        ok = correct[scored].double()
        row = {"length": L, **answer_scores(correct, scored), "examples": len(s),
               "answers": int(ok.numel()), "beyond_training": L > data.seq_len,
               "by": {t: _buckets(s.tags[t][scored].long(), ok, kind) for t, kind in data.task.TAGS.items()}}
        if hasattr(data.task, "baseline"):  # a solver without learning on the same examples (sudoku: propagation)
            row["baseline"] = data.task.baseline(s)
        if steps is not None:
            row["by_supervision_step"] = steps
        by_length.append(row)
    at_train = [r for r in by_length if r["length"] <= data.seq_len]
    head = max(at_train, key=lambda r: r["length"]) if at_train else (by_length[0] if by_length else None)
    return {"task": data.task.name, "train_length": data.seq_len,
            "accuracy": head["accuracy"] if head else float("nan"), "exact": head["exact"] if head else float("nan"),
            "accuracy_longest": by_length[-1]["accuracy"] if by_length else float("nan"),
            "by_length": by_length}


# ------------------------------------------------------------------ what every task module hands the registries

PROVIDES = {"answers"}  # the test sets the ``accuracy`` evaluation scores
TOKENIZERS = ("bytes",)  # synthetic token ids (or raw bytes): no tokenizer applies


def source_problems(cls, c) -> list[str]:
    """The problems of data=<task>'s settings (the shared counts and the task's options) against seq_len."""
    d, out = c.data, []
    whole(out, "data.n_train", d.n_train, 1, 1 << 26, "100000", " (training examples)")
    whole(out, "data.n_test", d.n_test, 1, 1 << 20, "1000", " (test examples per test length)")
    whole(out, "data.seed", d.seed, 0, (2**32 - 2) // 2, "0", " (training examples come from 2*seed, test "
                                                                  "examples from 2*seed+1)")
    if not isinstance(c.seq_len, int) or c.seq_len < 1:
        return out  # the schema's own check says what is wrong with seq_len
    task = cls(d.options, c.seq_len)
    out += task.option_problems()
    if not out:
        out += task.problems()
    if not out:
        out += task.length_problems()
    if not out and c.seq_len < task.min_length():
        out.append(f"seq_len={c.seq_len}: data={cls.name} with these settings needs examples of at least "
                   f"{task.min_length()} tokens; use seq_len >= {task.min_length()}")
    return out


def load(cls, d, seq_len: Optional[int]) -> TaskData:
    if seq_len is None:
        raise ValueError(f"data={cls.name} needs the sequence length (the top-level seq_len)")
    return TaskData(cls(d.options, seq_len), d, seq_len)


def vocab_size(cls, c) -> int:
    return cls(c.data.options, c.seq_len).vocab_size


def notes(cls, c) -> list[str]:
    if "eval" in c.stages and "accuracy" not in c.eval.tasks:
        return [f"note: add eval.tasks=[ppl,accuracy] for data={cls.name}'s accuracy by length and by "
                f"{', '.join(cls.TAGS) or 'length'}"]
    return []


def registry_functions(cls):
    """A task module's ``source_problems(c)``, ``load(d, seq_len, log)``, ``vocab_size(c)`` and ``notes(c)``
    (runner/sources), for its task class ``cls``."""
    return (lambda c: source_problems(cls, c), lambda d, seq_len=None, log=None: load(cls, d, seq_len),
            lambda c: vocab_size(cls, c), lambda c: notes(cls, c))
