"""The console's progress of the long stages (runner/progress.py): on a terminal a bar that counts the pieces of
work and goes when done; in a log file (not a terminal) nothing at all, so logs keep only the result lines."""
import io
import re

from rich.console import Console

from runner.progress import bar, spinner


def _console(terminal: bool):
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def test_a_bar_counts_the_work_on_a_terminal_and_is_gone_when_done():
    console, out = _console(True)
    with bar(console, "bench", 3) as advance:
        for n in (16, 32, 64):
            advance(0, what=f"n={n}")
            console.print(f"bench n={n}: done")  # the stage's own lines go above the bar
            advance()
    raw = out.getvalue()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # without the terminal's colour and cursor codes
    assert "bench n=16: done" in text and "bench n=64: done" in text
    assert "3/3" in text and "n=64" in text  # the bar was drawn with its count and what it works on
    assert raw.endswith("\x1b[1A\x1b[2K")  # and erased at the end: the cursor goes up and clears its line


def test_nothing_but_the_stages_lines_in_a_log_file():
    console, out = _console(False)
    with bar(console, "eval n=256", None) as advance:
        advance(8)
        console.print("eval: loss 1.0")
    with spinner(console, "data: training a BPE tokenizer"):
        pass
    assert out.getvalue() == "eval: loss 1.0\n"
