"""Kernel benchmark: forward + backward time of each linear-attention op against the transformers reference
functions and torch SDPA causal attention on the same shapes, with achieved GFLOP/s against the matmul peak
measured in the same run. Ratios are what to read: absolute times move with the machine's load. Each op is timed
in rounds together with SDPA and a matmul probe (the peak's 1024 x 1024 product), one call of each per round, so
every ratio (ours/SDPA, ours/transformers, % of peak, the scaling in T) is the median of ratios of runs taken
moments apart.

    python -m runner.benchmarks.ops                       # T = 1024..8192, B=2, H=4, D=64, fp32, 2 threads
    python -m runner.benchmarks.ops --lengths 2048 8192 --ops gated_delta_rule kda --threads 2

GFLOP/s use the algorithmic FLOPs of each op's recurrent form (fwd+bwd = 3x fwd): a chunked kernel does more
arithmetic than that, so the figure is "useful work per second". For SDPA the causal count 2*T^2*D per head.
"""
from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from ..cpu_runtime import describe as runtime_settings
from .timing import interleaved_times, matmul_peak_gflops, matmul_probe, ratio

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
    con.print(f"fp32, {a.threads} threads ({runtime_settings()}), B={B} H={H} D={D}; matmul peak measured now: "
              f"{peak:.1f} GFLOP/s")
    probe, probe_flops = matmul_probe()
    sdpa = {T: sdpa_fwd_bwd(B, T, H, D) for T in a.lengths}
    sdpa_runs = {T: ([], []) for T in a.lengths}  # (SDPA seconds, probe seconds) of the same rounds
    table = Table(title="forward + backward, median seconds; ratios and % of peak are medians of per-round ratios "
                        "(each op timed in rounds with SDPA and the peak's matmul, so the ratios do not carry the "
                        "machine's drift); ratios < 1 mean ours is faster")
    for col in ("op", "T", "ours s", "GFLOP/s", "% peak", "transformers s", "ours/transformers", "SDPA s",
                "ours/SDPA"):
        table.add_column(col, justify="right")
    in_probes = {}  # op -> T -> ours' time in units of the probe's (machine speed cancelled), for the scaling
    for op in a.ops:
        ref = reference(op)
        for T in a.lengths:
            kw = _inputs(op, B, T, H, D)
            mine = _fwd_bwd(ours(op), kw)
            ts = interleaved_times({"ours": mine, "sdpa": sdpa[T], "probe": probe}, repeats=a.repeats)
            t = statistics.median(ts["ours"])
            useful = 3 * flops_fwd(op, B, T, H, D)
            share = ratio(ts["probe"], ts["ours"]) * useful / probe_flops  # useful GFLOP/s over the peak's
            sdpa_runs[T][0].extend(ts["sdpa"])
            sdpa_runs[T][1].extend(ts["probe"])
            in_probes.setdefault(op, {})[T] = ratio(ts["ours"], ts["probe"])
            tr = vs_ref = None
            if ref is not None and T <= a.ref_max_len:
                rs = interleaved_times({"ours": mine, "ref": _fwd_bwd(ref, kw)}, repeats=max(1, a.repeats // 2),
                                       max_s=a.ref_max_s)
                tr, vs_ref = statistics.median(rs["ref"]), ratio(rs["ours"], rs["ref"])
            table.add_row(op, str(T), f"{t:.4f}", f"{useful / t / 1e9:.1f}", f"{100 * share:.0f}%",
                          f"{tr:.4f}" if tr else "-", f"{vs_ref:.3f}" if tr else "-",
                          f"{statistics.median(ts['sdpa']):.4f}", f"{ratio(ts['ours'], ts['sdpa']):.3f}")
    for T in a.lengths:
        st, pt = sdpa_runs[T]
        useful = 3 * 2 * B * H * T * T * D
        t = statistics.median(st)
        table.add_row("sdpa causal", str(T), f"{t:.4f}", f"{useful / t / 1e9:.1f}",
                      f"{100 * ratio(pt, st) * useful / probe_flops:.0f}%", "-", "-", f"{t:.4f}", "1.000")
        in_probes.setdefault("sdpa causal", {})[T] = ratio(st, pt)
    con.print(table)
    hi = max(a.lengths)
    pairs = [(lo, hi) for lo in sorted(a.lengths) if lo < hi]  # every length against the longest
    if pairs:
        table = Table(title=f"scaling: time(T={hi}) / time(T=lo), each time in units of the peak's matmul timed in "
                            f"the same rounds; linear would be {hi}/lo, quadratic its square")
        table.add_column("op", justify="right")
        for lo, _ in pairs:
            table.add_column(f"lo={lo} (linear {hi / lo:g})", justify="right")
        for op, ts in in_probes.items():
            table.add_row(op, *(f"{ts[hi] / ts[lo]:.2f}" for lo, _ in pairs))
        con.print(table)


if __name__ == "__main__":
    main()
