"""The run folder and what it promises: whatever happens to a run, its folder says truthfully what happened.

A run folder (``hydra.run.dir``, a sweep job's folder, or ``resume=``) holds one run: the record ``results.json``,
the training curve ``metrics.jsonl`` and the checkpoint ``checkpoints/last.pt``.

* **One writer.** A run holds an exclusive lock (``fcntl.flock`` on ``.lock``) from its start to its end; a second
  process is refused with the holder's pid, host and start time. The lock goes with the process, however it ends.
* **Every invocation is an attempt**, listed in ``results.json`` under ``attempts``: when, which process, which
  stages, how it ended (``completed``, ``failed``, ``interrupted``, ``refused``, ``invalid_config``), and for a later
  attempt the settings it changed. An attempt that ended without recording its outcome (SIGKILL, a power cut) is
  found by the next one (its lock is free, its entry still ``running``) and marked ``died``.
* **A completed record is never downgraded.** While a later attempt runs on a completed record (a re-evaluation,
  another bench ladder), and if it fails, is interrupted or is refused, ``results.json`` keeps the completed record
  as it was; that attempt's outcome and whatever it measured are in its own entry. Only an attempt that completes
  replaces sections (``train``, ``eval``, ``bench``, ``sample``); the replaced ones are kept in the entry of the
  attempt that had produced them (``superseded``), and ``produced_by`` says which attempt made each section.
* **Nothing half-written.** Files are written atomically (:func:`runner.common.atomic_write`); temporary files left by
  a dead writer are removed by the next attempt. A reserve file (``.reserve``, 1 MiB) is held during a run and
  released to write the final record when the disk is full.
"""
from __future__ import annotations

import copy
import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from .errors import ActionableError

LOCK = ".lock"
RESERVE = ".reserve"
RESERVE_BYTES = 1 << 20
STAGES = ("train", "eval", "bench", "sample")  # in the order they run (runner/config.STAGES)
SECTIONS = ("train", "eval", "bench", "bench_scaling", "plots", "sample")
DONE = "completed"


class FolderError(ActionableError):
    """The run folder cannot be used (not a folder, not writable, or held by another run)."""


class FolderBusy(FolderError):
    pass


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------------------ the lock

_held: dict[str, int] = {}  # real path of a folder -> the descriptor holding its lock, in this process


def _prepare(path: str) -> str:
    """The folder, created if needed; a clear error when it cannot be."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FolderError(f"the run folder {path} is a file, not a folder: choose another run folder "
                          f"(hydra.run.dir=..., or hydra.sweep.dir=... for a sweep)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise FolderError(f"cannot create the run folder {path} ({e.strerror or e}): choose a folder you can write "
                          f"to (hydra.run.dir=..., or hydra.sweep.dir=... for a sweep)") from None
    return path


def acquire(path: str) -> str:
    """Take the folder's lock for this process (a no-op when this process holds it already); returns the folder's
    absolute path. Refuses when the folder cannot be written, or when another process holds the lock."""
    path = _prepare(path)
    key = os.path.realpath(path)
    if key in _held:
        return path
    lock = os.path.join(path, LOCK)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise FolderError(f"cannot write to the run folder {path} ({e.strerror or e}): choose a folder you can "
                          f"write to (hydra.run.dir=...)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        try:
            who = json.loads(holder)
            said = f"pid {who.get('pid')} on {who.get('host')}, started {who.get('started')}"
        except ValueError:
            said = "another process"
        raise FolderBusy(f"another run ({said}) is writing to {path}; wait for it to end, or choose another run "
                         f"folder (hydra.run.dir=...)") from None
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now()}).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
    except OSError:
        pass  # the lock holds without the note (a full disk): the refusal then says "another process"
    _held[key] = fd
    return path


def release(path: str) -> None:
    fd = _held.pop(os.path.realpath(os.path.abspath(path)), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


def in_use(path: str) -> bool:
    """Whether some process holds the folder's lock now (a record saying 'running' in a free folder is dead)."""
    lock = os.path.join(path, LOCK)
    if holds(path):
        return True
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def holds(path: str) -> bool:
    return os.path.realpath(os.path.abspath(path)) in _held


