"""Byte-level BPE (``data.tokenizer=bpe``): trained with the ``tokenizers`` library on the training split only,
``data.vocab_size`` tokens. The tokenizer and the tokenized splits are cached under ``data.cache_dir`` (default
``~/.cache/hybrid-runner``) by a fingerprint of the split contents and the settings; a later run on the same corpus
loads them ("cache hit") and skips tokenization. Every BPE token decodes to a known number of bytes
(``Corpus.token_bytes``), so bits per byte counts the UTF-8 bytes of the scored text and stays comparable across
tokenizers."""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable

import torch

from .corpus import Corpus, DataSettingError, Log, quiet as _quiet
from .common import atomic_write
from .progress import spinner

DEFAULT_CACHE_DIR = "~/.cache/hybrid-runner"
BPE_SCHEME = "bytelevel-bpe-v1"  # part of the cache key: bump when the tokenizer recipe changes


def cache_root(d) -> str:
    return os.path.abspath(os.path.expanduser(d.cache_dir or DEFAULT_CACHE_DIR))


def _pieces(text: str, size: int = 1 << 16) -> list[str]:
    """``text`` cut into consecutive pieces of about ``size`` characters, at line ends where possible."""
    out, i = [], 0
    while i < len(text):
        j = min(len(text), i + size)
        if j < len(text):
            k = text.find("\n", j)
            j = len(text) if k < 0 else k + 1
        out.append(text[i:j])
        i = j
    return out


def _decode_utf8(t: torch.Tensor, split: str) -> str:
    try:
        return t.numpy().tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataSettingError(f"data.tokenizer=bpe needs UTF-8 text, but the {split} split is not valid UTF-8 ({e}); "
                               f"use data.tokenizer=bytes") from e


def train_bpe(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (all 256 bytes in its alphabet, so any text encodes losslessly) trained on
    ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    pieces = _pieces(text)
    tok.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    return tok


def bpe_token_bytes(tok) -> torch.Tensor:
    """UTF-8 bytes each token id stands for: a byte-level token's characters map one to one to bytes."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    n = tok.get_vocab_size()
    out = torch.zeros(n, dtype=torch.long)
    for t, i in tok.get_vocab().items():
        if not set(t) <= alphabet:
            raise ValueError(f"token {t!r} (id {i}) is not byte-level; cannot count its bytes")
        out[i] = len(t)
    return out


def bpe_encode(tok, text: str) -> torch.Tensor:
    import numpy as np

    pieces = _pieces(text)
    ids = [np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(pieces, add_special_tokens=False)]
    return torch.from_numpy(np.concatenate(ids)) if ids else torch.zeros(0, dtype=torch.int32)


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _cache_write(path: str, write: Callable[[str], None], log: Log) -> None:
    """Write a cache entry; a cache folder that cannot be written (read-only, full) costs the next run the
    tokenization, not this run: say so and go on."""
    try:
        atomic_write(path, write)
    except OSError as e:
        log(f"data: [yellow]cannot write the cache entry {path} ({e.strerror or e}); going on without caching it. "
            f"Set data.cache_dir to a writable folder to keep it[/]")


def tokenize_bpe(corpus: Corpus, d, log: Log = _quiet, console=None) -> Corpus:
    """The byte corpus as BPE tokens, through the on-disk cache (tokenizer and tokenized splits); on a terminal
    ``console`` a spinner says which of the two long steps (training the tokenizer, tokenizing) runs."""
    from rich.console import Console

    console = console or Console(quiet=True)
    import tokenizers

    root = cache_root(d)
    settings = {"scheme": BPE_SCHEME, "vocab_size": int(d.vocab_size)}
    tok_key = hashlib.sha256(json.dumps({**settings, "train": _sha(corpus.train)}, sort_keys=True).encode())
    tok_key = tok_key.hexdigest()[:20]
    data_key = hashlib.sha256(f"{tok_key}:{_sha(corpus.val)}".encode()).hexdigest()[:20]
    tok_path = os.path.join(root, "tokenizers", f"bpe{d.vocab_size}-{tok_key}.json")
    data_path = os.path.join(root, "tokenized", f"bpe{d.vocab_size}-{data_key}.pt")
    hits = {"tokenizer": False, "tokens": False}

    if os.path.exists(data_path):
        try:
            saved = torch.load(data_path, weights_only=True)
            if saved.get("tokenizer_key") == tok_key:
                hits.update(tokenizer=True, tokens=True)
                log(f"data: cache hit: tokenized splits {data_path} (tokenization skipped)")
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt
            log(f"data: cache entry {data_path} unreadable ({type(e).__name__}: {e}); rebuilding it")
    if not hits["tokens"]:
        log(f"data: cache miss: tokenized splits {data_path}")
        train_text, val_text = _decode_utf8(corpus.train, "training"), _decode_utf8(corpus.val, "validation")
        if os.path.exists(tok_path):
            tok = tokenizers.Tokenizer.from_file(tok_path)
            hits["tokenizer"] = True
            log(f"data: cache hit: tokenizer {tok_path}")
        else:
            t0 = time.perf_counter()
            with spinner(console, f"data: training a BPE tokenizer of {d.vocab_size:,} tokens on "
                                  f"{corpus.train.numel():,} bytes"):
                tok = train_bpe(train_text, int(d.vocab_size))
            _cache_write(tok_path, tok.save, log)
            log(f"data: trained BPE ({tok.get_vocab_size():,} tokens) on {corpus.train.numel():,} training bytes in "
                f"{time.perf_counter() - t0:.1f} s -> {tok_path}")
        t0 = time.perf_counter()
        with spinner(console, f"data: tokenizing {corpus.train.numel() + corpus.val.numel():,} bytes"):
            saved = {"tokenizer_key": tok_key, "train": bpe_encode(tok, train_text),
                     "val": bpe_encode(tok, val_text), "token_bytes": bpe_token_bytes(tok),
                     "vocab_size": tok.get_vocab_size()}
        for split, raw in (("train", corpus.train), ("val", corpus.val)):
            n = int(saved["token_bytes"][saved[split].long()].sum())
            if n != raw.numel():
                raise RuntimeError(f"BPE {split} tokens decode to {n} bytes, not {raw.numel()}: not lossless")
        _cache_write(data_path, lambda p: torch.save(saved, p), log)
        log(f"data: tokenized {corpus.train.numel() + corpus.val.numel():,} bytes into "
            f"{saved['train'].numel() + saved['val'].numel():,} tokens in {time.perf_counter() - t0:.1f} s -> "
            f"{data_path}")
    extra = {"train_bytes": int(corpus.train.numel()), "val_bytes": int(corpus.val.numel()),
             "tokenizer_path": tok_path, "tokens_path": data_path, "cache_hit": hits}
    return Corpus(saved["train"], saved["val"], int(saved["vocab_size"]), corpus.fingerprint, corpus.description,
                  corpus.files, "bpe", saved["token_bytes"], extra)
