"""Stop requests: SIGINT (Ctrl-C) and SIGTERM (preemption, `kill`, a scheduler's time limit) in every stage.

While a run is active (:func:`handling`), the two signals end it cleanly wherever it is: the training loop finishes
its step, saves a checkpoint and stops (:func:`deferred` holds the signal until the loop looks at it); evaluation
and the benchmark stop at once. Either way the run records ``interrupted`` and the process exits with the shell's
code for the signal: 130 for SIGINT, 143 for SIGTERM. A second Ctrl-C while a stop is deferred stops at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (``signame``); ``exit_code`` is 128 + the signal number."""

    def __init__(self, signame: str, detail: str = ""):
        self.signame, self.detail = signame, detail
        self.exit_code = 128 + int(getattr(signal, signame, signal.SIGINT))
        super().__init__(f"{signame}{': ' + detail if detail else ''}")


_state = {"active": False, "defer": 0, "pending": None}


def _handler(signum, frame):
    name = signal.Signals(signum).name
    if _state["defer"]:
        if _state["pending"] == "SIGINT" and name == "SIGINT":
            raise Interrupted(name, "second Ctrl-C, stopping at once")
        _state["pending"] = _state["pending"] or name
        return
    raise Interrupted(name)


@contextmanager
def handling():
    """Install the handlers for the block (main thread only; elsewhere the defaults stay)."""
    if threading.current_thread() is not threading.main_thread() or _state["active"]:
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(active=True, defer=0, pending=None)
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state.update(active=False, defer=0, pending=None)


@contextmanager
def deferred():
    """Inside the block a signal is only noted (:func:`pending`); the caller decides when to stop. Leaving the
    block with a stop still pending raises :class:`Interrupted` unless the caller took it (:func:`take`)."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
    if not _state["defer"] and _state["pending"]:
        raise Interrupted(take())


def pending() -> Optional[str]:
    """The name of the signal that asked to stop, if one did."""
    return _state["pending"]


def take() -> Optional[str]:
    """The pending signal's name, clearing it (the caller handles the stop)."""
    name, _state["pending"] = _state["pending"], None
    return name


def exit_code(e: BaseException) -> int:
    """130 for Ctrl-C (a KeyboardInterrupt of any kind), 143 for SIGTERM."""
    return e.exit_code if isinstance(e, Interrupted) else 130
