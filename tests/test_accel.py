"""The optional speed path on a CPU: validation of precision / compile / kernels / parallel, the ops keeping
float32 math under bf16 autocast, the kernel-backend dispatch, and the glue of ``kernels=fla``.

flash-linear-attention's Triton kernels cannot run without an NVIDIA GPU, so the glue (layouts, GVA, log decays,
scale, linear attention's normaliser, the Mamba2 mapping, states in and out) is checked here against a stand-in
``fla`` package written from fla's documented contracts as plain recurrences; tests/test_gpu.py checks the real
kernels on a GPU."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from runner.config import ConfigError, validate
from runner.mixers import build_mixer
from runner.ops.backends import OPS, chunk_op


# ---- validation ---------------------------------------------------------------------------------------------

def test_bad_speed_settings_are_named(compose):
    with pytest.raises(ConfigError) as e:
        validate(compose("precision=fp16", "kernels=triton", "parallel=zero3"))
    msg = str(e.value)
    assert "precision='fp16'" in msg and "['fp32', 'bf16']" in msg
    assert "kernels='triton'" in msg and "['torch', 'fla']" in msg
    assert "parallel='zero3'" in msg and "['ddp', 'fsdp']" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_fla_without_a_gpu_is_a_clear_error(compose):
    with pytest.raises(ConfigError, match="need an NVIDIA GPU.*use kernels=torch"):
        validate(compose("kernels=fla"))
    with pytest.raises(ConfigError, match="need an NVIDIA GPU"):
        validate(compose("kernels=fla", "device=cpu"))


def test_compile_on_cpu_needs_a_compiler(compose, monkeypatch):
    import shutil

    validate(compose("compile=true", "device=cpu"))  # this machine has one
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="compile=true on a CPU needs a C\\+\\+ compiler"):
        validate(compose("compile=true", "device=cpu"))


def test_chunk_op_dispatch():
    from runner.ops.gated_delta_rule import chunk_gated_delta_rule

    assert chunk_op("chunk_gated_delta_rule", "torch") is chunk_gated_delta_rule
    for name in OPS:
        assert callable(chunk_op(name, "torch")) and callable(chunk_op(name, "fla"))
    with pytest.raises(ValueError, match="no chunked op 'chunk_rwkv7'"):
        chunk_op("chunk_rwkv7")
    with pytest.raises(ValueError, match="kernels='cuda' is not a backend"):
        chunk_op("chunk_kda", "cuda")


# ---- bf16 autocast ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,backward_inside", [
    ("chunk_gated_delta_rule", False), ("chunk_lightning_attn", False), ("chunk_kda", False),
    # the hand-written backwards keep float32 even when the backward runs inside the autocast region (as PyTorch
    # recommends, the runner calls backward outside it)
    ("chunk_gated_delta_rule", True), ("chunk_lightning_attn", True), ("chunk_kda", True)])
def test_ops_keep_float32_math_under_bf16_autocast(name, backward_inside):
    """Under autocast the ops give bit for bit their float32 results (outputs, states and gradients)."""
    torch.manual_seed(0)
    B, T, H, K = 2, 100, 2, 16
    q, k, v = (torch.randn(B, T, H, K, requires_grad=True) for _ in range(3))
    if name == "chunk_lightning_attn":
        inputs, kw = (q, k, v, torch.linspace(0.05, 0.3, H)), {}
    else:
        g = (-torch.rand(B, T, H, K) * 0.2 if name == "chunk_kda" else -torch.rand(B, T, H) * 0.2).requires_grad_()
        inputs, kw = (q, k, v, g, torch.rand(B, T, H).requires_grad_()), {"use_qk_l2norm_in_kernel": True}
    op = chunk_op(name)
    leaves = [t for t in inputs if t.requires_grad]
    results = []
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            o, S = op(*inputs, output_final_state=True, **kw)
            if backward_inside:
                grads = torch.autograd.grad((o * o).sum() + S.sum(), leaves)
        if not backward_inside:
            grads = torch.autograd.grad((o * o).sum() + S.sum(), leaves)
        assert o.dtype == torch.float32
        results.append((o, S, *grads))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_bf16_model_loss_is_close_to_fp32():
    """The whole model under bf16 autocast (matmuls in bf16) stays within 1% of its float32 loss."""
    from runner.model import HybridLM

    torch.manual_seed(0)
    m = HybridLM(256, 64, 2, list("LLLF"), {"name": "gated_deltanet"}, {"name": "softmax"})
    x = torch.randint(0, 256, (2, 96))
    with torch.no_grad():
        ref = m(x, targets=x)[1].item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, targets=x)[1].item()
    assert abs(low - ref) / ref < 0.01, (low, ref)


# ---- kernels=fla glue, against a stand-in fla package -------------------------------------------------------

def _heads(t, n):  # q/k heads -> value heads (fla's GVA: value head j reads q/k head j // (HV / H))
    return t.repeat_interleave(n // t.shape[2], dim=2) if t.shape[2] != n else t


def _delta_rule_loop(q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, per_channel):
    """fla's documented recurrence: S_t = (I - b_t k_t k_t^T) D_t S_{t-1} + b_t k_t v_t^T, o_t = S_t^T (scale q_t),
    D_t = exp(g_t) (per head, gated delta rule) or diag(exp(g_t)) (per key channel, KDA)."""
    B, T, HV, V = v.shape
    q, k = _heads(q, HV).float(), _heads(k, HV).float()  # fla computes in float32 whatever the input dtype
    if l2norm:
        q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    v, g, beta = v.float(), g.float(), beta.float()
    K = q.shape[-1]
    S = initial_state.float() if initial_state is not None else q.new_zeros(B, HV, K, V)
    out = []
    for t in range(T):
        decay = g[:, t].exp()[..., None] if per_channel else g[:, t].exp()[..., None, None]
        S = S * decay
        kt, bt = k[:, t], beta[:, t][..., None]
        S = S + kt[..., None] * (bt * (v[:, t] - torch.einsum("bhk,bhkv->bhv", kt, S)))[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1).to(v.dtype), (S if output_final_state else None)


def _fake_gdr(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, **kw):
    return _delta_rule_loop(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, False)


def _fake_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, **kw):
    return _delta_rule_loop(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, True)


def _fake_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False, **kw):
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T (g per step and head, or the constant g_gamma per head),
    o_t = S_t^T (scale q_t)."""
    B, T, H, V = v.shape
    q, k, v = q.float(), k.float(), v.float()
    S = initial_state.float() if initial_state is not None else q.new_zeros(B, H, q.shape[-1], V)
    out = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].float().exp()[..., None, None]
        elif g_gamma is not None:
            S = S * g_gamma.float().exp()[:, None, None]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1), (S if output_final_state else None)


