"""Corpora, tokenizers and batches.

Sources (``data.name``):
* ``stdlib`` (default, embedded): the Python standard library's own ``.py`` files, present on every machine that
  runs Python, no download. Files are read in sorted order up to ``data.max_bytes`` and split into train and
  validation *by file*, deterministically (a hash of the relative path), so no file straddles the split.
* ``text``: a local text file (the last ``val_fraction`` of its bytes is validation) or a folder of text files
  (split by file as above), loaded through the ``datasets`` library's ``text`` builder.
* ``hf``: any dataset of the Hugging Face Hub (``data.dataset``, ``data.config``, the column ``data.text_field``),
  or a local folder of parquet/json/csv/txt files given as ``data.dataset``, through ``datasets.load_dataset``.
  ``data.streaming=true`` reads large datasets row by row up to ``data.max_bytes`` without downloading them whole.
  Before touching the Hub a short probe (``data.hub_timeout_s``) checks that it answers; when it does not (or
  ``HF_HUB_OFFLINE=1``), only the local cache is used, and a dataset that is not cached fails at once with a message
  saying what to do. Nothing is fetched unless ``data=hf`` is asked for.
* ``mqar``: synthetic multi-query associative recall (runner/tasks/mqar.py).

Tokenizers (``data.tokenizer``): ``bytes`` (default: the UTF-8 bytes, vocabulary 256) or ``bpe``: byte-level BPE
trained with the ``tokenizers`` library on the training split only, ``data.vocab_size`` tokens. The tokenizer and the
tokenized splits are cached under ``data.cache_dir`` (default ``~/.cache/hybrid-runner``) by a fingerprint of the
split contents and the settings; a later run on the same corpus loads them ("cache hit") and skips tokenization.
Every BPE token decodes to a known number of bytes (``Corpus.token_bytes``), so bits per byte counts the UTF-8
bytes of the scored text and stays comparable across tokenizers.

Every corpus records a fingerprint (sha256 of the files' relative paths and contents, or of the dataset rows) in the
results, so two runs can tell whether they saw the same text.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch

from .errors import ActionableError
from .track import atomic_write

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text", ".json", ".csv", ".tex", ".html")
DEFAULT_CACHE_DIR = "~/.cache/hybrid-runner"
BPE_SCHEME = "bytelevel-bpe-v1"  # part of the cache key: bump when the tokenizer recipe changes

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
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
            raise DataSettingError(f"data.path={path!r} is a folder with no text files in it (looked for files "
                                   f"ending in {', '.join(TEXT_SUFFIXES)}, in all its subfolders): give a text file "
                                   f"or a folder that holds some")
    else:
        files = [path]
    _check_text_files(files, "data.path=" if len(files) == 1 else f"data.path={path!r}: the file ")
    texts = _read_with_datasets(files)
    if len(files) == 1:
        data = texts[0].encode("utf-8")
        if max_bytes and max_bytes < len(data):
            data = data[:_char_boundary(data, max_bytes)]
        cut = _char_boundary(data, int(len(data) * (1 - frac)))
        fp = hashlib.sha256(os.path.basename(path).encode() + b"\0" + hashlib.sha256(data).digest()).hexdigest()[:16]
        return Corpus(_to_tensor(data[:cut]), _to_tensor(data[cut:]), 256, fp, f"text file {path}",
                      {"train": 1, "val": 1})
    pairs = [(os.path.relpath(f, path), t.encode("utf-8")) for f, t in zip(files, texts)]
    if not any(data for _, data in pairs):
        raise DataSettingError(f"data.path={path!r}: its {len(files)} text files are all empty; give text to train on")
    return _split_files(pairs, frac, f"text folder {path}", max_bytes)


def _check_text_files(files: list[str], what: str) -> None:
    """Every file readable, UTF-8 text (not binary), and a single file not empty; else what to do instead."""
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise DataSettingError(f"{what}{f!r} cannot be read ({e.strerror or e}): check the path and its "
                                   f"permissions") from None
        if len(files) == 1 and not data.strip():
            raise DataSettingError(f"{what}{f!r} is empty ({len(data)} bytes, no text): give a file with text to "
                                   f"train on")
        if b"\0" in data[:1 << 20]:
            raise DataSettingError(f"{what}{f!r} is binary, not text (it holds NUL bytes): give a text file (or "
                                   f"remove it from the folder)")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataSettingError(
                f"{what}{f!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start} cannot be decoded): "
                f"convert it, e.g. iconv -f latin1 -t utf-8 {f} > {f}.utf8.txt, or remove it from the folder") from None


def _read_with_datasets(files: list[str]) -> list[str]:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("text", data_files={"train": files}, sample_by="document", split="train",
                               keep_in_memory=True)  # ("all" is a reserved split name in datasets >= 3)
    texts = ds["text"]
    if len(texts) != len(files):
        raise RuntimeError(f"expected one document per file from {len(files)} files, got {len(texts)}")
    return list(texts)


# ------------------------------------------------------------------------------------------ Hugging Face datasets


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """None when the Hub's endpoint answers within ``timeout`` seconds (any HTTP status), else why not. The request
    runs in a daemon thread that is abandoned after the timeout, so name resolution cannot hang the run either."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/datasets?limit=1"
    result: dict = {}

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result["ok"] = True
        except urllib.error.HTTPError:
            result["ok"] = True  # the server answered
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
            result["error"] = f"{type(e).__name__}: {getattr(e, 'reason', e)}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if result.get("ok"):
        return None
    return f"{url} did not answer: {result.get('error', f'no reply within {timeout:g} s')}"