# ------------------------------------------------------------------------------------- leftovers and the reserve


def remove_leftovers(path: str) -> list[str]:
    """Temporary files of writers that died mid-write (``.tmp-*``, see common.atomic_write) in the folder and its
    checkpoints/ folder. Only called while holding the lock, so no live writer owns them."""
    removed = []
    for d in (path, os.path.join(path, "checkpoints")):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(d, name))
                    removed.append(os.path.join(d, name))
                except OSError:
                    pass
    return removed


def reserve(path: str) -> bool:
    """Hold RESERVE_BYTES of disk in the folder for the final record (best effort: False when it cannot)."""
    target = os.path.join(path, RESERVE)
    try:
        with open(target, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        try:
            os.unlink(target)
        except OSError:
            pass
        return False


def free_reserve(path: str) -> None:
    try:
        os.unlink(os.path.join(path, RESERVE))
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------- the record


def read_record(path: str) -> tuple[Optional[dict], Optional[str]]:
    """The folder's results.json (None if there is none) and, when it could not be read, what was done about it:
    an unreadable record is moved aside to results.json.unreadable-<time>, never overwritten in place."""
    target = os.path.join(path, "results.json")
    if not os.path.exists(target):
        return None, None
    try:
        with open(target) as f:
            rec = json.load(f)
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
        return rec, None
    except (OSError, ValueError) as e:
        aside = f"{target}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            os.replace(target, aside)
            return None, f"{target} could not be read ({type(e).__name__}: {e}); kept as {aside}"
        except OSError:
            return None, f"{target} could not be read ({type(e).__name__}: {e})"


def changes(old: Optional[dict], new: dict, prefix: str = "") -> dict:
    """Dotted keys whose values differ between two configs: {key: [old, new]}."""
    out: dict = {}
    old = old or {}
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(changes(a, b, key + "."))
        elif a != b:
            out[key] = [a, b]
    return out


class Record:
    """What results.json says, for one attempt on one folder (see the module docstring for the rules).

    ``previous`` is the folder's record before this attempt (None for a new folder). ``same_weights``: this attempt
    uses the weights of the previous record's sections (it resumes or loads the folder's checkpoint), so those
    sections stay; otherwise they were measured on other weights and move into their attempts' entries."""

    def __init__(self, config: dict, previous: Optional[dict] = None, stages=(), same_weights: bool = True):
        self.previous = copy.deepcopy(previous) if previous else {}
        self.overlay = self.previous.get("status") == DONE  # a completed record stays as it is until we complete
        self.attempts = mark_dead(self.previous)
        self.attempt: dict = {"attempt": len(self.attempts) + 1, "pid": os.getpid(), "host": socket.gethostname(),
                              "started": now(), "stages": list(stages), "status": "running"}
        if self.previous.get("config") is not None:
            diff = changes(self.previous.get("config"), config)
            if diff:
                self.attempt["changes"] = diff
        self.attempts.append(self.attempt)
        self.config = config
        self.meta: dict = {}
        self.sections: dict = {}  # what this attempt measured
        self.carried = {s: self.previous[s] for s in SECTIONS if s in self.previous}
        self.produced_by = dict(self.previous.get("produced_by") or {s: 1 for s in self.carried})
        if not same_weights:
            for s in list(self.carried):
                self._supersede(s)
            self.carried = {}
        self.status, self.error = "running", None

    def _supersede(self, section: str) -> None:
        """Keep a replaced section in the entry of the attempt that produced it."""
        by = self.produced_by.pop(section, None)
        entry = next((a for a in self.attempts if a.get("attempt") == by), None)
        if entry is not None and section in self.carried:
            entry.setdefault("superseded", {})[section] = self.carried[section]

    def set(self, **fields) -> None:
        for k, v in fields.items():
            (self.sections if k in SECTIONS else self.meta)[k] = v

    def get(self, key: str, default=None):
        if key in self.sections:
            return self.sections[key]
        if key in self.meta:
            return self.meta[key]
        return self.results().get(key, default)

    def end(self, status: str, error: Optional[str] = None) -> None:
        self.status, self.error = status, error
        self.attempt.update(status=status, ended=now())
        if error:
            self.attempt["error"] = error
        if status == DONE:
            for s in self.sections:
                if s in self.carried:
                    self._supersede(s)

    def _config(self) -> dict:
        """This attempt's config, with the settings of the stages it did not run taken from the record whose
        sections it keeps, so that the config describes every section (stages lists the stages of all of them)."""
        prev = self.previous.get("config") or {}
        ran = list(self.config.get("stages") or [])
        kept = [s for s in STAGES if s not in ran and s in self.carried]
        if not kept:
            return self.config
        out = copy.deepcopy(self.config)
        for stage in kept:
            if stage in prev:
                out[stage] = copy.deepcopy(prev[stage])
        out["stages"] = [s for s in STAGES if s in ran or s in kept]
        return out

    def results(self) -> dict:
        """The record as it is to be written now."""
        if self.overlay and self.status != DONE:
            out = {k: v for k, v in self.previous.items() if k != "attempts"}
            if self.sections or self.meta:  # measured by this attempt, not (yet) part of the completed record
                self.attempt["results"] = {**self.meta, **self.sections}
        else:
            self.attempt.pop("results", None)
            out = {k: v for k, v in self.previous.items()
                   if k not in SECTIONS and k not in ("attempts", "error", "produced_by", "status", "config")}
            out.update(status=self.status, config=self._config())
            out.update(self.meta)
            out.update(self.carried)
            out.update(self.sections)
            if self.error:
                out["error"] = self.error
            produced = {s: v for s, v in self.produced_by.items() if s in out}
            produced.update({s: self.attempt["attempt"] for s in self.sections})
            out["produced_by"] = produced
        out["attempts"] = self.attempts
        return out


def mark_dead(record: dict) -> list[dict]:
    """The record's attempts, a copy, with any still 'running' marked 'died' (only called while holding the
    lock, so no live process owns them). A record written before attempts were kept counts as attempt 1."""
    attempts = copy.deepcopy(record.get("attempts") or [])
    if record and not attempts:
        attempts = [{"attempt": 1, "status": record.get("status"),
                     "stages": (record.get("config") or {}).get("stages")}]
    for a in attempts:
        if a.get("status") == "running":
            a["status"] = "died"
            a["error"] = ("the process ended without recording how (killed with SIGKILL, out of memory, or the "
                          "machine stopped)")
    return attempts


def died_record(record: dict) -> dict:
    """A record whose own status says 'running' while no process holds its lock: the status becomes 'died'."""
    out = dict(record)
    out["attempts"] = mark_dead(record)
    if out.get("status") == "running":
        out["status"] = "died"
        out["error"] = out["attempts"][-1].get("error") if out["attempts"] else "died"
    return out


def append_attempt(previous: Optional[dict], config: dict, stages, status: str, error: str) -> dict:
    """The record with one more attempt that ended before any work (refused, invalid): a completed or otherwise
    existing record keeps everything it said."""
    rec = Record(config, previous, stages)
    rec.end(status, error)
    if previous:
        out = dict(copy.deepcopy(previous))
        out["attempts"] = rec.attempts
        return out
    return rec.results()


# ------------------------------------------------------------------------------------------- the Hydra hook

from hydra.experimental.callback import Callback  # noqa: E402 - the hook only; the rules above need no Hydra


class FolderCallback(Callback):
    """Hydra callback: before Hydra writes anything into the run folder (its .hydra/ files), check that the folder
    can be used and take its lock, so that a second process started into the same folder is refused before it
    touches it; for a sweep, check that the sweep folder can be created. A folder that cannot be used ends the
    command with exit status 1 and the message alone."""

    def __init__(self, **_) -> None:
        pass

    @staticmethod
    def _fail(e: FolderError) -> None:
        from rich.console import Console

        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}")
        raise SystemExit(e.exit_code)

    def on_run_start(self, config, **kwargs) -> None:
        try:
            acquire(str(config.hydra.run.dir))
        except FolderError as e:
            self._fail(e)

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            _prepare(str(config.hydra.sweep.dir))
        except FolderError as e:
            self._fail(e)
