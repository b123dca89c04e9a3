import csv
import subprocess
import sys

import pytest
import torch

from runner import memory
from runner.memory import cache_bytes, human_bytes, presets

N128K = 131072
N1M = 1 << 20


# -- the textbook 48-layer case -----------------------------------------------------------------------------------

def test_reference_all_mha_51_5_GB():
    b = cache_bytes("reference-48L/all-MHA", N128K, "bf16", 1)
    assert b == 48 * N128K * 16 * 128 * 2 * 2
    assert human_bytes(b) == "51.5 GB"


def test_reference_all_gdn_25_MB_matrix_and_26_9_MB_with_conv_tails():
    matrix = cache_bytes("reference-48L/all-GDN", N128K, "bf16", 1, parts=["matrix"])
    assert matrix == 48 * 16 * 128 * 128 * 2
    assert round(matrix / 1e6) == 25 and human_bytes(matrix) == "25.2 MB"
    conv = 48 * (3 * 16 * 128) * (4 - 1) * 2  # q, k, v channels, kernel 4 -> 3 cached steps
    assert cache_bytes("reference-48L/all-GDN", N128K, "bf16", 1, parts=["conv"]) == conv
    total = cache_bytes("reference-48L/all-GDN", N128K, "bf16", 1)
    assert total == matrix + conv
    assert human_bytes(total) == "26.9 MB"


def test_reference_hybrid_3_to_1_12_9_GB():
    b = cache_bytes("reference-48L", N128K, "bf16", 1)  # the preset's main configuration is the 3:1 hybrid
    assert b == cache_bytes("reference-48L/3:1 GDN:MHA", N128K)
    kv = 12 * N128K * 16 * 128 * 2 * 2
    linear = 36 * (16 * 128 * 128 + 3 * 16 * 128 * 3) * 2
    assert b == kv + linear
    assert human_bytes(b) == "12.9 GB"


# -- published models -------------------------------------------------------------------------------------------

def test_qwen3_next_hand_computed():
    n = N128K
    ga = 2 * 2 * 256 * n  # K and V, 2 kv heads x 256
    gdn = 32 * 128 * 128 + (2 * 16 * 128 + 32 * 128) * 3
    assert cache_bytes("qwen3-next-80b-a3b", n, "bf16") == 2 * (12 * ga + 36 * gdn)
    assert cache_bytes("qwen3-next-80b-a3b/all gated-attn", n, "bf16") == 2 * 48 * ga


def test_kimi_linear_saves_at_least_70_percent_vs_all_mla_at_1M():
    p = presets()["kimi-linear-48b-a3b"]
    assert sum(l.grows for l in p.config(p.main).layers) == 7 and len(p.config(p.main).layers) == 27
    hybrid = cache_bytes(p, N1M, "bf16", 1)
    full = cache_bytes("kimi-linear-48b-a3b/all-MLA", N1M, "bf16", 1)
    assert full == 27 * N1M * (512 + 64) * 2
    saving = 1 - hybrid / full
    assert 0.70 <= saving < 0.80, saving


def test_minimax_m1_layout_and_sizes():
    p = presets()["minimax-m1"]
    hybrid = p.config(p.main)
    assert len(hybrid.layers) == 80 and sum(l.grows for l in hybrid.layers) == 10
    n = 4096
    assert cache_bytes(hybrid, n, "fp32") == 4 * (10 * n * 2 * 8 * 128 + 70 * 64 * 128 * 128)


def test_llama_dense_baseline():
    assert cache_bytes("llama-3-8b", N128K, "bf16") == 32 * N128K * 2 * 8 * 128 * 2  # ~17.2 GB, the known 16 GiB
    assert human_bytes(cache_bytes("llama-3-8b", N128K)) == "17.2 GB"


# -- shape of the curves ----------------------------------------------------------------------------------------

def _all_configs():
    return [c for p in presets().values() for c in p.configs]


def test_linear_only_configurations_are_constant_in_n():
    linear = [c for c in _all_configs() if c.role == "linear"]
    assert linear
    for c in linear:
        vals = {cache_bytes(c, n) for n in (0, 1, 4096, N128K, N1M)}
        assert len(vals) == 1 and vals.pop() > 0, c.name
    one = memory.linear_layer("toy", 2, 4, 8, conv_channels=6, conv_size=4, normaliser=True)
    assert cache_bytes([one, one], 10, "fp32", 3) == cache_bytes([one, one], 10_000, "fp32", 3) \
        == 3 * 4 * 2 * (2 * 4 * 8 + 6 * 3 + 2 * 4)


def test_full_attention_configurations_are_linear_in_n():
    full = [c for c in _all_configs() if c.role == "full"]
    assert len(full) >= 5
    for c in full:
        per_token = cache_bytes(c, 1)
        assert per_token > 0
        for n in (0, 7, 4096, N1M):
            assert cache_bytes(c, n) == n * per_token, c.name


def test_hybrids_are_affine_in_n_and_below_full():
    for p in presets().values():
        if p.baseline == p.main:
            continue
        c, base = p.config(p.main), p.config(p.baseline)
        b0, b1 = cache_bytes(c, 0), cache_bytes(c, 1)
        assert b0 > 0 and cache_bytes(c, 1000) == b0 + 1000 * (b1 - b0)
        assert cache_bytes(c, N1M) < cache_bytes(base, N1M)