@contextmanager
def hub_offline(on: bool = True):
    """Make `datasets` and `huggingface_hub` work from the local cache only (as HF_HUB_OFFLINE=1) inside the block."""
    if not on:
        yield
        return
    import datasets.config as dcfg
    from huggingface_hub import constants

    old = (dcfg.HF_HUB_OFFLINE, getattr(dcfg, "HF_DATASETS_OFFLINE", None), constants.HF_HUB_OFFLINE)
    dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE = old


def _rows_text(rows: Iterable, field_name: str, where: str) -> Iterator[str]:
    for row in rows:
        if field_name not in row:
            raise DataSettingError(f"data.text_field={field_name!r} is not a column of {where}; its columns are "
                             f"{sorted(row)}: set data.text_field to the one holding the text")
        t = row[field_name]
        if t is None:
            continue
        if not isinstance(t, str):
            raise DataSettingError(f"data.text_field={field_name!r} of {where} holds {type(t).__name__}, not text")
        yield t


def _gather(texts: Iterable[str], cap: int) -> tuple[bytes, int]:
    """Rows joined as lines (a newline added where a row lacks one; empty rows skipped), up to ``cap`` bytes
    (0 = all; the row that crosses the cap is the last one). Returns (bytes, rows used)."""
    out, total, n = [], 0, 0
    for t in texts:
        if cap and total >= cap:
            break
        if not t:
            continue
        b = (t if t.endswith("\n") else t + "\n").encode("utf-8")
        out.append(b)
        total += len(b)
        n += 1
    return b"".join(out), n


