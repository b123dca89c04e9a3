"""Errors whose message already says what was wrong and what to do instead, and the translation of the failures a
user can act on (a full disk, a read-only folder, too little memory) into such errors.

A single run prints the message and exits with ``exit_code`` (1: the run failed, or could not start, for a reason
outside the command line; 2: what the command asks for does not fit the run folder), without a stack trace after
it unless ``HYDRA_FULL_ERROR=1``; a sweep records it in the job's results and goes on.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Optional


class ActionableError(Exception):
    """Base of the errors the user can act on from the message alone (no stack trace needed)."""

    exit_code = 1


class DiskFull(ActionableError, OSError):
    pass


class NotWritable(ActionableError, OSError):
    pass


class OutOfMemory(ActionableError, MemoryError):
    pass


def _free(path: Optional[str]) -> str:
    d = path
    while d and not os.path.exists(d):
        d = os.path.dirname(d)
    try:
        return f"{shutil.disk_usage(d or '.').free / 1e6:,.1f} MB free there"
    except OSError:
        return "free space unknown"


def is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                            or "cannot allocate memory" in msg)


PREPARING = {"data": " while loading the data", "model": " while building the model and loading its weights"}


def during(stage: Optional[str]) -> str:
    """' during the train stage', ' while loading the data', or '' (no stage known)."""
    if not stage:
        return ""
    return PREPARING.get(stage, f" during the {stage} stage")


def explain(e: BaseException, stage: Optional[str] = None, cfg=None) -> Optional[ActionableError]:
    """The actionable form of ``e``, or None when it is not one the user can act on (a bug: keep the traceback)."""
    if isinstance(e, ActionableError):
        return e
    where = during(stage)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        path = e.filename if isinstance(e.filename, str) else None
        return DiskFull(f"the disk is full{where}: no space left to write {path or 'a file'} ({_free(path)}). "
                        f"Free some space, or put the run on another disk (hydra.run.dir=...; data.cache_dir=... for "
                        f"the tokenizer cache); rerunning the same command then resumes from the last checkpoint")
    if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        path = e.filename if isinstance(e.filename, str) else "a file"
        return NotWritable(f"cannot write {path}{where} ({e.strerror}): choose a folder you can write to "
                           f"(hydra.run.dir=...; data.cache_dir=... for the tokenizer cache)")
    if is_oom(e):
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return OutOfMemory(f"out of memory{where}: {first}. {_memory_advice(stage, cfg)}")
    return None


def _memory_advice(stage: Optional[str], cfg) -> str:
    """What to lower, for the stage that ran out of memory, with the values now."""
    def now(*keys) -> str:
        if cfg is None:
            return ""
        from omegaconf import OmegaConf

        vals = [f"{k}={OmegaConf.select(cfg, k)}" for k in keys]
        return f" (now {', '.join(vals)})"

    if stage == "eval":
        return f"Lower eval.batch_size or eval.extrapolation_factors{now('eval.batch_size', 'seq_len')}"
    if stage == "bench":
        return f"Shorten bench.lengths or lower bench.batch_size{now('bench.lengths', 'bench.batch_size')}"
    return (f"Lower train.batch_size or seq_len, or choose a smaller model (model=...)"
            f"{now('train.batch_size', 'seq_len', 'model.name')}")
