"""Multi-query associative recall (MQAR), as defined in Zoology (Arora et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models").

One example of length T with ``k`` key-value pairs::

    k1 v1 k2 v2 ... kk vk | filler ... kj  filler ... ki  filler ...
    \\____ context ______/   \\_____ queries of earlier keys ________/

* keys come from the lower half of the vocabulary, ``[1, V/2)``, values from the upper half ``[V/2, V)``; keys
  (and values) are distinct within an example;
* the query region after the 2k context tokens has ``(T - 2k) // 2`` even slots; every key is queried exactly once,
  at slots drawn without replacement with probability proportional to ``s ** (alpha - 1)`` for slot ``s = 1, 2,
  ...`` (a power law; ``alpha = 0.01`` as Zoology), so most queries come soon after the context and a few far;
* the target at a query position is the value paired with that key; every other target is -100, the default
  ``ignore_index`` of ``F.cross_entropy``, so only answers are scored;
* the other positions of the query region hold random tokens. Departure from Zoology: a random filler token that
  equals one of the example's own keys is replaced by a random value-half token, so that each key occurs only in
  its pair and in its query (Zoology lets such collisions happen; they are rare at its vocabulary of 8192 but not
  at small vocabularies).

Training data mixes the numbers of pairs in ``num_kv_pairs`` (equal shares) and, with ``mix_lengths``, example
lengths T, T/2 and T/4 (those that fit 4k <= length), each padded on the right to T with token 0 and target -100.
Test data has every example at the full length T, ``n_test`` examples per number of pairs. Train and test are drawn
from disjoint seeds (``2 * seed`` and ``2 * seed + 1``).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..common import whole
from ..scoring import IGNORE, per_position
from .synthetic import ExampleSource, power_of_two_edges

GEN_VERSION = 1  # bump when the generator's output changes

# as a data source (runner/sources) and as an evaluation task (runner/evals)
PROVIDES = {"mqar"}  # its test set, for the mqar task
TOKENIZERS = ("bytes",)  # synthetic token ids: no tokenizer applies
NEEDS = "mqar"


@dataclass
class MQARSet:
    x: torch.Tensor  # (N, T) int32 inputs
    y: torch.Tensor  # (N, T) int32 targets, IGNORE except at query positions
    distance: torch.Tensor  # (N, T) int32: query position - position of its key; 0 where not scored
    num_kv: torch.Tensor  # (N,) int32 number of pairs of each example
    length: torch.Tensor  # (N,) int32 example length before padding

    def __len__(self) -> int:
        return self.x.shape[0]

    @staticmethod
    def cat(parts: Sequence["MQARSet"]) -> "MQARSet":
        return MQARSet(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "distance", "num_kv", "length")))

    def take(self, idx: torch.Tensor) -> "MQARSet":
        return MQARSet(self.x[idx], self.y[idx], self.distance[idx], self.num_kv[idx], self.length[idx])


def check(seq_len: int, num_kv_pairs: int, vocab_size: int) -> Optional[str]:
    """Why (seq_len, num_kv_pairs, vocab_size) cannot make an example, or None."""
    half = vocab_size // 2
    if num_kv_pairs < 1:
        return f"num_kv_pairs={num_kv_pairs} must be >= 1"
    if half - 1 < num_kv_pairs or vocab_size - half < num_kv_pairs:
        return (f"vocab_size={vocab_size} leaves {half - 1} keys and {vocab_size - half} values, fewer than "
                f"num_kv_pairs={num_kv_pairs}; use vocab_size >= {2 * num_kv_pairs + 2}")
    if 4 * num_kv_pairs > seq_len:
        return (f"num_kv_pairs={num_kv_pairs} needs length >= 4 * {num_kv_pairs} = {4 * num_kv_pairs} (context + "
                f"query slots), got {seq_len}")
    return None


def _distinct(n: int, k: int, low: int, high: int, g: torch.Generator) -> torch.Tensor:
    """(n, k) integers from [low, high), distinct within each row, uniformly random. Wide ranges: draw with
    replacement and redraw the rows that repeat a number (rare); narrow ones: top-k of random keys."""
    span = high - low
    if n == 0:
        return torch.zeros(0, k, dtype=torch.long)
    if 8 * k * k <= span:
        out = torch.randint(low, high, (n, k), generator=g)
        while True:
            srt = out.sort(dim=1).values
            bad = (srt[:, 1:] == srt[:, :-1]).any(1).nonzero().flatten()
            if bad.numel() == 0:
                return out
            out[bad] = torch.randint(low, high, (bad.numel(), k), generator=g)
    rows = max(1, (1 << 22) // span)
    out = [torch.rand(min(rows, n - i), span, generator=g).topk(k, dim=1).indices for i in range(0, n, rows)]
    return torch.cat(out) + low


def slot_probabilities(space: int, alpha: float = 0.01) -> torch.Tensor:
    """Probability of query slot s = 1..space (power law s^(alpha-1), normalised), float64."""
    w = torch.arange(1, space + 1, dtype=torch.float64) ** (alpha - 1.0)
    return w / w.sum()


def generate(n: int, seq_len: int, num_kv_pairs: int, vocab_size: int, alpha: float = 0.01,
             generator: Optional[torch.Generator] = None, pad_to: Optional[int] = None) -> MQARSet:
    """``n`` examples of length ``seq_len`` with ``num_kv_pairs`` pairs each (see the module docstring), padded on
    the right to ``pad_to`` (token 0, target IGNORE) when given."""
    why = check(seq_len, num_kv_pairs, vocab_size)
    if why:
        raise ValueError(why)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    k, half, ctx = num_kv_pairs, vocab_size // 2, 2 * num_kv_pairs
    space = (seq_len - ctx) // 2
    keys = _distinct(n, k, 1, half, g)
    values = _distinct(n, k, half, vocab_size, g)
    x = torch.randint(0, vocab_size, (n, seq_len), generator=g)
    clash = (x[:, :, None] == keys[:, None, :]).any(-1)
    x[clash] = torch.randint(half, vocab_size, (int(clash.sum()),), generator=g)
    x[:, 0:ctx:2] = keys
    x[:, 1:ctx:2] = values
    p = slot_probabilities(space, alpha)
    slots = torch.multinomial(p.expand(n, space).contiguous(), k, replacement=False, generator=g) if n else \
        torch.zeros(0, k, dtype=torch.long)
    qpos = ctx + 2 * slots  # query of key j at qpos[:, j]
    x.scatter_(1, qpos, keys)
    y = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    y.scatter_(1, qpos, values)
    dist = torch.zeros((n, seq_len), dtype=torch.long)
    dist.scatter_(1, qpos, qpos - 2 * torch.arange(k)[None, :])
    T = pad_to or seq_len
    if T > seq_len:
        pad = T - seq_len
        x = torch.cat([x, torch.zeros(n, pad, dtype=x.dtype)], 1)
        y = torch.cat([y, torch.full((n, pad), IGNORE, dtype=y.dtype)], 1)
        dist = torch.cat([dist, torch.zeros(n, pad, dtype=dist.dtype)], 1)
    i32 = torch.int32
    return MQARSet(x.to(i32), y.to(i32), dist.to(i32), torch.full((n,), k, dtype=i32),
                   torch.full((n,), seq_len, dtype=i32))


def train_lengths(seq_len: int, num_kv_pairs: int, mix_lengths: bool) -> list[int]:
    """Example lengths used in training for this number of pairs: T, T/2, T/4 (those that fit), or just T."""
    if not mix_lengths:
        return [seq_len]
    return [L for L in (seq_len, seq_len // 2, seq_len // 4) if L >= 4 * num_kv_pairs] or [seq_len]


def _shares(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def make_train_set(n: int, seq_len: int, num_kv_pairs: Sequence[int], vocab_size: int, alpha: float = 0.01,
                   mix_lengths: bool = True, seed: int = 0) -> MQARSet:
    g = torch.Generator().manual_seed(2 * seed)
    parts = []
    for kv, n_kv in zip(num_kv_pairs, _shares(n, len(num_kv_pairs))):
        lengths = train_lengths(seq_len, kv, mix_lengths)
        for L, n_L in zip(lengths, _shares(n_kv, len(lengths))):
            parts.append(generate(n_L, L, kv, vocab_size, alpha, g, pad_to=seq_len))
    return MQARSet.cat(parts)


def make_test_set(n_per_group: int, seq_len: int, num_kv_pairs: Sequence[int], vocab_size: int,
                  alpha: float = 0.01, seed: int = 0) -> MQARSet:
    """``n_per_group`` examples for each number of pairs, shuffled (fixed order) so that any prefix mixes them."""
    g = torch.Generator().manual_seed(2 * seed + 1)
    s = MQARSet.cat([generate(n_per_group, seq_len, kv, vocab_size, alpha, g) for kv in num_kv_pairs])
    return s.take(torch.randperm(len(s), generator=g))


class MQARData(ExampleSource):
    """The data source behind ``data=mqar``: the same interface as :class:`runner.data.Corpus` for training
    (``batches``, ``val_windows``, ``info``), with the test set used for validation and the mqar eval task."""

    def __init__(self, data_cfg, seq_len: int):
        d = data_cfg
        self.seq_len = seq_len
        self.vocab_size = int(d.vocab_size)
        self.num_kv_pairs = [int(k) for k in d.num_kv_pairs]
        self.test_num_kv_pairs = [int(k) for k in (d.test_num_kv_pairs or d.num_kv_pairs)]
        self.train = make_train_set(int(d.n_train), seq_len, self.num_kv_pairs, self.vocab_size, float(d.alpha),
                                    bool(d.mix_lengths), int(d.seed))
        self.test = make_test_set(int(d.n_test), seq_len, self.test_num_kv_pairs, self.vocab_size, float(d.alpha),
                                  int(d.seed))
        h = hashlib.sha256(f"mqar-v{GEN_VERSION}".encode())
        for t in (self.train.x, self.train.y, self.test.x, self.test.y):
            h.update(t.numpy().tobytes())
        self.fingerprint = h.hexdigest()[:16]
        self.description = (f"MQAR (synthetic, Zoology): {len(self.train):,} train examples with "
                            f"{self.num_kv_pairs} key-value pairs{' and mixed lengths' if d.mix_lengths else ''}, "
                            f"{int(d.n_test):,} test examples per count in {self.test_num_kv_pairs}, length {seq_len}, "
                            f"vocabulary {self.vocab_size}, alpha {d.alpha}, seed {d.seed}")

    def val_windows(self, seq_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first test examples covering ``max_tokens`` positions (groups mixed)."""
        if seq_len != self.seq_len:
            raise ValueError(f"MQAR examples have length {self.seq_len}, not {seq_len}")
        rows = min(len(self.test), max(1, math.ceil(max_tokens / seq_len)))
        return self.test.x[:rows].long(), self.test.y[:rows].long()

    def info(self) -> dict:
        return {"source": self.description, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "tokenizer": "mqar", "train_examples": len(self.train), "test_examples": len(self.test),
                "train_tokens": int(self.train.x.numel()), "val_tokens": int(self.test.x.numel()),
                "train_answers": int((self.train.y != IGNORE).sum()), "num_kv_pairs": self.num_kv_pairs,
                "test_num_kv_pairs": self.test_num_kv_pairs}

    def summary(self) -> str:
        return (f"{len(self.train):,} train / {len(self.test):,} test examples of {self.seq_len} tokens "
                f"({int((self.train.y != IGNORE).sum()):,} scored training answers)")


