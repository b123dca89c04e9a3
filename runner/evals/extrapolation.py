"""``extrapolation``: the ``ppl`` scores at ``eval.extrapolation_factors`` (default 2x and 4x) times the training
length, over the same validation tokens, beside 1x; ``loss_beyond`` is the loss at the positions past the training
length only (does the model use, or get lost in, context it never trained on?)."""
from __future__ import annotations

NEEDS = "text"  # windows longer than the training length: running text


def factors(ev) -> list[int]:
    return sorted(set(int(f) for f in ev.extrapolation_factors))


def task_problems(c) -> list[str]:
    fs = list(c.eval.extrapolation_factors)
    if fs and all(isinstance(f, int) and 2 <= f <= 1024 for f in fs):
        return []
    return [f"eval.extrapolation_factors={fs} must be a non-empty list of whole numbers in [2, 1024], e.g. [2, 4]"]


def run(ctx) -> dict:
    L, rows = ctx.cfg.seq_len, []
    for f in [1] + factors(ctx.cfg.eval):
        s = ctx.scores(f)
        row = {"factor": f, "seq_len": f * L}
        if isinstance(s, str):
            row.update(status="skipped", reason=s)
        else:
            row.update(status="ok", **s.summary())
            if f > 1:
                row["loss_beyond"] = s.summary(positions=slice(L, None))["loss"]
        rows.append(row)
    return {"extrapolation": rows}


def describe(ev: dict) -> list[str]:
    lines = []
    for r in ev.get("extrapolation", []):
        if r["status"] == "ok":
            extra = f", past the training length {r['loss_beyond']:.4f}" if "loss_beyond" in r else ""
            lines.append(f"  extrapolation {r['factor']}x (n={r['seq_len']}): loss {r['loss']:.4f}, bpb "
                         f"{r['bpb']:.4f}{extra}")
        else:
            lines.append(f"  extrapolation {r['factor']}x (n={r['seq_len']}): skipped ({r['reason']})")
    return lines
