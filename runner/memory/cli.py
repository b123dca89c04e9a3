"""``python -m runner.memory``: the command line of the memory calculator."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .arch import DTYPES
from .calculator import context_lengths, print_tables, plot, rows, write_csv
from .ours import ours
from .presets import presets

# -- command line ---------------------------------------------------------------------------------------------


def _preset_name(text: str) -> str:
    names = list(presets())
    for name in names:
        if name.lower() == text.lower():
            return name
    raise argparse.ArgumentTypeError(f"invalid preset {text!r} (choose from {', '.join(names)})")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def parser() -> argparse.ArgumentParser:
    names = list(presets())
    ap = argparse.ArgumentParser(
        prog="python -m runner.memory",
        description="Analytic KV-cache / recurrent-state memory versus context length for published hybrid "
                    "architectures and this repo's models.",
        epilog=f"presets: {', '.join(names)}. Without --preset and --ours every preset is shown; with only "
               "--ours, only ours. --ours takes key=value pairs: model (conf/model), attention, full (mixer "
               "names), ratio or pattern, and mixer options as attention.<key>=value / full.<key>=value.")
    ap.add_argument("--preset", action="append", type=_preset_name, metavar="NAME",
                    help=f"a preset to show (repeatable); one of: {', '.join(names)}")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16",
                    help="element type of every cache/state (default bf16)")
    ap.add_argument("--batch", type=_positive, default=1, help="sequences (default 1)")
    ap.add_argument("--min-len", type=_positive, default=4096, help="shortest context in the table (default 4096)")
    ap.add_argument("--max-len", type=_positive, default=1 << 20, help="longest context (default 1048576)")
    ap.add_argument("--plot", metavar="PNG", help="write a log-log plot of bytes vs context here")
    ap.add_argument("--csv", metavar="CSV", help="write every figure in long form here")
    ap.add_argument("--ours", action="append", nargs="?", const="", metavar="SPEC",
                    help="one of this repo's models, e.g. model=small,attention=gated_deltanet,"
                         "full=gated_attention,ratio=3:1 (repeatable; missing keys take those defaults)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.min_len > args.max_len:
        ap.error(f"--min-len {args.min_len} is larger than --max-len {args.max_len}")
    table = presets()
    selected = [table[n] for n in dict.fromkeys(args.preset or [])]
    for spec in args.ours or []:
        try:
            selected.append(ours(spec))
        except ValueError as e:
            ap.error(f"--ours {spec!r}: {e}")
    if not selected:
        selected = list(table.values())
    lengths = context_lengths(args.min_len, args.max_len)
    dtype = DTYPES[args.dtype]
    print_tables(selected, lengths, dtype, args.batch)
    if args.csv:
        write_csv(args.csv, rows(selected, lengths, dtype, args.batch))
        print(f"wrote {args.csv}")
    if args.plot:
        plot(args.plot, selected, context_lengths(min(1024, args.min_len), args.max_len), dtype, args.batch)
        print(f"wrote {args.plot}")
    return 0
