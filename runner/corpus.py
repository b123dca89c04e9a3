"""What a data source hands the stages: a :class:`Corpus` of training and validation tokens, its batches and
validation windows, and the pieces the text sources share (splitting folders by file, byte tensors, unigram
counts). The protocol every source's data follows is written in runner/sources/__init__.py."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from .errors import ActionableError

Log = Callable[[str], None]


def quiet(msg: str) -> None:
    pass


class DataUnavailable(ActionableError, RuntimeError):
    """The data cannot be had from here (no network and not cached); the message says what to do."""


class DataSettingError(ActionableError, ValueError):
    """A data setting that does not fit the dataset (a missing column or split); the message names the key."""


@dataclass
class Corpus:
    train: torch.Tensor  # (N,) tokens: uint8 bytes, or int32 BPE ids
    val: torch.Tensor
    vocab_size: int
    fingerprint: str
    description: str
    files: dict = field(default_factory=dict)  # {"train": n_files, "val": n_files}
    tokenizer: str = "bytes"
    token_bytes: Optional[torch.Tensor] = None  # (vocab,) UTF-8 bytes each token stands for; None = 1 (bytes)
    extra: dict = field(default_factory=dict)  # tokenizer path, cache hits, byte counts

    def batches(self, batch: int, seq_len: int, generator: torch.Generator) -> Iterator:
        return random_batches(self.train, batch, seq_len, generator)

    def val_windows(self, seq_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return eval_windows(self.val, seq_len, max_tokens)

    def unigram_counts(self) -> torch.Tensor:
        return torch.bincount(self.train.long(), minlength=self.vocab_size)

    def bytes_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """UTF-8 bytes each token of ``tokens`` decodes to (same shape, int64)."""
        if self.token_bytes is None:
            return torch.ones(tokens.shape, dtype=torch.long)
        return self.token_bytes[tokens.long()]

    def info(self) -> dict:
        out = {"source": self.description, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
               "tokenizer": self.tokenizer, "train_tokens": int(self.train.numel()),
               "val_tokens": int(self.val.numel()), "files": self.files}
        out.update(self.extra)
        return out

    def summary(self) -> str:
        s = f"{self.train.numel():,} train / {self.val.numel():,} val tokens"
        if self.tokenizer != "bytes" and "train_bytes" in self.extra:
            s += f" ({self.tokenizer}, {self.extra['train_bytes'] / max(1, self.train.numel()):.2f} bytes/token)"
        return s


def _is_val(rel: str, frac: float) -> bool:
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16)
    return (h % 10_000) < frac * 10_000


def _split_files(pairs: list[tuple[str, bytes]], frac: float, label: str, max_bytes: int = 0) -> Corpus:
    """pairs: (relative path, content) in sorted order."""
    fp = hashlib.sha256()
    train, val, n_train, n_val, total = [], [], 0, 0, 0
    for rel, data in pairs:
        if max_bytes and total >= max_bytes:
            break
        total += len(data)
        fp.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        if _is_val(rel, frac):
            val.append(data); n_val += 1
        else:
            train.append(data); n_train += 1
    if not val and len(train) > 1:  # tiny folders: make sure validation is not empty
        val.append(train.pop()); n_val, n_train = 1, n_train - 1
    sep = b"\n\n"
    return Corpus(_to_tensor(sep.join(train)), _to_tensor(sep.join(val)), 256, fp.hexdigest()[:16], label,
                  {"train": n_train, "val": n_val})


def _to_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)


def _char_boundary(data: bytes, i: int) -> int:
    """The first index >= i that does not fall inside a UTF-8 multi-byte character."""
    while 0 < i < len(data) and 0x80 <= data[i] < 0xC0:
        i += 1
    return i


def random_batches(tokens: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator) -> Iterator:
    """Endless (x, y) batches of random windows, y shifted by one, drawn with ``generator``."""
    n = tokens.numel() - seq_len - 1
    if n <= 0:
        raise DataSettingError(f"the training split has {tokens.numel()} tokens, too few for seq_len={seq_len} "
                               f"(a window needs seq_len + 1 tokens): use a shorter seq_len or more data "
                               f"(data.max_bytes, data.path)")
    while True:
        starts = torch.randint(0, n + 1, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
        chunk = tokens[idx].long()
        yield chunk[:, :-1], chunk[:, 1:]


def eval_windows(tokens: torch.Tensor, seq_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows covering the first ``max_tokens`` tokens of the split, deterministic."""
    n_win = min((tokens.numel() - 1) // seq_len, max(1, math.ceil(max_tokens / seq_len)))
    if n_win < 1:
        raise DataSettingError(f"the validation split has {tokens.numel()} tokens, too few for seq_len={seq_len} "
                               f"(a window needs seq_len + 1 tokens): use a shorter seq_len, a larger "
                               f"data.val_fraction, or more data")
    idx = torch.arange(n_win)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def unigram_log2p(counts: torch.Tensor) -> torch.Tensor:
    """log2 probabilities of a unigram model with add-one smoothing from token counts."""
    c = counts.double() + 1.0
    return torch.log2(c / c.sum())
