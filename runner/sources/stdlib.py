"""``data=stdlib`` (the default, embedded): the Python standard library's own ``.py`` files, present on every
machine that runs Python, no download. Files are read in sorted order up to ``data.max_bytes`` and split into
train and validation *by file*, deterministically (a hash of the relative path), so no file straddles the split."""
from __future__ import annotations

import os
import sysconfig

from ..corpus import Corpus, Log, _split_files, quiet

PROVIDES = {"text"}
TOKENIZERS = ("bytes", "bpe")


def source_problems(c) -> list[str]:
    return []


def load(d, seq_len=None, log: Log = quiet) -> Corpus:
    return load_stdlib(d.val_fraction, d.max_bytes)


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
