"""Kernel backends of the linear mixers' chunked (training / prefill) ops, chosen with ``kernels=``.

* ``torch`` (default): the ops of this package, pure PyTorch, any device.
* ``fla``: the Triton kernels of flash-linear-attention (Yang et al., ``pip install -e ".[gpu]"``), NVIDIA GPUs
  only. Each function below has the signature and the results of the ``torch`` op of the same name, so the
  mixers call either one the same way; decoding (a few tokens at a time) keeps the ``torch`` recurrent ops.

The adapters pass fla the layouts it documents: q, k (B, T, H, K), v (B, T, HV, V), states (B, HV, K, V) with K
first, log decays (never the decay itself), and an explicit ``scale``. Where fla's op and ours differ in what
they compute, the difference is bridged here: linear attention's normaliser rides as an extra value column of
ones (as in :mod:`runner.ops.linear_attn`), lightning attention's fixed decay is simple GLA's ``g_gamma``, and the
Mamba2 scan is simple GLA after :func:`runner.ops.ssd._map`. Agreement with the ``torch`` ops (outputs, states,
gradients) is checked on a GPU by ``python -m runner.benchmarks.gpu_check`` and ``tests/test_gpu.py``.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F

KERNELS = ("torch", "fla")
OPS = ("chunk_gated_delta_rule", "chunk_kda", "chunk_lightning_attn", "chunk_linear_attn", "chunk_ssd")
_TORCH_MODULES = {
    "chunk_gated_delta_rule": "runner.ops.gated_delta_rule",
    "chunk_kda": "runner.ops.kda",
    "chunk_lightning_attn": "runner.ops.lightning",
    "chunk_linear_attn": "runner.ops.linear_attn",
    "chunk_ssd": "runner.ops.ssd",
}


def fla_problem(device_type: str) -> Optional[str]:
    """Why ``kernels=fla`` cannot run here (None when it can)."""
    if device_type != "cuda":
        return ("kernels=fla runs flash-linear-attention's Triton kernels, which need an NVIDIA GPU (the device "
                f"here is {device_type!r}); use kernels=torch, or device=cuda on a GPU machine")
    try:
        importlib.import_module("fla.ops.gated_delta_rule")
    except Exception as e:  # ImportError, or triton failing to initialise
        return (f"kernels=fla needs the flash-linear-attention package ({type(e).__name__}: {e}); install it "
                f"with pip install -e '.[gpu]' (or pip install flash-linear-attention), or use kernels=torch")
    return None


def chunk_op(name: str, kernels: str = "torch") -> Callable:
    """The chunked op ``name`` (one of :data:`OPS`) of backend ``kernels``."""
    if name not in OPS:
        raise ValueError(f"no chunked op {name!r}; known: {list(OPS)}")
    if kernels == "torch":
        return getattr(importlib.import_module(_TORCH_MODULES[name]), name)
    if kernels == "fla":
        return globals()[f"_fla_{name}"]
    raise ValueError(f"kernels={kernels!r} is not a backend; allowed: {list(KERNELS)}")


def _common_dtype(v: torch.Tensor) -> torch.dtype:
    """fla reads q, k and v in one dtype: the activations' (bf16 under autocast, else float32)."""
    return v.dtype if v.dtype in (torch.bfloat16, torch.float16) else torch.float32


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()


def _delta_rule(fla_op, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel):
    """The gated delta rule (g per value head) and KDA (g per key channel) take the same arguments in fla."""
    dt = _common_dtype(v)
    o, S = fla_op(q.to(dt), k.to(dt), v.to(dt), g.float(), beta.to(dt),
                  scale=q.shape[-1] ** -0.5 if scale is None else float(scale), initial_state=_f32(initial_state),
                  output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    return o.to(v.dtype), (S.float() if S is not None else None)


def _fla_chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, chunk_size=64, keep_factors=False):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    return _delta_rule(chunk_gated_delta_rule, q, k, v, g, beta, scale, initial_state, output_final_state,
                       use_qk_l2norm_in_kernel)


def _fla_chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                   use_qk_l2norm_in_kernel=False, chunk_size=64):
    from fla.ops.kda import chunk_kda

    return _delta_rule(chunk_kda, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


def _simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False):
    from fla.ops.simple_gla import chunk_simple_gla

    dt = _common_dtype(v)
    return chunk_simple_gla(q.to(dt), k.to(dt), v.to(dt), g=_f32(g), g_gamma=_f32(g_gamma),
                            scale=q.shape[-1] ** -0.5 if scale is None else float(scale),
                            initial_state=_f32(initial_state), output_final_state=output_final_state)


def _fla_chunk_lightning_attn(q, k, v, s, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    from .lightning import _log_decay

    o, S = _simple_gla(q, k, v, g_gamma=_log_decay(q, s), scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state)
    return o.to(v.dtype), (S.float() if S is not None else None)


def _fla_chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True,
                           eps=1e-6, chunk_size=64):
    from .linear_attn import _check_state

    S, z = _check_state(initial_state, normalize)
    if not normalize:
        o, final = _simple_gla(q, k, v, scale=scale, initial_state=S, output_final_state=output_final_state)
        return o.to(v.dtype), (final.float() if final is not None else None)
    V = v.shape[-1]
    s0 = None if S is None else torch.cat([S, z.unsqueeze(-1).to(S.dtype)], -1)  # (B, H, K, V + 1): [S | z]
    o1, final = _simple_gla(q, k, F.pad(v, (0, 1), value=1.0), scale=scale, initial_state=s0,
                            output_final_state=output_final_state)
    o1 = o1.float()
    o = (o1[..., :V] / (o1[..., V:] + eps)).to(v.dtype)  # numerator / (scale q^T z + eps)
    if final is not None:
        final = (final[..., :V].float().contiguous(), final[..., V].float().contiguous())
    return o, final


def _fla_chunk_ssd(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, chunk_size=64):
    from .ssd import _map, _skip

    q, k, v, g = _map(x, dt, A, B, C)
    y, S = _simple_gla(q, k, v, g=g, scale=1.0, initial_state=initial_state, output_final_state=output_final_state)
    return _skip(y.to(x.dtype), x, D), (S.float() if S is not None else None)
