"""Which layers are efficient ('L', the `attention=` mixer) and which are full ('F', the `full=` mixer).

A ratio ``L:F`` means L efficient layers for every F full layers, the full ones closing each group as in
Qwen3-Next (``3:1`` over 8 layers -> LLLFLLLF). When the group size L+F does not divide the layer count, the
number of full layers is n*F/(L+F) rounded to the nearest whole number (halves up), at least one when F > 0 and
at most n-1 when L > 0 too; the full layers are spread evenly and the last layer is always full. A ``pattern``
such as ``LLLF`` is given explicitly; it is repeated when its length divides the number of layers.
"""
from __future__ import annotations

import math
import re

_RATIO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_ratio(ratio) -> tuple[int, int]:
    """'3:1' -> (3, 1), with errors that say what would be right."""
    text = str(ratio)
    m = _RATIO.match(text)
    if not m:
        raise ValueError(f"ratio {text!r} is not of the form 'L:F' with whole numbers, e.g. '3:1' "
                         f"(3 efficient layers per full layer), '1:0' (all efficient) or '0:1' (all full)")
    n_eff, n_full = int(m.group(1)), int(m.group(2))
    if n_eff == 0 and n_full == 0:
        raise ValueError(f"ratio {text!r} has no layers at all; use e.g. '3:1', '1:0' (all efficient) or '0:1' (all full)")
    return n_eff, n_full


def layer_types_from_ratio(n_layers: int, ratio) -> list[str]:
    n_eff, n_full = parse_ratio(ratio)
    if n_layers < 1:
        raise ValueError(f"model.n_layers must be >= 1, got {n_layers}")
    if n_full == 0:
        return ["L"] * n_layers
    if n_eff == 0:
        return ["F"] * n_layers
    k = math.floor(n_layers * n_full / (n_eff + n_full) + 0.5)
    k = max(1, min(k, n_layers - 1)) if n_layers > 1 else 1
    full_at = {math.floor(j * n_layers / k + 0.5) - 1 for j in range(1, k + 1)}
    return ["F" if i in full_at else "L" for i in range(n_layers)]


def layer_types_from_pattern(n_layers: int, pattern: str) -> list[str]:
    p = str(pattern).strip().upper()
    if not p or set(p) - {"L", "F"}:
        raise ValueError(f"pattern {pattern!r} must be a string of 'L' (efficient) and 'F' (full) layers, e.g. 'LLLF'")
    if n_layers % len(p):
        raise ValueError(f"pattern {pattern!r} has {len(p)} layers, which does not divide model.n_layers={n_layers}; "
                         f"give {n_layers} letters or a pattern whose length divides {n_layers}")
    return list(p * (n_layers // len(p)))


def layer_types(n_layers: int, ratio="3:1", pattern: str | None = None) -> list[str]:
    """The layout of the hybrid: a list of 'L' / 'F', one per layer. ``pattern`` wins over ``ratio``."""
    if pattern:
        return layer_types_from_pattern(n_layers, pattern)
    return layer_types_from_ratio(n_layers, ratio)
