"""Compute-matched comparison: models of different cost per step compared at equal training FLOPs, not at equal
steps. Each training row of metrics.jsonl carries its cumulative training FLOPs (``flops``: forward + backward, from
the model's ``train_flops_per_token``) and training seconds (``train_s``); the periodic validation points
(``train.eval_every``) give the loss along that axis. The budget is the largest FLOP count every job reached; each
job's validation loss there is interpolated between its two validation points around it, linearly in log FLOPs."""
from __future__ import annotations

import json
import math
import os
from typing import Optional


def val_curve(run_dir: str) -> list[dict]:
    """The validation points of a run's metrics.jsonl: [{"step", "flops", "train_s", "val_loss"}], by step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("val_loss") is not None and r.get("flops"):
                    out.append({k: r.get(k) for k in ("step", "flops", "train_s", "val_loss")})
    except OSError:
        return []
    return sorted(out, key=lambda r: r["step"])


def budget(curves: list[list[dict]]) -> Optional[float]:
    """The largest training-FLOP count that every curve reached (None without curves)."""
    ends = [c[-1]["flops"] for c in curves if c]
    return min(ends) if ends else None


def loss_at(curve: list[dict], flops: Optional[float]) -> Optional[float]:
    """The validation loss at ``flops``, interpolated linearly in log FLOPs between the validation points around
    it; None when the curve has no point at or before it."""
    if not curve or flops is None:
        return None
    pts = [(r["flops"], r["val_loss"]) for r in curve if r["flops"] > 0]
    for (f0, v0), (f1, v1) in zip(pts, pts[1:]):
        if f0 <= flops <= f1:
            if f1 == f0:
                return v1
            w = (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return v0 + w * (v1 - v0)
    if pts and math.isclose(pts[-1][0], flops, rel_tol=1e-12):
        return pts[-1][1]
    return None
