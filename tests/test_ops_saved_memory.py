"""What each chunked op keeps between its forward and its backward: at most its inputs plus one (K, V) state per
chunk (the recompute-in-backward design of runner/ops), never the intra-chunk factors (the C x C score and
transform matrices, the pseudo-values), which would make a linear layer's training memory several times its
inputs.

The bytes are measured, not computed from the code: a saved-tensors hook records the storage of every tensor any
autograd node keeps during the op's call (each storage counted once). Two checks per op: the total against the
bound at one length, and the growth from T to 2T against the bound's growth (so a constant such as a decay matrix
shared by all chunks is allowed, any per-token excess is not).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.ops.delta_rule import chunk_delta_rule
from runner.ops.gated_delta_rule import chunk_gated_delta_rule
from runner.ops.kda import chunk_kda
from runner.ops.linear_attn import chunk_linear_attn
from runner.ops.simple_gla import chunk_simple_gla

B, H, K, V, C = 2, 2, 32, 32, 64
F32 = 4


def saved_bytes(fn, inputs: dict) -> int:
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, _ = fn(**inputs)
    o.sum().backward()  # the saved tensors are really used (and enough: the backward runs)
    return sum(storages.values())


def make(op: str, T: int) -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    with torch.no_grad():
        k.copy_(F.normalize(k, dim=-1))
        q.copy_(F.normalize(q, dim=-1))
    beta = torch.rand(B, T, H, generator=g).requires_grad_()
    decay = (-torch.rand(B, T, H, generator=g)).requires_grad_()
    if op == "gated_delta_rule":
        return dict(q=q, k=k, v=v, g=decay, beta=beta, chunk_size=C)
    if op == "delta_rule":
        return dict(q=q, k=k, v=v, beta=beta, chunk_size=C)
    if op == "kda":
        return dict(q=q, k=k, v=v, g=(-torch.rand(B, T, H, K, generator=g)).requires_grad_(), beta=beta,
                    chunk_size=C)
    if op == "simple_gla":
        return dict(q=q, k=k, v=v, g=decay, chunk_size=C)
    if op == "simple_gla_no_decay":
        return dict(q=q, k=k, v=v, chunk_size=C)
    if op == "simple_gla_const_decay":
        return dict(q=q, k=k, v=v, g_gamma=-torch.rand(H, generator=g), chunk_size=C)
    if op == "linear_attn":
        return dict(q=F.elu(q) + 1, k=F.elu(k) + 1, v=v, chunk_size=C)
    raise ValueError(op)


FUNCTIONS = {"gated_delta_rule": chunk_gated_delta_rule, "delta_rule": chunk_delta_rule, "kda": chunk_kda,
             "simple_gla": chunk_simple_gla, "simple_gla_no_decay": chunk_simple_gla,
             "simple_gla_const_decay": chunk_simple_gla, "linear_attn": chunk_linear_attn}


def bound(op: str, T: int) -> int:
    """The op's inputs (padded to whole chunks) plus one state per chunk and a final one, in float32 bytes; with
    linear attention's normaliser the state has one more column [S | z] and its output (which the next layer
    keeps anyway) and one denominator per token are allowed too."""
    N = -(-T // C)
    per_token = 2 * K + V                      # q, k, v
    per_token += {"gated_delta_rule": 2, "delta_rule": 2, "kda": K + 1, "simple_gla": 1}.get(op, 0)  # g, beta
    Vs = V + 1 if op == "linear_attn" else V
    if op == "linear_attn":
        per_token += V + 1                     # the output and its denominator
    return F32 * B * H * (N * C * per_token + (N + 1) * K * Vs)


# independent of T: two chunk-sized matrices per head (a constant decay's Gamma of the first and of the last
# chunk) and a few small vectors (such as the constant decay itself)
CONSTANT_SLACK = 2 * B * H * C * C * F32 + 1024


@pytest.mark.parametrize("op", list(FUNCTIONS))
def test_saved_for_backward_is_inputs_plus_chunk_states(op):
    T = 512
    got = saved_bytes(FUNCTIONS[op], make(op, T))
    assert got <= bound(op, T) + CONSTANT_SLACK, \
        f"{op} keeps {got / 1e6:.3f} MB for its backward; its inputs and chunk states are {bound(op, T) / 1e6:.3f} MB"


@pytest.mark.parametrize("op", list(FUNCTIONS))
def test_saved_bytes_grow_no_faster_than_inputs_plus_states(op):
    T = 512
    grow = saved_bytes(FUNCTIONS[op], make(op, 2 * T)) - saved_bytes(FUNCTIONS[op], make(op, T))
    allowed = bound(op, 2 * T) - bound(op, T)
    assert grow <= allowed, f"{op}: {grow} more bytes kept for 2T than for T; inputs and states grow by {allowed}"


@pytest.mark.parametrize("op,factors_fn", [("gated_delta_rule", "_group_factors"), ("kda", "_chunk_factors")])
def test_a_groups_factors_are_freed_before_the_next_groups_are_made(op, factors_fn, monkeypatch):
    """The forward and the backward go one group of chunks at a time; the group's factors (and the backward's
    intermediates beside them) must be gone before the next group's are computed, or two groups' worth live at
    once: 5.5 MB of the small Gated DeltaNet model's 114 MB training-step peak at n = 2,048 when they did."""
    import importlib
    import weakref

    module = importlib.import_module(f"runner.ops.{op}")
    real, alive, calls = getattr(module, factors_fn), [], []

    def spy(*args, **kwargs):
        still = sum(r() is not None for r in alive)
        calls.append(still)
        out = real(*args, **kwargs)
        tensors = out[1] if isinstance(out, tuple) else list(out.values())  # the group's factors
        alive[:] = [weakref.ref(t) for t in tensors if isinstance(t, torch.Tensor)]
        return out

    monkeypatch.setattr(module, factors_fn, spy)
    monkeypatch.setattr(module, "_group_size", lambda BH, C, D: 2)  # 8 chunks: four groups
    o, _ = FUNCTIONS[op](**make(op, 8 * C))
    o.sum().backward()
    assert len(calls) == 8, calls  # four groups in the forward, four in the backward
    assert calls == [0] * 8, f"factors of the previous group still alive at each group's start: {calls}"
