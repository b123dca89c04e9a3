"""The data stage: the configured source's data (``data.name``, a module of the registry runner/sources), in the
configured tokenization (``data.tokenizer``: the bytes, or byte-level BPE, runner/bpe.py).

Sources: ``stdlib`` (default, embedded: the Python standard library's own source), ``text`` (a local file or
folder), ``hf`` (a Hugging Face dataset or a local dataset folder), ``mqar`` (synthetic recall, runner/tasks). Every
corpus records a fingerprint (sha256 of the files' relative paths and contents, or of the dataset rows) in the
results, so two runs can tell whether they saw the same text.
"""
from __future__ import annotations

from typing import Optional

from . import sources
from .corpus import Corpus, DataSettingError, DataUnavailable, Log, quiet  # noqa: F401 - the data's vocabulary
from .sources.hf import hub_unreachable  # noqa: F401 - probed by the tests


def load_corpus(data_cfg, seq_len: Optional[int] = None, log: Log = quiet, console=None):
    """The configured data: the source's, then tokenized as ``data.tokenizer`` says (``console``: where the
    tokenizer's training shows that it runs)."""
    d = data_cfg
    data = sources.get(d.name).load(d, seq_len, log)
    if getattr(d, "tokenizer", "bytes") == "bpe":
        from .bpe import tokenize_bpe

        return tokenize_bpe(data, d, log, console)
    if isinstance(data, Corpus):
        data.extra.update(train_bytes=int(data.train.numel()), val_bytes=int(data.val.numel()))
    return data