def load_hf(d, log: Log = _quiet) -> Corpus:
    """A dataset of the Hugging Face Hub, or a local dataset folder, by ``datasets.load_dataset``."""
    import datasets
    import datasets.config as dcfg

    datasets.disable_progress_bars()
    name = d.dataset
    local = os.path.exists(os.path.expanduser(name))
    if local:
        name = os.path.abspath(os.path.expanduser(name))
    offline, reason = bool(dcfg.HF_HUB_OFFLINE), None
    if offline and not local:
        reason = "HF_HUB_OFFLINE is set"
    elif not local:
        reason = hub_unreachable(d.hub_timeout_s)
        offline = reason is not None
    streaming = bool(d.streaming) and not offline
    if offline and not local:
        log(f"data: the Hugging Face Hub is not reachable ({reason}); looking in the local cache only")
        if d.streaming:
            log("data: streaming needs the Hub; trying the cached (downloaded) copy instead")
    what = f"{d.dataset!r}" + (f" (config {d.config!r})" if d.config else "")
    frac = d.val_fraction
    cap = int(d.max_bytes)
    val_cap = int(math.ceil(cap * frac / (1 - frac))) if cap else 0

    def split_rows(split: str):
        ds = datasets.load_dataset(name, d.config, split=split, revision=d.revision, streaming=streaming)
        return ds if streaming else ds.to_iterable_dataset()

    def fail(e: Exception):
        cache = os.environ.get("HF_DATASETS_CACHE") or str(dcfg.HF_DATASETS_CACHE)
        hint = f"datasets.load_dataset({d.dataset!r}" + (f", {d.config!r}" if d.config else "") + ")"
        raise DataUnavailable(
            f"data=hf: cannot load {what}: the Hugging Face Hub is not reachable from here ({reason}) and the "
            f"dataset is not in the local cache ({cache}). What to do: (1) on a machine with network, run the same "
            f"command once (or python -c \"import datasets; {hint}\") and copy its Hugging Face cache here (or point "
            f"HF_HOME at it); (2) or download the dataset's files (parquet, json, csv or txt) and pass their folder as "
            f"data.dataset=/path/to/folder; (3) or train on a local text file: data=text data.path=/path/to/file.txt. "
            f"(the loader said: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e

    def settings_error(e: ValueError, key: str, value, advice: str):
        """A ValueError of the loader about a config or split name, as the setting to change."""
        first = (str(e).splitlines()[0] if str(e) else type(e).__name__).rstrip(". ")
        return DataSettingError(f"{key}={value!r} does not fit {d.dataset!r}: {first}. {advice}")

    t0 = time.perf_counter()
    with hub_offline(offline and not local):
        try:
            try:
                train_ds = split_rows(d.train_split)
            except ValueError as e:
                msg = str(e).lower()
                if "config" in msg:
                    raise settings_error(e, "data.config", d.config, "Choose one of the configs it names, or "
                                         "data.config=null for a dataset without configs (a local folder)") from e
                if "split" in msg:
                    raise settings_error(e, "data.train_split", d.train_split, "Choose an existing split") from e
                raise
            if d.val_split:
                try:
                    val_ds = split_rows(d.val_split)
                except ValueError as e:
                    if "split" not in str(e).lower():
                        raise
                    raise DataSettingError(f"data.val_split={d.val_split!r}: {e}. Choose an existing split, or "
                                           f"data.val_split=null to hold out data.val_fraction of the training "
                                           f"rows") from e
                train, n_tr = _gather(_rows_text(train_ds, d.text_field, f"{what} split {d.train_split!r}"), cap)
                val, n_va = _gather(_rows_text(val_ds, d.text_field, f"{what} split {d.val_split!r}"), val_cap)
            else:
                tr_rows, va_rows = [], []
                total = 0
                for i, t in enumerate(_rows_text(train_ds, d.text_field, f"{what} split {d.train_split!r}")):
                    if cap and total >= cap + val_cap:
                        break
                    (va_rows if _is_val(str(i), frac) else tr_rows).append(t)
                    total += len(t.encode("utf-8"))
                train, n_tr = _gather(tr_rows, 0)
                val, n_va = _gather(va_rows, 0)
        except DataSettingError:
            raise
        except Exception as e:  # noqa: BLE001 - offline: whatever went wrong, the answer is the same
            if offline and not local:
                fail(e)
            raise
    if not train or not val:
        raise DataSettingError(f"data=hf: {what} gave {len(train):,} training and {len(val):,} validation bytes "
                               f"from column {d.text_field!r}; both must be non-empty: check data.text_field, the "
                               f"splits (data.train_split, data.val_split) and data.max_bytes")
    fp = hashlib.sha256(json.dumps([d.dataset if not local else os.path.basename(name), d.config, d.train_split,
                                    d.val_split, d.text_field]).encode())
    fp.update(hashlib.sha256(train).digest() + hashlib.sha256(val).digest())
    mode = "streamed" if streaming else ("local folder" if local else ("cache only" if offline else "downloaded/cached"))
    desc = (f"hf {d.dataset}" + (f"/{d.config}" if d.config else "") + f", column {d.text_field!r} "
            f"(train split {d.train_split!r}, " + (f"validation split {d.val_split!r}" if d.val_split else
                                                  f"validation: {frac:g} of the training rows") + f", {mode})")
    log(f"data: read {len(train) + len(val):,} bytes from {what} in {time.perf_counter() - t0:.1f} s")
    return Corpus(_to_tensor(train), _to_tensor(val), 256, fp.hexdigest()[:16], desc, {"train": n_tr, "val": n_va})


# ------------------------------------------------------------------------------------------------ BPE tokenizer


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


def tokenize_bpe(corpus: Corpus, d, log: Log = _quiet) -> Corpus:
    """The byte corpus as BPE tokens, through the on-disk cache (tokenizer and tokenized splits)."""
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
            tok = train_bpe(train_text, int(d.vocab_size))
            _cache_write(tok_path, tok.save, log)
            log(f"data: trained BPE ({tok.get_vocab_size():,} tokens) on {corpus.train.numel():,} training bytes in "
                f"{time.perf_counter() - t0:.1f} s -> {tok_path}")
        t0 = time.perf_counter()
        saved = {"tokenizer_key": tok_key, "train": bpe_encode(tok, train_text), "val": bpe_encode(tok, val_text),
                 "token_bytes": bpe_token_bytes(tok), "vocab_size": tok.get_vocab_size()}
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


# --------------------------------------------------------------------------------------------------------- entry


def load_corpus(data_cfg, seq_len: Optional[int] = None, log: Log = _quiet):
    """The configured corpus (a :class:`Corpus`, or for ``mqar`` a :class:`runner.tasks.mqar.MQARData`)."""
    d = data_cfg
    if d.name == "mqar":
        from .tasks.mqar import MQARData

        if seq_len is None:
            raise ValueError("data=mqar needs the sequence length (the top-level seq_len)")
        return MQARData(d, seq_len)
    if d.name == "stdlib":
        corpus = load_stdlib(d.val_fraction, d.max_bytes)
    elif d.name == "text":
        corpus = load_text(d.path, d.val_fraction, d.max_bytes)
    elif d.name == "hf":
        corpus = load_hf(d, log)
    else:
        raise ValueError(f"unknown data source {d.name!r}")
    if getattr(d, "tokenizer", "bytes") == "bpe":
        return tokenize_bpe(corpus, d, log)
    corpus.extra.update(train_bytes=int(corpus.train.numel()), val_bytes=int(corpus.val.numel()))
    return corpus


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

