"""The GPU check: one script to run whenever an NVIDIA GPU is at hand (a few minutes on one H100).

    python -m runner.benchmarks.gpu_check [--lengths 4096 16384 65536] [--out gpu_check.json]

1. Agreement of ``kernels=fla`` with this project's ops: every chunked op on the same inputs (B 2, H 4, head dim
   64, T 2048, float32 and bf16), relative RMS error of the outputs, final states and input gradients.
2. Whole-model agreement: the Gated DeltaNet 3:1 model with kernels=torch and kernels=fla, same weights: loss
   difference and gradient error, in float32 and under bf16 autocast.
3. Throughput and memory at long n: training step (forward + backward) tokens/s and peak allocated memory of the
   GDN 3:1 model (d_model 512, 8 layers, 8 heads) at each length, for kernels torch / fla, fp32 / bf16, eager /
   compiled, next to the all-gated-attention model (SDPA) of the same shape.
Prints tables and writes every figure to --out (JSON). Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from runner.accel import autocast


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _op_inputs(name: str, B: int, T: int, H: int, D: int, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    def decay(*shape):
        return (-torch.rand(*shape, generator=g) * 0.1).to(device=device, dtype=torch.float32).requires_grad_()

    q, k, v = rn(B, T, H, D), rn(B, T, H, D), rn(B, T, H, D)
    beta = torch.rand(B, T, H, generator=g).to(device=device, dtype=dtype).requires_grad_()
    if name == "chunk_gated_delta_rule":
        return (q, k, v, decay(B, T, H), beta), dict(use_qk_l2norm_in_kernel=True, output_final_state=True)
    if name == "chunk_kda":
        return (q, k, v, decay(B, T, H, D), beta), dict(use_qk_l2norm_in_kernel=True, output_final_state=True)
    if name == "chunk_lightning_attn":
        s = torch.linspace(0.01, 0.3, H, device=device)
        return (q, k, v, s), dict(scale=D ** -0.5, output_final_state=True)
    if name == "chunk_linear_attn":
        qf, kf = (torch.nn.functional.elu(t.detach()) + 1 for t in (q, k))
        return (qf.requires_grad_(), kf.requires_grad_(), v), dict(scale=1.0, output_final_state=True)
    if name == "chunk_ssd":
        x = rn(B, T, H, D)
        dt = torch.nn.functional.softplus(torch.randn(B, T, H, generator=g) - 2).to(device).requires_grad_()
        A = -torch.rand(H, generator=g).to(device).add(0.5)
        Bm, Cm = rn(B, T, 1, 64, scale=0.3), rn(B, T, 1, 64, scale=0.3)
        return (x, dt, A, Bm, Cm), dict(output_final_state=True)
    raise ValueError(name)


def check_ops(device, T: int = 2048) -> list[dict]:
    from runner.ops.backends import OPS, chunk_op

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name in OPS:
            outs = {}
            for kernels in ("torch", "fla"):
                args, kw = _op_inputs(name, 2, T, 4, 64, dtype, device)
                o, S = chunk_op(name, kernels)(*args, **kw)
                S = S if isinstance(S, torch.Tensor) else S[0]
                (o.float().square().mean() + S.float().square().mean()).backward()
                grads = [a.grad for a in args if isinstance(a, torch.Tensor) and a.grad is not None]
                outs[kernels] = (o.detach(), S.detach(), grads)
            (o_t, s_t, g_t), (o_f, s_f, g_f) = outs["torch"], outs["fla"]
            rows.append({"op": name, "dtype": str(dtype).replace("torch.", ""), "T": T, "out": rel(o_f, o_t),
                         "state": rel(s_f, s_t), "grad_max": max(rel(a, b) for a, b in zip(g_f, g_t))})
    return rows


def _model(attention: str, ratio_pattern: str, d: int, layers: int, heads: int, kernels: str, device):
    """The model ``python -m runner attention=<attention> pattern=<ratio_pattern> kernels=<kernels>`` builds at this
    width, depth and head count (runner.model.build_model)."""
    from runner.config import compose_config
    from runner.model import build_model

    cfg = compose_config([f"attention={attention}", "full=gated_attention", f"pattern={ratio_pattern}",
                          f"model.d_model={d}", f"model.n_layers={layers}", f"model.n_heads={heads}",
                          f"kernels={kernels}"])
    torch.manual_seed(0)
    return build_model(cfg, 256, device=device)


def check_model(device, T: int = 2048) -> list[dict]:
    rows = []
    x = torch.randint(0, 256, (2, T), device=device)
    for precision in ("fp32", "bf16"):
        res = {}
        for kernels in ("torch", "fla"):
            m = _model("gated_deltanet", "LLLF", 256, 4, 4, kernels, device)
            with autocast(precision, device):
                loss, lm = m(x, targets=x)
            loss.backward()
            res[kernels] = (lm.item(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
        (lt, gt), (lf, gf) = res["torch"], res["fla"]
        rows.append({"precision": precision, "loss_torch": lt, "loss_fla": lf, "loss_diff": abs(lt - lf),
                     "grad_rel": rel(gf, gt)})
    return rows


def throughput(device, lengths: list[int], with_fla: bool, steps: int = 3) -> list[dict]:
    """Training-step tokens/s and peak memory, GDN 3:1 (LLLF) and all gated attention (F), d_model 512, 8 layers."""
    rows = []
    configs = [("LLLF", k, p, c) for k in (("torch", "fla") if with_fla else ("torch",)) for p in ("fp32", "bf16")
               for c in (False, True)] + [("F", "torch", p, False) for p in ("fp32", "bf16")]
    for n in lengths:
        for pattern, kernels, precision, compiled in configs:
            row = {"n": n, "model": "gated_deltanet 3:1" if pattern == "LLLF" else "gated_attention 0:1",
                   "kernels": kernels, "precision": precision, "compile": compiled}
            try:
                m = _model("gated_deltanet", pattern, 512, 8, 8, kernels, device)
                fn = torch.compile(m) if compiled else m
                x = torch.randint(0, 256, (1, n), device=device)

                def step():
                    with autocast(precision, device):
                        loss, _ = fn(x, targets=x)
                    loss.backward()
                    m.zero_grad(set_to_none=True)

                step()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                torch.cuda.synchronize()
                dt = (time.perf_counter() - t0) / steps
                row.update(status="ok", step_s=dt, tokens_per_s=n / dt,
                           peak_gb=torch.cuda.max_memory_allocated() / 1e9)
            except Exception as e:  # OOM or a kernel failure is a row, not the end of the check
                row.update(status=type(e).__name__, reason=str(e)[:200])
            finally:
                m = fn = None
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--skip-throughput", action="store_true")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    from runner.ops.backends import fla_problem

    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version()}
    why = fla_problem("cuda")
    report["fla"] = why or "available"
    print(json.dumps(report), flush=True)
    if why is None:
        report["ops"] = check_ops(device)
        for r in report["ops"]:
            print(f"{r['op']:<24} {r['dtype']:<9} out {r['out']:.2e}  state {r['state']:.2e}  "
                  f"grads <= {r['grad_max']:.2e}")
        report["model"] = check_model(device)
        for r in report["model"]:
            print(f"model {r['precision']}: loss torch {r['loss_torch']:.5f} fla {r['loss_fla']:.5f} "
                  f"grad rel {r['grad_rel']:.2e}")
    if not a.skip_throughput:
        report["throughput"] = throughput(device, a.lengths, with_fla=why is None)
    from runner.common import atomic_write_text

    atomic_write_text(a.out, json.dumps(report, indent=1))
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
