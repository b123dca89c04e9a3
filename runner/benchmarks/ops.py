"""Kernel benchmark: forward + backward time of each linear-attention op against the transformers reference
functions and torch SDPA causal attention on the same shapes, with achieved GFLOP/s against the matmul peak
measured in the same run. Ratios are what to read: absolute times move with the machine's load.

    python -m runner.benchmarks.ops                       # T = 1024..8192, B=2, H=4, D=64, fp32, 2 threads
    python -m runner.benchmarks.ops --lengths 2048 8192 --ops gated_delta_rule kda --threads 2

GFLOP/s use the algorithmic FLOPs of each op's recurrent form (fwd+bwd = 3x fwd): a chunked kernel does more
arithmetic than that, so the figure is "useful work per second". For SDPA the causal count 2*T^2*D per head.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from ..cpu_runtime import describe as runtime_settings
from .timing import matmul_peak_gflops, median_time

OPS = ("gated_delta_rule", "kda", "delta_rule", "linear_attn", "lightning", "ssd")


def _inputs(op: str, B: int, T: int, H: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    k = F.normalize(k, dim=-1)
    q = F.normalize(q, dim=-1)
    beta = torch.sigmoid(r(B, T, H))
    if op == "gated_delta_rule":
        return dict(q=q, k=k, v=v, g=-F.softplus(r(B, T, H)) * 0.5, beta=beta)
    if op == "kda":
        return dict(q=q, k=k, v=v, g=-F.softplus(r(B, T, H, D)) * 0.5, beta=beta)
    if op == "delta_rule":
        return dict(q=q, k=k, v=v, beta=beta)
    if op == "linear_attn":
        return dict(q=F.elu(q) + 1, k=F.elu(k) + 1, v=v)
    if op == "lightning":
        return dict(q=q, k=k, v=v, s=torch.linspace(0.01, 0.5, H))
    if op == "ssd":
        N = D
        return dict(x=v, dt=F.softplus(r(B, T, H)) * 0.1, A=-torch.rand(H) - 0.5, B=r(B, T, 1, N) / math.sqrt(N),
                    C=r(B, T, 1, N) / math.sqrt(N))
    raise ValueError(op)


def ours(op: str):
    if op == "gated_delta_rule":
        from ..ops.gated_delta_rule import chunk_gated_delta_rule as f
    elif op == "kda":
        from ..ops.kda import chunk_kda as f
    elif op == "delta_rule":
        from ..ops.delta_rule import chunk_delta_rule as f
    elif op == "linear_attn":
        from ..ops.linear_attn import chunk_linear_attn as f
    elif op == "lightning":
        from ..ops.lightning import chunk_lightning_attn as f
    elif op == "ssd":
        from ..ops.ssd import chunk_ssd as f
    else:
        raise ValueError(op)
    return lambda kw: f(**kw)[0]


def reference(op: str):
    """transformers' pure-PyTorch fallback for the same op, or None where there is none."""
    try:
        if op == "gated_delta_rule":
            from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule as f

            return lambda kw: f(kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"])[0]
        if op == "kda":
            from transformers.models.kimi_linear.modeling_kimi_linear import chunk_kimi_delta_attention as f

            return lambda kw: f(kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"])[0]
    except ImportError:
        return None
    return None


def flops_fwd(op: str, B: int, T: int, H: int, D: int) -> float:
    """Forward FLOPs of the recurrent form: state decay/update/readout per token and head."""
    per = {"gated_delta_rule": 6, "kda": 7, "delta_rule": 6, "linear_attn": 4, "lightning": 4, "ssd": 4}[op]
    return per * B * T * H * D * D


def _fwd_bwd(fn, kw):
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point() and v.dim() > 1) for k, v in kw.items()}

    def run():
        for v in leaves.values():
            v.grad = None
        o = fn(leaves)
        o.sum().backward()

    return run


def sdpa_fwd_bwd(B, T, H, D):
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))

    def run():
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-max-len", type=int, default=8192, help="skip the (slow) references above this length")
    p.add_argument("--ref-max-s", type=float, default=30.0, help="time budget of one reference measurement")
    a = p.parse_args(argv)
    if any(t < 1 for t in a.lengths):
        p.error("--lengths must be positive")
    torch.set_num_threads(a.threads)
    con = Console(width=max(Console().width, 130))
    B, H, D = a.batch, a.heads, a.head_dim
    peak = matmul_peak_gflops()
    con.print(f"fp32, {a.threads} threads ({runtime_settings()}), B={B} H={H} D={D}; matmul peak measured now: {peak:.1f} GFLOP/s")
    sdpa = {}
    for T in a.lengths:
        sdpa[T] = median_time(sdpa_fwd_bwd(B, T, H, D), repeats=a.repeats)
    table = Table(title="forward + backward, median seconds (ratios < 1 mean ours is faster)")
    for col in ("op", "T", "ours s", "GFLOP/s", "% peak", "transformers s", "ours/transformers", "SDPA s",
                "ours/SDPA"):
        table.add_column(col, justify="right")
    scaling = {}
    for op in a.ops:
        ref = reference(op)
        for T in a.lengths:
            kw = _inputs(op, B, T, H, D)
            t = median_time(_fwd_bwd(ours(op), kw), repeats=a.repeats)
            scaling.setdefault(op, {})[T] = t
            gf = 3 * flops_fwd(op, B, T, H, D) / t / 1e9
            tr = None
            if ref is not None and T <= a.ref_max_len:
                tr = median_time(_fwd_bwd(ref, kw), repeats=max(1, a.repeats // 2), max_s=a.ref_max_s)
            table.add_row(op, str(T), f"{t:.4f}", f"{gf:.1f}", f"{100 * gf / peak:.0f}%",
                          f"{tr:.4f}" if tr else "-", f"{t / tr:.3f}" if tr else "-", f"{sdpa[T]:.4f}",
                          f"{t / sdpa[T]:.3f}")
    for T in a.lengths:
        gf = 3 * 2 * B * H * T * T * D / sdpa[T] / 1e9
        table.add_row("sdpa causal", str(T), f"{sdpa[T]:.4f}", f"{gf:.1f}", f"{100 * gf / peak:.0f}%", "-", "-",
                      f"{sdpa[T]:.4f}", "1.000")
    con.print(table)
    hi = max(a.lengths)
    pairs = [(lo, hi) for lo in sorted(a.lengths) if lo < hi]  # every length against the longest
    if pairs:
        table = Table(title=f"scaling: time(T={hi}) / time(T=lo); linear would be {hi}/lo, quadratic its square")
        table.add_column("op", justify="right")
        for lo, _ in pairs:
            table.add_column(f"lo={lo} (linear {hi / lo:g})", justify="right")
        for op, ts in [*scaling.items(), ("sdpa causal", sdpa)]:
            table.add_row(op, *(f"{ts[hi] / ts[lo]:.2f}" for lo, _ in pairs))
        con.print(table)


if __name__ == "__main__":
    main()
