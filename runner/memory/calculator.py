"""The calculator's function API (:func:`cache_bytes` of one configuration at one length, :func:`resolve` of a name
or a model to a configuration) and its outputs: tables on the console, long-form CSV and the log-log plot."""
from __future__ import annotations

import csv
import math
from typing import Iterable, Optional, Sequence

from .arch import PARTS, PART_NAMES, Arch, Layer, ModelArch, Preset, dtype_name
from .ours import ours
from .presets import find_preset

# -- the function API -----------------------------------------------------------------------------------------


def resolve(preset_or_layers):
    """A configuration from: a preset name ('kimi-linear-48b-a3b' -> its published configuration), 'preset/config'
    ('reference-48L/all-MHA'), 'ours:model=...,...', a Preset, an Arch / ModelArch, a list of Layers, or a model
    with ``state_bytes``."""
    x = preset_or_layers
    if isinstance(x, str):
        if x.lower().startswith("ours"):
            p = ours(x.split(":", 1)[1] if ":" in x else "")
            return p.config(p.main)
        if "/" in x:
            name, config = x.split("/", 1)
            return find_preset(name).config(config)
        p = find_preset(x)
        return p.config(p.main)
    if isinstance(x, Preset):
        return x.config(x.main)
    if isinstance(x, (Arch, ModelArch)):
        return x
    if isinstance(x, Layer):
        return Arch("layers", (x,))
    if isinstance(x, (list, tuple)) and all(isinstance(v, Layer) for v in x):
        return Arch("layers", tuple(x))
    if hasattr(x, "mixers") and hasattr(x, "layer_types"):
        return ModelArch(type(x).__name__, x)
    raise TypeError(f"cannot compute cache bytes of {type(x).__name__}; give a preset name, 'preset/config', "
                    f"a Preset, an Arch, a list of Layer or a HybridLM")


def cache_bytes(preset_or_layers, n: int, dtype="bf16", batch: int = 1, parts: Optional[Iterable[str]] = None) -> int:
    """Bytes of cache/state one forward keeps for ``batch`` sequences after ``n`` tokens. ``parts`` restricts
    the count to some of 'kv', 'latent', 'matrix', 'conv', 'normaliser' (analytic configurations only)."""
    if n < 0 or batch < 1:
        raise ValueError(f"need n >= 0 and batch >= 1, got n={n}, batch={batch}")
    if parts is not None:
        bad = sorted(set(parts) - set(PARTS))
        if bad:
            raise ValueError(f"unknown part(s) {bad}; allowed: {list(PARTS)}")
    return int(resolve(preset_or_layers).bytes(int(n), dtype, int(batch), parts))


# -- formatting -----------------------------------------------------------------------------------------------


def human_bytes(b: float) -> str:
    """Decimal units, 3 significant figures: 51539607552 -> '51.5 GB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            v = b / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{int(b)} B"


def human_tokens(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return f"{n:,}"


def context_lengths(min_len: int = 4096, max_len: int = 1 << 20) -> list:
    """Powers of two from min_len up to max_len, with min_len and max_len themselves always included."""
    out = [min_len]
    p = 1 << math.ceil(math.log2(min_len))
    while p <= max_len:
        if p > out[-1]:
            out.append(p)
        p <<= 1
    if out[-1] != max_len and max_len > min_len:
        out.append(max_len)
    return out


def rows(selected: Sequence[Preset], lengths: Sequence[int], dtype, batch: int) -> list:
    """Long-form records: one per (preset, configuration, length)."""
    out = []
    for p in selected:
        base = p.config(p.baseline) if p.baseline else None
        for c in p.configs:
            for n in lengths:
                b = c.bytes(n, dtype, batch)
                full = base.bytes(n, dtype, batch) if base is not None else None
                out.append({"preset": p.name, "configuration": c.name, "role": c.role, "context": n,
                            "dtype": dtype_name(dtype), "batch": batch, "bytes": b,
                            "fraction_of_full": (b / full) if full else None})
    return out


def print_tables(selected: Sequence[Preset], lengths: Sequence[int], dtype, batch: int, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    for p in selected:
        base = p.config(p.baseline) if p.baseline else None
        others = [c for c in p.configs if base is not None and c is not base]
        console.print(f"[bold]{escape(p.name)}[/bold]: {escape(p.title)}")
        t = Table()
        t.add_column("context", justify="right")
        for c in p.configs:
            t.add_column(c.name, justify="right")
        for c in others:
            t.add_column(f"{c.name} / full", justify="right", style="cyan")
        for n in lengths:
            vals = [c.bytes(n, dtype, batch) for c in p.configs]
            full = base.bytes(n, dtype, batch) if base is not None else None
            ratios = [f"{c.bytes(n, dtype, batch) / full:.3g}" if full else "-" for c in others]
            t.add_row(human_tokens(n), *[human_bytes(v) for v in vals], *ratios)
        console.print(t)
        console.print(f"cache/state for batch {batch} in {dtype_name(dtype)}, decimal units (1 GB = 1e9 B)"
                      + (f"; ratios are configuration / {escape(base.name)}" if others else ""))
        console.print(escape(p.description), style="dim")
        n = lengths[-1]
        for c in p.configs:
            parts = c.breakdown(n, dtype, batch)
            detail = " + ".join(f"{PART_NAMES.get(k, k)} {human_bytes(v)}" for k, v in parts.items())
            console.print(escape(f"  {c.name}: {c.composition()}\n    at {human_tokens(n)}: {detail or '0 B'}"
                                 f" = {human_bytes(c.bytes(n, dtype, batch))}"))
        if base is not None:
            for c in others:
                full = base.bytes(n, dtype, batch)
                if full:
                    frac = c.bytes(n, dtype, batch) / full
                    console.print(f"  [bold]{escape(c.name)}[/bold] keeps {frac:.1%} of {escape(base.name)}'s cache at "
                                  f"{human_tokens(n)} tokens ({1 - frac:.1%} less)")
        console.print()


def write_csv(path: str, records: Sequence[dict]) -> None:
    cols = ["preset", "configuration", "role", "context", "dtype", "batch", "bytes", "fraction_of_full"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            frac = r["fraction_of_full"]
            w.writerow({**r, "fraction_of_full": "" if frac is None else f"{frac:.6g}"})


def plot(path: str, selected: Sequence[Preset], lengths: Sequence[int], dtype, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    styles = {"full": "--", "hybrid": "-", "linear": ":"}
    fig, ax = plt.subplots(figsize=(10, 6.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(selected):
        for c in p.configs:
            ys = [max(c.bytes(n, dtype, batch), 1) for n in lengths]
            ax.plot(lengths, ys, styles.get(c.role, "-."), marker="o", markersize=3,
                    color=colors[i % len(colors)], label=f"{p.name}: {c.name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_tokens(int(v)) if v >= 1 else ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.set_xlabel("context length n (tokens, log scale)")
    ax.set_ylabel("cache / state memory (bytes, decimal units, log scale)")
    ax.set_title(f"Cache / state memory vs context: {dtype_name(dtype)}, batch {batch}\n"
                 "dashed: all full attention, solid: hybrid, dotted: all linear")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