@pytest.fixture
def fake_fla(monkeypatch):
    mods = {"fla": types.ModuleType("fla"), "fla.ops": types.ModuleType("fla.ops")}
    for name, fn_name, fn in (("gated_delta_rule", "chunk_gated_delta_rule", _fake_gdr),
                              ("kda", "chunk_kda", _fake_kda), ("simple_gla", "chunk_simple_gla", _fake_simple_gla)):
        mod = types.ModuleType(f"fla.ops.{name}")
        setattr(mod, fn_name, fn)
        mods[f"fla.ops.{name}"] = mod
    for key, mod in mods.items():
        monkeypatch.setitem(sys.modules, key, mod)


SPECS = [
    {"name": "gated_deltanet", "num_heads": 2, "num_v_heads": 4},
    {"name": "deltanet"},
    {"name": "kda"},
    {"name": "kda", "num_heads": 2, "num_v_heads": 4},
    {"name": "lightning"},
    {"name": "linear"},
    {"name": "linear", "normalize": False},
    {"name": "mamba2", "d_state": 16, "head_dim": 16, "n_groups": 2},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_fla_glue_matches_torch_ops(spec, fake_fla):
    """A mixer with kernels=fla (stand-in kernels) gives the outputs, states and gradients of kernels=torch, from
    no state and from a state (prefill 40 tokens, then 70 more in one chunked call)."""
    torch.manual_seed(0)
    m = build_mixer(spec, 64, 4, layer_idx=1, n_layers=3)
    x = torch.randn(2, 110, 64)
    with torch.no_grad():
        _, s0 = m(x[:, :40])
    results = {}
    for kernels in ("torch", "fla"):
        m.kernels = kernels
        m.zero_grad()
        y, s = m(x[:, 40:], {k: v.clone() for k, v in s0.items()})
        y.square().mean().backward()
        y0, _ = m(x[:, :70], need_state=False)
        results[kernels] = (y, y0, s, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    (y_t, y0_t, s_t, g_t), (y_f, y0_f, s_f, g_f) = results["torch"], results["fla"]
    torch.testing.assert_close(y_f, y_t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y0_f, y0_t, rtol=1e-4, atol=1e-5)
    assert s_f.keys() == s_t.keys()
    for key in s_t:
        torch.testing.assert_close(s_f[key], s_t[key], rtol=1e-4, atol=1e-5)
    assert g_f.keys() == g_t.keys() and len(g_t) > 3
    for name in g_t:
        torch.testing.assert_close(g_f[name], g_t[name], rtol=1e-3, atol=1e-6, msg=name)


# ---- whole runs -----------------------------------------------------------------------------------------------

RUN = ["model=tiny", "seq_len=64", "train.steps=6", "train.batch_size=4", "train.log_every=1", "train.eval_every=0",
       "data.max_bytes=200000", "threads=1"]


def test_bf16_run_trains_evaluates_and_benchmarks(tmp_path):
    import json

    from test_end_to_end import run_cli

    p = run_cli(*RUN, "precision=bf16", "stages=[train,eval,bench]", "eval.max_tokens=2048", "bench.lengths=[64]",
                "bench.repeats=1", "bench.decode_tokens=2", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "completed" and r["config"]["precision"] == "bf16"
    assert r["bench"][0]["status"] == "ok" and 0 < r["eval"]["loss"] < 6


@pytest.mark.slow
def test_compiled_training_follows_the_eager_curve(tmp_path):
    from test_end_to_end import loss_curve, run_cli

    curves = []
    for compiled in ("false", "true"):
        run = tmp_path / compiled
        p = run_cli(*RUN, f"compile={compiled}", "stages=[train]", f"hydra.run.dir={run}")
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        curves.append(loss_curve(run))
    assert len(curves[0]) == 6
    assert max(abs(a - b) for a, b in zip(*curves)) < 1e-5, curves


def test_gpu_check_script_runs_its_agreement_checks(fake_fla, capsys):
    """The prepared GPU check, run here against the stand-in kernels: its inputs and comparisons work (a GPU run
    then only swaps the kernels), and without CUDA the script itself says so and exits 2."""
    from runner.benchmarks import gpu_check

    rows = gpu_check.check_ops(torch.device("cpu"), T=80)
    assert {r["op"] for r in rows} == set(OPS) and {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    for r in rows:  # bf16: fla reads q, k, v in bf16, so the adapters round what the mixers computed in float32
        tol = 1e-4 if r["dtype"] == "float32" else 1e-2
        assert r["out"] < tol and r["state"] < tol and r["grad_max"] < 10 * tol, r
    for r in gpu_check.check_model(torch.device("cpu"), T=80):
        tol = 1e-5 if r["precision"] == "fp32" else 1e-3
        assert r["loss_diff"] / r["loss_torch"] < tol and r["grad_rel"] < 100 * tol, r
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", "/dev/null"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_bf16_training_runs_through_the_hand_written_backwards(tmp_path):
    """torch.compile traces the ops' backwards under bf16 autocast (they must still see float32 there)."""
    from test_end_to_end import loss_curve, run_cli

    curves = []
    for compiled in ("false", "true"):
        run = tmp_path / compiled
        p = run_cli(*RUN, "train.steps=3", "precision=bf16", f"compile={compiled}", "stages=[train]",
                    f"hydra.run.dir={run}")
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        curves.append(loss_curve(run))
    assert max(abs(a - b) for a, b in zip(*curves)) < 2e-2, curves
