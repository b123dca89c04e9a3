"""Progress of a long stage on the console (rich): a bar that goes once the stage is done, so that the log keeps the
stage's own result lines, and nothing at all where the console is not a terminal (a log file, a sweep's job)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def bar(console: Console, label: str, total: Optional[int]) -> Iterator[Callable[..., None]]:
    """``with bar(console, "eval", n) as advance:`` ... ``advance()`` (or ``advance(k)``, ``advance(what="n=1024")``)
    after each of the ``total`` pieces of work (None: not known ahead)."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as p:
        task = p.add_task(label, total=total, what="")

        def advance(k: int = 1, what: str | None = None) -> None:
            p.update(task, advance=k, **({"what": what} if what is not None else {}))

        yield advance


@contextlib.contextmanager
def spinner(console: Console, what: str) -> Iterator[None]:
    """A spinner with ``what`` while work of unknown length runs (tokenizer training)."""
    if not console.is_terminal:
        yield
        return
    with console.status(what):
        yield
