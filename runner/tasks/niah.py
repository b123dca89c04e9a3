"""``data=niah``: needle in a haystack, a key-value needle at a controlled depth in a haystack of real text,
queried at the end: RULER's single-needle retrieval (Hsieh et al., "RULER", 2024; S-NIAH in the Gated DeltaNet
paper, Table 2), with distractor needles as RULER's multi-key variant.

Layout of an example of length L, byte tokens (0..255) and three markers NEEDLE = 256, QUERY = 257, ANSWER = 258::

    haystack ... NEEDLE k1..kK ANSWER v1..vV ... haystack (and distractor needles) ...
                 \\______ the needle, at depth d ______/
    QUERY k1..kK ANSWER v1..v_{V-1}        answers: v1 at ANSWER, v_{i+1} at v_i

Keys are ``key_length`` lowercase letters, values ``value_length`` digits; the ``needles`` keys of an example are
distinct, one needle is queried and the others are distractors at random depths. The depth d is the queried
needle's offset in the haystack as a fraction of it (0 = start, 1 = end, just
before the query); training draws it uniformly, each test set cycles through ``test_depths``. Haystack:
``haystack=stdlib`` (the embedded corpus, the default), ``text`` or ``hf`` (the source configured by the other
data.* keys, e.g. data.path), training examples from the source's training split and test examples from its
validation split; ``repeat`` (one filler sentence repeated) or ``noise`` (random letters and spaces). Tags
``depth`` (percent) and, through the test lengths, the context length.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import synthetic
from .. import sources
from ..common import whole
from ..corpus import DataSettingError
from ..scoring import IGNORE
from .synthetic import Examples, Task, TaskData, as_examples

NEEDLE, QUERY, ANSWER = 256, 257, 258
HAYSTACKS = ("stdlib", "text", "hf", "repeat", "noise")
FILLER = b"The tide came in over the flat grey sand while the gulls argued about nothing in particular. "


class NeedleInAHaystack(Task):
    name = "niah"
    TAGS = {"depth": "value"}
    OPTIONS = {"haystack": "stdlib", "needles": 1, "key_length": 4, "value_length": 4,
               "test_depths": [0.0, 0.25, 0.5, 0.75, 1.0], "test_lengths": None}

    def __init__(self, options, seq_len: int):
        super().__init__(options, seq_len)
        self.text: dict = {}  # split -> uint8 tensor of haystack bytes (sources that hold text)

    @property
    def vocab_size(self) -> int:
        return 259

    @property
    def pad(self) -> int:
        return 0

    def test_lengths(self) -> list[int]:
        given = self.options.get("test_lengths")
        if given:
            return sorted({int(v) for v in given})
        T = self.seq_len
        return sorted({L for L in (T // 4, T // 2, T) if L >= self.min_length()} or {T})

    def haystack_bytes(self, length: int) -> int:
        """Haystack bytes in an example of ``length`` tokens (the rest are the needles and the query)."""
        return length - int(self.options["needles"]) * self.needle_length() - (self.needle_length() - 1)

    def text_problem(self, mix: bool) -> Optional[str]:
        """Why the attached text cannot fill the longest haystack of either split, or None."""
        for split, lengths, key in (("train", self.train_lengths(mix), "training"),
                                    ("test", self.test_lengths(), "validation")):
            need = self.haystack_bytes(max(lengths))
            if self.text[split].numel() < need:
                return (f"data=niah: the haystack's {key} split has {self.text[split].numel():,} bytes, fewer than "
                        f"the {need:,} of one haystack at length {max(lengths)}; give more text (data.path, "
                        f"data.max_bytes, data.val_fraction) or shorter examples (seq_len, "
                        f"data.options.test_lengths)")
        return None

    def needle_length(self) -> int:
        return int(self.options["key_length"]) + int(self.options["value_length"]) + 2

    def min_length(self) -> int:
        # the needles, the query (one token shorter than a needle) and at least one haystack byte
        return int(self.options["needles"]) * self.needle_length() + self.needle_length() - 1 + 1

    def problems(self) -> list[str]:
        o, out = self.options, []
        if o["haystack"] not in HAYSTACKS:
            out.append(f"data.options.haystack={o['haystack']!r} is not a haystack this task knows; allowed: "
                       f"{list(HAYSTACKS)}")
        whole(out, "data.options.needles", o["needles"], 1, 64, "1", " (needles per example: the queried one and "
                                                                       "needles - 1 distractors)")
        whole(out, "data.options.key_length", o["key_length"], 2, 32, "4", " (lowercase letters per key)")
        whole(out, "data.options.value_length", o["value_length"], 1, 32, "4", " (digits per value)")
        depths = o["test_depths"]
        if not (isinstance(depths, (list, tuple)) and depths and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in depths)):
            out.append(f"data.options.test_depths={depths!r} must be a non-empty list of depths in [0, 1], e.g. "
                       f"[0.0, 0.25, 0.5, 0.75, 1.0]")
        return out

    def describe(self) -> str:
        o = self.options
        return (f"needle in a haystack ({o['haystack']} haystack, {o['needles']} needle(s), keys of "
                f"{o['key_length']} letters, values of {o['value_length']} digits)")

    def _haystack(self, n: int, H: int, g: torch.Generator, split: str) -> torch.Tensor:
        kind = self.options["haystack"]
        if kind == "noise":
            letters = torch.tensor(list(b"abcdefghijklmnopqrstuvwxyz     "))
            return letters[torch.randint(0, len(letters), (n, H), generator=g)]
        src = torch.tensor(list(FILLER * (H // len(FILLER) + 2)), dtype=torch.long) if kind == "repeat" else \
            self.text[split].long()
        span = len(FILLER) if kind == "repeat" else src.numel() - H + 1
        start = torch.randint(0, span, (n,), generator=g)
        return src[start[:, None] + torch.arange(H)]

    def generate(self, n: int, length: int, g: torch.Generator, split: str) -> Examples:
        o = self.options
        K, V, N = int(o["key_length"]), int(o["value_length"]), int(o["needles"])
        nl = self.needle_length()
        H = self.haystack_bytes(length)
        hay = self._haystack(n, H, g, split)
        keys = torch.randint(ord("a"), ord("z") + 1, (n, N, K), generator=g)
        for _ in range(100):  # distinct keys within an example (redraw the rare clashes)
            same = (keys[:, :, None, :] == keys[:, None, :, :]).all(-1).triu(1).any(-1).any(-1)
            if not same.any():
                break
            keys[same] = torch.randint(ord("a"), ord("z") + 1, (int(same.sum()), N, K), generator=g)
        values = torch.randint(ord("0"), ord("9") + 1, (n, N, V), generator=g)
        if split == "test":
            depths = torch.tensor([float(d) for d in o["test_depths"]], dtype=torch.float64)
            depth = depths[torch.arange(n) % len(depths)]
        else:
            depth = torch.rand(n, generator=g, dtype=torch.float64)
        offsets = torch.randint(0, H + 1, (n, N), generator=g)
        offsets[:, 0] = (depth * H).round().long()
        x = torch.empty(n, length, dtype=torch.long)
        needle = torch.cat([torch.full((n, N, 1), NEEDLE), keys, torch.full((n, N, 1), ANSWER), values], 2)
        for i in range(n):
            order = sorted(range(N), key=lambda j: (int(offsets[i, j]), j))
            parts, at = [], 0
            for j in order:
                off = int(offsets[i, j])
                parts += [hay[i, at:off], needle[i, j]]
                at = off
            parts.append(hay[i, at:])
            x[i, :length - (nl - 1)] = torch.cat(parts)
        q0 = length - (nl - 1)
        x[:, q0] = QUERY
        x[:, q0 + 1:q0 + 1 + K] = keys[:, 0]
        x[:, q0 + 1 + K] = ANSWER
        x[:, q0 + 2 + K:] = values[:, 0, :-1]
        y = torch.full((n, length), IGNORE, dtype=torch.long)
        y[:, q0 + 1 + K:] = values[:, 0]
        tag = torch.zeros(n, length, dtype=torch.long)
        tag[:, q0 + 1 + K:] = (depth * 100).round().long()[:, None]
        return as_examples(x, y, depth=tag)


TASK = NeedleInAHaystack
PROVIDES, TOKENIZERS = synthetic.PROVIDES, synthetic.TOKENIZERS


def _text_source(c) -> Optional[str]:
    h = dict(c.data.options).get("haystack", TASK.OPTIONS["haystack"])
    return h if h in ("stdlib", "text", "hf") else None


def source_problems(c) -> list[str]:
    out = synthetic.source_problems(TASK, c)
    src = _text_source(c)
    if not out and src is not None:
        out += [f"{p} (the haystack's source, data.options.haystack={src})"
                for p in sources.get(src).source_problems(c)]
    return out


def load(d, seq_len: Optional[int] = None, log=None):
    if seq_len is None:
        raise ValueError("data=niah needs the sequence length (the top-level seq_len)")
    task = TASK(d.options, seq_len)
    h = task.options["haystack"]
    if h in ("stdlib", "text", "hf"):
        corpus = sources.get(h).load(d, seq_len, log) if log is not None else sources.get(h).load(d, seq_len)
        task.text = {"train": corpus.train, "test": corpus.val}
        why = task.text_problem(bool(d.mix_lengths))
        if why:
            raise DataSettingError(why)
    return TaskData(task, d, seq_len)


_, _, vocab_size, notes = synthetic.registry_functions(TASK)