def test_dtype_and_batch_scale():
    for name in ("reference-48L", "kimi-linear-48b-a3b", "minimax-m1"):
        b = cache_bytes(name, 5000, "bf16", 1)
        assert cache_bytes(name, 5000, "fp16", 1) == b
        assert cache_bytes(name, 5000, "fp32", 1) == 2 * b
        assert cache_bytes(name, 5000, torch.float32, 3) == 6 * b


def test_sliding_window_caps_the_cache():
    layer = memory.attention_layer(2, 16, window=100)
    assert cache_bytes([layer], 50, "fp32") == 50 * 2 * 2 * 16 * 4
    assert cache_bytes([layer], 10**6, "fp32") == 100 * 2 * 2 * 16 * 4


def test_context_lengths_default_rows():
    assert memory.context_lengths() == [4096 << i for i in range(9)]
    assert memory.context_lengths(4096, 100_000) == [4096, 8192, 16384, 32768, 65536, 100_000]


# -- our models -------------------------------------------------------------------------------------------------

OURS = "model=tiny,attention=softmax,full=gated_attention,ratio=3:1,attention.window=8"


def test_ours_equals_sum_of_mixers_state_bytes_and_measured_state():
    from runner.mixers import state_nbytes
    from runner.model import HybridLM

    p = memory.ours(OURS)
    hybrid = p.config(p.main)
    assert hybrid.model.layer_types == ["L", "L", "L", "F"]
    assert next(hybrid.model.parameters()).device.type == "meta"
    # an independent build on the CPU, summed by hand
    torch.manual_seed(0)
    attention = {"name": "softmax", "window": 8}
    full = {"name": "gated_attention"}
    model = HybridLM(256, 64, 2, ["L", "L", "L", "F"], attention, full)  # conf/model/tiny.yaml: 64, 2 heads
    for n in (1, 5, 20, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            expected = sum(m.state_bytes(2, n, dtype) for m in model.mixers)
            assert cache_bytes(hybrid, n, dtype, 2) == expected
            assert cache_bytes("ours:" + OURS, n, dtype, 2) == expected
    # and what a forward actually keeps
    idx = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        _, states = model(idx, need_state=True)
    assert state_nbytes(states) == cache_bytes(hybrid, 20, torch.float32, 2)
    # the all-full counterpart comes along for the ratio
    base = p.config(p.baseline)
    assert base.model.layer_types == ["F"] * 4
    assert cache_bytes(base, 100, "bf16") == 4 * 100 * 2 * 2 * 32 * 2  # 2 heads x 32, K and V, bf16


def test_ours_missing_mixer_module_is_a_clear_error(monkeypatch):
    from runner import mixers

    monkeypatch.setitem(mixers.REGISTRY, "ghost", ("runner.mixers.ghost_not_here", "Ghost", "GhostConfig", False))
    with pytest.raises(ValueError, match=r"'ghost' is registered but its module is not in runner/mixers/"):
        memory.ours("model=tiny,attention=ghost,full=softmax")
    with pytest.raises(ValueError, match="not a known mixer"):
        memory.ours("model=tiny,attention=nonesuch")
    with pytest.raises(ValueError, match="keys:"):
        memory.ours("model=tiny,colour=red")


# -- errors and the command line --------------------------------------------------------------------------------

def test_bad_names_in_the_api():
    with pytest.raises(KeyError, match="known presets: reference-48L"):
        cache_bytes("no-such-model", 10)
    with pytest.raises(KeyError, match="has no configuration"):
        cache_bytes("reference-48L/all-nothing", 10)
    with pytest.raises(ValueError, match="allowed"):
        cache_bytes("reference-48L", 10, "fp8")
    with pytest.raises(ValueError, match="unknown part"):
        cache_bytes("reference-48L", 10, parts=["weights"])


def test_cli_writes_png_and_csv(tmp_path, capsys):
    png, out_csv = tmp_path / "mem.png", tmp_path / "mem.csv"
    rc = memory.main(["--preset", "reference-48L", "--preset", "kimi-linear-48b-a3b", "--max-len", "131072",
                      "--ours", OURS, "--plot", str(png), "--csv", str(out_csv)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "51.5 GB" in text and "12.9 GB" in text and "26.9 MB" in text and "25.2 MB" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with open(out_csv) as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == (3 + 2 + 2) * 6  # configurations x lengths 4K..128K
    row = next(r for r in recs if r["configuration"] == "all-MHA" and r["context"] == "131072")
    assert int(row["bytes"]) == 48 * N128K * 16 * 128 * 4 and float(row["fraction_of_full"]) == 1.0
    row = next(r for r in recs if r["configuration"] == "3:1 GDN:MHA" and r["context"] == "131072")
    assert abs(float(row["fraction_of_full"]) - 0.2504) < 1e-3


def test_cli_bad_arguments_list_allowed_values(capsys):
    with pytest.raises(SystemExit) as e:
        memory.main(["--preset", "gpt-5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid preset 'gpt-5'" in err and "reference-48L" in err and "minimax-m1" in err
    with pytest.raises(SystemExit):
        memory.main(["--dtype", "fp8"])
    assert "'bf16', 'fp16', 'fp32'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        memory.main(["--batch", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "runner.memory", "--preset", "REFERENCE-48l", "--max-len", "8192"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "all-GDN" in r.stdout and "8K" in r.stdout
