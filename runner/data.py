"""Corpora and batches. Byte-level tokens (vocabulary 256) by default, so bits-per-byte is exact.

Sources:
* ``stdlib`` (default, embedded): the Python standard library's own ``.py`` files, present on every machine that
  runs Python, no download. Files are read in sorted order up to ``data.max_bytes`` and split into train and
  validation *by file*, deterministically (a hash of the relative path), so no file straddles the split.
* ``text``: a local text file (the last ``val_fraction`` of its bytes is validation) or a folder of text files
  (split by file as above), loaded through the ``datasets`` library's ``text`` builder.

Every corpus records a fingerprint (sha256 of the files' relative paths and contents) in the results, so two runs
can tell whether they saw the same text.
"""
from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass, field
from typing import Iterator

import torch

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text", ".json", ".csv", ".tex", ".html")


@dataclass
class Corpus:
    train: torch.Tensor  # (N,) uint8 tokens
    val: torch.Tensor
    vocab_size: int
    fingerprint: str
    description: str
    files: dict = field(default_factory=dict)  # {"train": n_files, "val": n_files}

    def info(self) -> dict:
        return {"source": self.description, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "train_tokens": int(self.train.numel()), "val_tokens": int(self.val.numel()), "files": self.files}


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


def load_stdlib(frac: float, max_bytes: int) -> Corpus:
    root = sysconfig.get_paths()["stdlib"]
    pairs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__", "test", "tests",
                                                                "idlelib", "lib2to3", "turtledemo"))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                pairs.append((os.path.relpath(path, root), path))
    pairs.sort()
    out, total = [], 0
    for rel, path in pairs:
        if max_bytes and total >= max_bytes:
            break
        with open(path, "rb") as f:
            data = f.read()
        total += len(data)
        out.append((rel, data))
    import platform

    return _split_files(out, frac, f"python-stdlib {platform.python_version()} ({root})")


def load_text(path: str, frac: float, max_bytes: int) -> Corpus:
    """A text file or a folder of text files, read through the `datasets` text builder (whole documents)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs
                       if f.lower().endswith(TEXT_SUFFIXES))
        if not files:
            raise ValueError(f"data.path={path!r} holds no text files (looked for {', '.join(TEXT_SUFFIXES)})")
    else:
        files = [path]
    texts = _read_with_datasets(files)
    if len(files) == 1:
        data = texts[0].encode("utf-8")
        if max_bytes:
            data = data[:max_bytes]
        cut = int(len(data) * (1 - frac))
        fp = hashlib.sha256(os.path.basename(path).encode() + b"\0" + hashlib.sha256(data).digest()).hexdigest()[:16]
        return Corpus(_to_tensor(data[:cut]), _to_tensor(data[cut:]), 256, fp, f"text file {path}",
                      {"train": 1, "val": 1})
    pairs = [(os.path.relpath(f, path), t.encode("utf-8")) for f, t in zip(files, texts)]
    return _split_files(pairs, frac, f"text folder {path}", max_bytes)


def _read_with_datasets(files: list[str]) -> list[str]:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("text", data_files={"all": files}, sample_by="document", split="all",
                               keep_in_memory=True)
    texts = ds["text"]
    if len(texts) != len(files):
        raise RuntimeError(f"expected one document per file from {len(files)} files, got {len(texts)}")
    return list(texts)


def load_corpus(data_cfg) -> Corpus:
    if data_cfg.name == "stdlib":
        return load_stdlib(data_cfg.val_fraction, data_cfg.max_bytes)
    if data_cfg.name == "text":
        return load_text(data_cfg.path, data_cfg.val_fraction, data_cfg.max_bytes)
    raise ValueError(f"unknown data source {data_cfg.name!r}")


def random_batches(tokens: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator) -> Iterator:
    """Endless (x, y) batches of random windows, y shifted by one, drawn with ``generator``."""
    n = tokens.numel() - seq_len - 1
    if n <= 0:
        raise ValueError(f"the training split has {tokens.numel()} tokens, too few for seq_len={seq_len}; "
                         f"use a shorter seq_len or more data")
    while True:
        starts = torch.randint(0, n + 1, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
        chunk = tokens[idx].long()
        yield chunk[:, :-1], chunk[:, 1:]


def eval_windows(tokens: torch.Tensor, seq_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows covering the first ``max_tokens`` tokens of the split, deterministic."""
    n_win = min((tokens.numel() - 1) // seq_len, max(1, math.ceil(max_tokens / seq_len)))
    if n_win < 1:
        raise ValueError(f"the validation split has {tokens.numel()} tokens, too few for seq_len={seq_len}")
    idx = torch.arange(n_win)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def unigram_bits_per_token(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (bits/token) on ``val`` of a unigram model fitted on ``train`` with add-one smoothing:
    the floor any model that learned anything must beat."""
    counts = torch.bincount(train.long(), minlength=vocab_size).double() + 1.0
    logp = torch.log2(counts / counts.sum())
    return float(-(logp[val.long()]).mean())
