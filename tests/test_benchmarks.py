"""The benchmarks run at tiny sizes and print their figures: the end-to-end training comparison with transformers'
Qwen3-Next (both tokens/s, the ratio and equal parameter counts), its decode mode, and the kernel table."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args, timeout=120) -> str:
    """Run ``python -m <args>`` in a fresh process (so the benchmark sets its OpenMP policy before torch starts)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not found in:\n{text}"
    return float(m.group(1).replace(",", ""))


def test_e2e_prints_both_throughputs_and_ratio():
    out = run_module("runner.benchmarks.e2e", "--model-size", "tiny", "--seq-len", "96", "--batch", "1",
                     "--steps", "2", "--threads", "1", "--profile")
    ours = _number(r"ours tokens/s: ([\d,]+)", out)
    theirs = _number(r"transformers tokens/s: ([\d,]+)", out)
    ratio = _number(r"ratio ours/transformers \(both eager\): ([\d.]+)x", out)
    assert ours > 0 and theirs > 0
    assert ratio == pytest.approx(ours / theirs, rel=0.02)
    # the two models are built to the same shapes: equal parameter counts, group by group
    po = _number(r"parameters: ours ([\d,]+)", out)
    pt = _number(r"parameters: ours [\d,]+, transformers ([\d,]+)", out)
    assert po == pt > 0
    assert "num_experts=0" in out and "torch_chunk_gated_delta_rule" in out
    assert "layers=LLLF" in out
    # the header names the OpenMP setting in force (runner/cpu_runtime.py's default unless the caller set one)
    if "OMP_WAIT_POLICY" in os.environ:
        assert f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" in out
    else:
        assert f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '10000')}" in out
    # --profile: the per-component table and the profiler's top ops
    assert "its chunked op alone" in out and "Amdahl" in out and "Floor: one linear layer does" in out
    assert "aten::" in out


@pytest.mark.slow
def test_e2e_times_compiled_bf16_steps_side_by_side():
    out = run_module("runner.benchmarks.e2e", "--model-size", "tiny", "--seq-len", "64", "--batch", "1",
                     "--steps", "1", "--threads", "1", "--no-profile", "--precision", "bf16", "--compile", "ours",
                     timeout=600)
    assert "precision: bf16 autocast for both models" in out
    ours = _number(r"ours tokens/s: ([\d,]+)", out)
    theirs = _number(r"transformers tokens/s: ([\d,]+)", out)
    compiled = _number(r"ours \(HybridLM\) compiled │[^│]+│[^│]+│ +([\d,]+)", out)
    ratio = _number(r"ratio ours compiled / transformers eager: ([\d.]+)x", out)
    assert ours > 0 and theirs > 0 and compiled > 0
    assert ratio == pytest.approx(compiled / theirs, rel=0.02)


def test_qwen3_next_config_matches_our_shapes():
    """The transformers model gets our heads, head sizes, layer types, MLP width and tying, and no MoE block."""
    import torch

    from runner.benchmarks import e2e

    m = e2e.model_spec("tiny", d_model=96, layers=4, heads=3)
    torch.manual_seed(0)
    ours = e2e.build_ours(m, list("LLLF"))
    theirs = e2e.build_transformers(ours)
    cfg = theirs.config
    lin, att = ours.blocks[0].mixer, ours.blocks[3].mixer
    assert cfg.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert (cfg.linear_num_key_heads, cfg.linear_key_head_dim) == (lin.num_heads, lin.head_dim) == (3, 32)
    assert (cfg.linear_num_value_heads, cfg.linear_value_head_dim) == (lin.num_v_heads, lin.head_v_dim)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == \
        (att.num_heads, att.num_kv_heads, att.head_dim)
    assert cfg.intermediate_size == ours.blocks[0].mlp.down.in_features
    assert cfg.vocab_size == 256 and cfg.tie_word_embeddings
    assert theirs.lm_head.weight is theirs.model.embed_tokens.weight
    assert all(type(layer.mlp).__name__ == "Qwen3NextMLP" for layer in theirs.model.layers)
    assert e2e.n_params(ours) == e2e.n_params(theirs)
    for name, o, t in e2e.param_breakdown(ours, theirs):
        assert o == t, name
    # one training step of each runs and gives a finite loss near log(256) at random init
    x = torch.randint(0, 256, (1, 33))
    for model, hf in ((ours, False), (theirs, True)):
        loss = e2e.train_step_fn(model, x[:, :-1], x[:, 1:], hf)()
        assert abs(loss - 5.545) < 0.5


def test_e2e_decode_mode_prints_constant_and_growing_state():
    out = run_module("runner.benchmarks.e2e", "--decode", "--model-size", "tiny", "--lengths", "16", "64",
                     "--decode-tokens", "2", "--piece", "32", "--threads", "1")
    assert "gated_deltanet ms/tok" in out and "gated_attention ms/tok" in out
    rows = re.findall(r"│\s*(\d+)\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│", out)
    assert [int(r[0]) for r in rows] == [16, 64], out
    (_, _, lin16, _, kv16), (_, _, lin64, _, kv64) = rows
    assert lin16 == lin64  # the linear state does not grow
    assert float(kv64) > float(kv16)  # the KV cache does


def test_decode_timing_takes_turns_of_blocks_and_feeds_each_model_its_tokens_in_order():
    """Each model decodes in turns of DECODE_BLOCK steps, the first untimed (it refills the caches the other
    model's turn emptied), the order of the models alternating; each gets decode_tokens timed steps and the
    next tokens of one sequence."""
    import torch

    from runner.benchmarks import e2e

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def eval(self):
            return self

        def __call__(self, idx, state, need_state=True):
            return None, (state or 0) + idx.shape[1]

        def decode_step(self, tok, state):
            calls.append((self.name, int(tok[0, 0]), state))
            return None, state + 1

    block, tokens = e2e.DECODE_BLOCK, 7
    out = e2e._decode_times([Fake("a"), Fake("b")], [8], tokens, piece=4, batch=1, seed=0, block=block)
    names = "".join(c[0] for c in calls)
    turns = -(-tokens // (block - 1))
    assert names.count("a") == names.count("b") == tokens + turns, names
    # 7 timed steps, in turns of one untimed + 3 timed: two whole turns, then 1 + 1; the order ab, ba, ab
    assert names == "a" * 4 + "b" * 8 + "a" * 4 + "a" * 2 + "b" * 2, names
    idx = torch.randint(0, e2e.VOCAB, (1, 8 + tokens + turns), generator=torch.Generator().manual_seed(0))
    for name in "ab":
        mine = [c for c in calls if c[0] == name]
        assert [c[1] for c in mine] == idx[0, 8:8 + len(mine)].tolist()  # the sequence's next tokens, in order
        assert [c[2] for c in mine] == list(range(8, 8 + len(mine)))  # each step continues the last one's state
    assert all(set(o) == {8} for o in out)


def test_ops_benchmark_prints_its_table():
    out = run_module("runner.benchmarks.ops", "--lengths", "32", "64", "128", "--repeats", "1", "--ops",
                     "gated_delta_rule", "kda")
    assert "matmul peak" in out
    for op in ("gated_delta_rule", "kda", "sdpa causal"):
        assert op in out
    assert re.search(r"gated_delta_rule\s*│\s*128\s*│\s*[\d.]+", out), out
    assert "scaling: time(T=128) / time(T=lo)" in out and "lo=32 (linear 4)" in out and "lo=64 (linear 2)" in out
    scaling = re.search(r"│\s*kda\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│", out.split("scaling:")[1])
    assert scaling and float(scaling.group(1)) > 0 and float(scaling.group(2)) > 0, out