@torch.no_grad()
def evaluate_mqar(model, test: MQARSet, batch_size: int, device: torch.device) -> dict:
    """Accuracy (arg-max over the whole vocabulary equals the value) at every query, overall, by number of pairs
    and by query distance bucket (distance = query position - key position, power-of-two buckets)."""
    correct = per_position(model, test.x.long().to(device), test.y.long().to(device), batch_size,
                           lambda logits, y: (logits.argmax(-1) == y) & (y != IGNORE), torch.bool)
    scored = test.y != IGNORE
    ok = correct[scored].double()
    dist = test.distance[scored].long()
    kv = test.num_kv[:, None].expand_as(test.y)[scored].long()
    out = {"accuracy": float(ok.mean()) if ok.numel() else float("nan"), "queries": int(ok.numel()),
           "by_num_kv_pairs": [], "by_distance": []}
    for k in sorted(set(kv.tolist())):
        m = kv == k
        row = {"num_kv_pairs": k, "accuracy": float(ok[m].mean()), "queries": int(m.sum()), "by_distance": []}
        out["by_num_kv_pairs"].append(row)
    edges = power_of_two_edges(int(dist.max()) if dist.numel() else 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (dist >= lo) & (dist < hi)
        if m.any():
            out["by_distance"].append({"min": lo, "max": hi - 1, "accuracy": float(ok[m].mean()),
                                       "queries": int(m.sum())})
            for row in out["by_num_kv_pairs"]:
                mk = m & (kv == row["num_kv_pairs"])
                if mk.any():
                    row["by_distance"].append({"min": lo, "max": hi - 1, "accuracy": float(ok[mk].mean()),
                                               "queries": int(mk.sum())})
    return out


# ------------------------------------------------------------------------ the source and the task (registries)


def source_problems(c) -> list[str]:
    """The settings of data=mqar, against each other and seq_len."""
    import math as _m

    d, out = c.data, []

    whole(out, "data.vocab_size", d.vocab_size, 4, 1_000_000, "8192", " (the MQAR token vocabulary)")
    if not d.num_kv_pairs:
        out.append("data.num_kv_pairs must be a non-empty list, e.g. [2, 4, 8]")
    if d.test_num_kv_pairs is not None and not d.test_num_kv_pairs:
        out.append("data.test_num_kv_pairs must be null (= num_kv_pairs) or a non-empty list, e.g. [4, 8, 16]")
    for key, kvs in (("num_kv_pairs", d.num_kv_pairs), ("test_num_kv_pairs", d.test_num_kv_pairs or [])):
        for kv in kvs:
            why = check(c.seq_len, kv, d.vocab_size) if isinstance(c.seq_len, int) and c.seq_len >= 1 else None
            if why is not None:
                out.append(f"data.{key}={list(kvs)} with data.vocab_size={d.vocab_size}, seq_len={c.seq_len}: {why}")
    whole(out, "data.n_train", d.n_train, 1, 1 << 28, "100000")
    whole(out, "data.n_test", d.n_test, 1, 1 << 24, "1000")
    if not (isinstance(d.alpha, (int, float)) and _m.isfinite(d.alpha) and d.alpha > 0):
        out.append(f"data.alpha={d.alpha} must be > 0 (Zoology: 0.01)")
    whole(out, "data.seed", d.seed, 0, (2**32 - 2) // 2, "0",
          " (training examples come from 2*seed, test examples from 2*seed+1)")
    return out


def load(d, seq_len: Optional[int] = None, log=None) -> MQARData:
    if seq_len is None:
        raise ValueError("data=mqar needs the sequence length (the top-level seq_len)")
    return MQARData(d, seq_len)


def vocab_size(c) -> int:
    return int(c.data.vocab_size)


def notes(c) -> list[str]:
    if "eval" in c.stages and "mqar" not in c.eval.tasks:
        return ["note: add eval.tasks=[ppl,mqar] for the recall accuracy by number of pairs and by distance"]
    return []


def task_problems(c) -> list[str]:
    return []


def run(ctx) -> dict:
    return {"mqar": evaluate_mqar(ctx.model, ctx.data.test, ctx.cfg.eval.batch_size, ctx.device)}


def describe(ev: dict) -> list[str]:
    if "mqar" not in ev:
        return []
    m = ev["mqar"]
    per = ", ".join(f"{r['num_kv_pairs']} pairs {r['accuracy']:.3f}" for r in m["by_num_kv_pairs"])
    return [f"  mqar: accuracy {m['accuracy']:.3f} ({per})"]


def _by_pairs(ev: dict) -> dict:
    return {r["num_kv_pairs"]: r["accuracy"] for r in (ev.get("mqar") or {}).get("by_num_kv_pairs", [])
            if isinstance(r, dict) and "num_kv_pairs" in r}


CSV = {"mqar_accuracy": lambda ev: (ev.get("mqar") or {}).get("accuracy")}


def report_lines(jobs: list, table, fmt) -> list[str]:
    """The sweep report's recall table: accuracy by number of pairs, one row per completed job that has it."""
    recall = [(j, _by_pairs(j["results"].get("eval") or {})) for j in jobs]
    recall = [(j, by) for j, by in recall if by]
    if not recall:
        return []
    pairs = sorted({k for _, by in recall for k in by})
    lines = ["## Recall (MQAR)", "",
             "Accuracy on the held-out test examples (full length, every query scored), by number of key-value "
             "pairs.", ""]
    return lines + table(["config", "layers", *(f"{k} pairs" for k in pairs), "all"],
                         [[j["label"], j["layer_types"], *(fmt(by.get(k), ".3f") for k in pairs),
                           fmt(CSV["mqar_accuracy"](j["results"].get("eval") or {}), ".3f")]
                          for j, by in recall]) + [""]
