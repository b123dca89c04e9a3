"""The GPU path (skipped without CUDA): kernels=fla agrees with this project's ops, and a run with bf16
autocast, torch.compile and kernels=fla trains. ``python -m runner.benchmarks.gpu_check`` prints the figures."""
import json

import pytest
import torch

from runner.ops.backends import OPS, fla_problem

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
FLA_MISSING = fla_problem("cuda") if torch.cuda.is_available() else "no GPU"
needs_fla = pytest.mark.skipif(FLA_MISSING is not None, reason=f"kernels=fla unavailable: {FLA_MISSING}")


@cuda
@needs_fla
@pytest.mark.parametrize("name", OPS)
def test_fla_ops_agree_with_ours(name):
    from runner.benchmarks.gpu_check import check_ops

    for r in (r for r in check_ops(torch.device("cuda"), T=1000) if r["op"] == name):
        tol = 2e-3 if r["dtype"] == "float32" else 3e-2  # fla computes in tf32 / bf16 with float32 accumulation
        assert r["out"] < tol and r["state"] < tol and r["grad_max"] < 5 * tol, r


@cuda
def test_gpu_run_with_bf16_compile_and_fla(tmp_path):
    from test_end_to_end import run_cli

    extra = ["kernels=fla"] if FLA_MISSING is None else []
    p = run_cli("model=tiny", "seq_len=128", "train.steps=20", "train.batch_size=4", "stages=[train,eval]",
                "eval.max_tokens=4096", "data.max_bytes=200000", "precision=bf16", "compile=true", *extra,
                f"hydra.run.dir={tmp_path}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "completed" and r["env"]["device"].startswith("cuda")
    assert r["eval"]["loss"] < 5.0
