"""``data=text``: a local text file (the last ``data.val_fraction`` of its bytes is validation) or a folder of text
files (split by file, as the embedded corpus), read through the ``datasets`` library's ``text`` builder. A file that
is binary, not UTF-8 or empty, and a folder without text files, stop the run with what to do."""
from __future__ import annotations

import hashlib
import os

from ..corpus import Corpus, DataSettingError, Log, _char_boundary, _split_files, _to_tensor, quiet

PROVIDES = {"text"}
TOKENIZERS = ("bytes", "bpe")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text", ".json", ".csv", ".tex", ".html")


def source_problems(c) -> list[str]:
    d = c.data
    if not d.path:
        return ["data=text needs data.path=<a text file or a folder of text files>"]
    if not os.path.exists(os.path.expanduser(d.path)):
        return [f"data.path={d.path!r} does not exist (looked in {os.path.abspath(os.path.expanduser(d.path))}); "
                f"give an existing text file or folder"]
    return []


def load(d, seq_len=None, log: Log = quiet) -> Corpus:
    return load_text(d.path, d.val_fraction, d.max_bytes)


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
