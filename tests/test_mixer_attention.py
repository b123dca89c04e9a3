"""Tests of the quadratic mixers: softmax (MHA/GQA, partial RoPE, window), gated attention, MLA and DSA."""
from __future__ import annotations

import pytest
import torch

from runner.mixers import make_config, state_nbytes
from runner.mixers.base import rope_cos_sin
from tests.contract import check_decode_equals_forward, check_state_bytes, make, rel_rms

D_MODEL, N_HEADS = 64, 4  # head_dim 16 unless set

SPECS = {
    "mha": dict(name="softmax"),
    "gqa_partial_rope": dict(name="softmax", num_kv_heads=2, rope_fraction=0.5),
    "gqa_window": dict(name="softmax", num_kv_heads=2, window=7),
    "mqa_nope_qknorm": dict(name="softmax", num_kv_heads=1, rope=False, qk_norm=True),
    "gated": dict(name="gated_attention", num_kv_heads=2),
    "mla": dict(name="mla"),
    "mla_qlora_nope": dict(name="mla", q_lora_rank=24, rope=False),
    "dsa": dict(name="dsa", index_topk=5),
    "dsa_qlora": dict(name="dsa", index_topk=3, q_lora_rank=24, index_n_heads=2),
    "dsa_warmup": dict(name="dsa", index_topk=5, indexer_warmup=True),
}


def randomize(module: torch.nn.Module, std: float = 0.2, seed: int = 0):
    """Non-trivial weights everywhere (norm gains too), so a wrong mapping cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def additive_causal(T: int, window=None) -> torch.Tensor:
    """(1, 1, T, T) additive mask written out element by element (independent of runner's causal_mask)."""
    m = torch.full((T, T), torch.finfo(torch.float64).min, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            if j <= i and (window is None or i - j < window):
                m[i, j] = 0.0
    return m[None, None]


def hf_rope(T: int, dim: int, theta: float = 10000.0):
    """(cos, sin) in the transformers layout (1, T, dim) from the same angles runner uses."""
    cos, sin = rope_cos_sin(torch.arange(T), dim, theta, dtype=torch.float64)
    return torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]


# -- decode == forward ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 37, 65])
@pytest.mark.parametrize("key", list(SPECS))
def test_decode_equals_forward(key, T):
    m = make(SPECS[key], D_MODEL, N_HEADS)
    pieces = (1, 5, 1, 13) if T != 65 else (20, 3, 1, 30)  # 65: a prefill longer than the window / top-k
    err, state = check_decode_equals_forward(m, T=T, pieces=pieces)
    assert state_nbytes(state) == m.state_bytes(2, T, torch.float64)


def test_dsa_decode_is_really_sparse():
    """The decode test of DSA must exercise the top-k selection: the output differs from dense MLA."""
    dsa = make(SPECS["dsa"], D_MODEL, N_HEADS)
    mla = make(dict(name="mla"), D_MODEL, N_HEADS)
    mla.load_state_dict({k: v for k, v in dsa.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(2, 20, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y_s, _ = dsa(x)
        y_d, _ = mla(x)
    assert rel_rms(y_s[:, :5], y_d[:, :5]) < 1e-12  # t + 1 <= top-k: every previous key
    assert rel_rms(y_s[:, 5:], y_d[:, 5:]) > 1e-3


# -- state bytes ------------------------------------------------------------------------------------------------
def test_state_bytes_hand_computed():
    B, f64 = 2, 8
    mha = make(SPECS["mha"], D_MODEL, N_HEADS)
    gqa = make(SPECS["gqa_partial_rope"], D_MODEL, N_HEADS)
    win = make(SPECS["gqa_window"], D_MODEL, N_HEADS)
    mla = make(SPECS["mla"], D_MODEL, N_HEADS)
    dsa = make(SPECS["dsa"], D_MODEL, N_HEADS)
    for m in (mha, gqa, win, mla, dsa):
        check_state_bytes(m, ns=(1, 7, 8, 64), batch=B)
    for n in (1, 7, 8, 64, 1000):
        # KV cache: k and v, B x n x kv_heads x head_dim, linear in n
        assert mha.state_bytes(B, n, torch.float64) == 2 * B * n * 4 * 16 * f64
        assert gqa.state_bytes(B, n, torch.float64) == 2 * B * n * 2 * 16 * f64
        assert gqa.state_bytes(B, n, torch.bfloat16) == 2 * B * n * 2 * 16 * 2
        # window 7: at most 7 keys, plus the (B,) int64 position counter
        assert win.state_bytes(B, n, torch.float64) == 2 * B * min(n, 7) * 2 * 16 * f64 + B * 8
        # MLA: latent kv_lora_rank = 4 * 16 = 64 plus the shared rope key 16 // 2 = 8 per token, no heads
        assert mla.state_bytes(B, n, torch.float64) == B * n * (64 + 8) * f64
        # DSA: MLA's latent plus one indexer key of index_head_dim = 16 per token
        assert dsa.state_bytes(B, n, torch.float64) == B * n * (64 + 8 + 16) * f64
    assert win.state_bytes(B, 10**6) == win.state_bytes(B, 7)  # bounded by the window
    assert mla.state_bytes(B, 1000) < mha.state_bytes(B, 1000) / 1.5


def test_flops_hand_computed():
    mha = make(SPECS["mha"], D_MODEL, N_HEADS)
    win = make(SPECS["gqa_window"], D_MODEL, N_HEADS)
    proj_mha = 2 * (4 * 64 * 64)  # q, k, v, o: 64 x 64 each
    assert mha.flops_per_token(100) == proj_mha + 4 * 100 * 4 * 16
    proj_gqa = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64)
    assert win.flops_per_token(100) == proj_gqa + 4 * 7 * 4 * 16
    gated = make(SPECS["gated"], D_MODEL, N_HEADS)
    assert gated.flops_per_token(10) == 2 * (64 * 128 + 2 * 64 * 32 + 64 * 64) + 4 * 10 * 4 * 16
    mla = make(SPECS["mla"], D_MODEL, N_HEADS)
    proj_mla = 2 * (64 * 4 * 24 + 64 * 72 + 64 * 4 * 32 + 4 * 16 * 64)  # q, kv_a, kv_b, o
    assert mla.flops_per_token(50) == proj_mla + 2 * 50 * 4 * (24 + 16)
    dsa = make(SPECS["dsa"], D_MODEL, N_HEADS)
    proj_idx = 2 * (64 * 4 * 16 + 64 * 16 + 64 * 4)
    assert dsa.flops_per_token(50) == proj_mla + proj_idx + 2 * 50 * 4 * 17 + 2 * 5 * 4 * (24 + 16)


# -- against transformers ---------------------------------------------------------------------------------------
def test_softmax_gqa_window_matches_transformers_llama():
    from transformers.models.llama.configuration_llama import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    cfg._attn_implementation = "eager"
    hf = randomize(LlamaAttention(cfg, 0).double().eval())
    T = 23
    x = torch.randn(2, T, 64, dtype=torch.float64)
    for window in (None, 6):
        ours = make(dict(name="softmax", num_kv_heads=2, window=window), D_MODEL, N_HEADS)
        ours.load_state_dict(hf.state_dict())
        with torch.no_grad():
            y_ref, _ = hf(x, position_embeddings=hf_rope(T, 16), attention_mask=additive_causal(T, window))
            y, _ = ours(x)
        assert rel_rms(y, y_ref) < 1e-6  # transformers' eager softmax runs in float32


def test_gated_attention_matches_transformers_qwen3_next():
    from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextAttention

    cfg = Qwen3NextConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    cfg._attn_implementation = "eager"
    hf = randomize(Qwen3NextAttention(cfg, 0).double().eval())
    ours = make(dict(name="gated_attention", num_kv_heads=2), D_MODEL, N_HEADS)
    assert ours.rotary_dim == 4  # 25% of 16
    ours.load_state_dict(hf.state_dict())
    T = 29
    x = torch.randn(2, T, 64, dtype=torch.float64)
    with torch.no_grad():
        y_ref, _ = hf(x, position_embeddings=hf_rope(T, 4), attention_mask=additive_causal(T))
        y, _ = ours(x)
    # the QK-norms of both compute in float32 (x.float()), hence float32-level agreement
    assert rel_rms(y, y_ref) < 1e-6


MLA_NAMES = {"q_a_norm": "q_a_layernorm", "kv_a_proj": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm"}


def mla_state_from_hf(hf_sd: dict, ours, interleave: bool) -> dict:
    """Map transformers' DeepSeek/Kimi MLA weights to ours; an interleaved RoPE layout becomes rotate-half by
    permuting the rope rows of the query and kv_a projections (even channels first, then odd)."""
    sd = {}
    for k in ours.state_dict():
        if k.startswith("indexer."):
            continue
        head, _, rest = k.partition(".")
        sd[k] = hf_sd[f"{MLA_NAMES.get(head, head)}.{rest}"].clone()
    if interleave:
        dn, dr, r = ours.qk_nope_head_dim, ours.qk_rope_head_dim, ours.kv_lora_rank
        perm = torch.cat([torch.arange(0, dr, 2), torch.arange(1, dr, 2)])
        qk = "q_b_proj.weight" if "q_b_proj.weight" in sd else "q_proj.weight"
        w = sd[qk].view(ours.num_heads, dn + dr, -1)
        w[:, dn:] = w[:, dn:][:, perm]
        w = sd["kv_a_proj.weight"]
        w[r:] = w[r:][perm]
    return sd


@pytest.mark.parametrize("q_lora_rank,interleave", [(None, False), (24, True)])
def test_mla_matches_transformers_deepseek_v3(q_lora_rank, interleave):
    from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    cfg = DeepseekV3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora_rank,
                           kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                           rope_interleave=interleave)
    cfg._attn_implementation = "eager"
    hf = randomize(DeepseekV3Attention(cfg, 0).double().eval())
    ours = make(dict(name="mla", q_lora_rank=q_lora_rank, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                     v_head_dim=12), D_MODEL, N_HEADS)
    ours.load_state_dict(mla_state_from_hf(hf.state_dict(), ours, interleave))
    T = 21
    x = torch.randn(2, T, 64, dtype=torch.float64)
    with torch.no_grad():
        y_ref, _ = hf(x, position_embeddings=hf_rope(T, 8), attention_mask=additive_causal(T))
        y, _ = ours(x)
    assert rel_rms(y, y_ref) < 1e-6  # latent RMSNorms compute in float32 in both


def test_mla_nope_matches_transformers_kimi_linear():
    from transformers.models.kimi_linear.configuration_kimi_linear import KimiLinearConfig
    from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearAttention

    cfg = KimiLinearConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
                           qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12)
    cfg._attn_implementation = "eager"
    hf = randomize(KimiLinearAttention(cfg, 0).double().eval())
    ours = make(dict(name="mla", rope=False, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12),
                D_MODEL, N_HEADS)
    ours.load_state_dict(mla_state_from_hf(hf.state_dict(), ours, interleave=False))
    T = 19
    x = torch.randn(2, T, 64, dtype=torch.float64)
    with torch.no_grad():
        y_ref, _ = hf(x, attention_mask=additive_causal(T))
        y, _ = ours(x)
    assert rel_rms(y, y_ref) < 1e-6


def _dsa_pair(topk: int):
    from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Attention

    cfg = DeepseekV32Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
                            kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                            index_n_heads=8, index_head_dim=16, index_topk=topk)
    cfg._attn_implementation = "eager"
    hf = randomize(DeepseekV32Attention(cfg, 0).double().eval(), seed=3)
    ours = make(dict(name="dsa", q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                     v_head_dim=12, index_n_heads=8, index_head_dim=16, index_topk=topk), D_MODEL, N_HEADS)
    sd = hf.state_dict()
    main = {k: v for k, v in sd.items() if not k.startswith("indexer.")}
    mine = mla_state_from_hf(main, ours, interleave=True)  # V3.2's main MLA rope is interleaved
    idx = {"wq_b": "q_proj", "wk": "k_proj", "k_norm": "k_norm", "weights_proj": "w_proj"}
    for k, v in sd.items():
        if k.startswith("indexer."):
            _, mod, p = k.split(".")
            mine[f"indexer.{idx[mod]}.{p}"] = v.clone()
    ours.load_state_dict(mine)
    return hf, ours


def test_dsa_indexer_and_layer_match_transformers_deepseek_v32():
    T, topk = 24, 6
    hf, ours = _dsa_pair(topk)
    torch.manual_seed(5)
    x = torch.randn(2, T, 64, dtype=torch.float64)
    rope = rope_cos_sin(torch.arange(T), 8, dtype=torch.float64)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(2, T, T)
    with torch.no_grad():
        q_lat = ours.q_a_norm(ours.q_a_proj(x))
        scores = ours.indexer.scores(x, q_lat, ours.indexer.keys(x, rope), rope)  # (B, T, T)
        chosen = ours.select(scores, causal)
        # the transformers indexer with top-k = T returns every key sorted by its score: under our scores that
        # order must be non-increasing over the causal keys (float32 scoring there, hence the tolerance)
        hf.indexer.index_topk = T
        order = hf.indexer(x, q_lat, hf_rope(T, 8), additive_causal(T)[:, 0].expand(2, T, T), None).long()
        s = scores.gather(-1, order).masked_fill(~causal.gather(-1, order), float("-inf"))
        finite = torch.isfinite(s[..., 1:])
        assert (s[..., 1:] <= s[..., :-1] + 1e-6)[finite].all()
        # its top-k set equals ours; check the data has no near-tie at the k-th score, so the test can fail
        hf.indexer.index_topk = topk
        idx = hf.indexer(x, q_lat, hf_rope(T, 8), additive_causal(T)[:, 0].expand(2, T, T), None).long()
        hf_chosen = torch.zeros_like(chosen).scatter(-1, idx, True) & causal
        assert torch.equal(hf_chosen, chosen)
        srt = scores.masked_fill(~causal, float("-inf")).sort(-1, descending=True).values
        gap = (srt[:, topk:, topk - 1] - srt[:, topk:, topk]).abs()
        assert gap.min() > 1e-5
        assert chosen[:, topk:].sum(-1).eq(topk).all() and not chosen[:, topk:].all()
        # the whole layer: MLA restricted to the chosen keys
        y_ref, _ = hf(x, position_embeddings=hf_rope(T, 8), attention_mask=additive_causal(T))
        y, _ = ours(x)
    assert rel_rms(y, y_ref) < 1e-6


# -- DSA specifics ----------------------------------------------------------------------------------------------
def test_dsa_topk_at_least_n_equals_dense_mla_exactly():
    spec = dict(name="dsa", q_lora_rank=24, index_topk=16)
    dsa = make(spec, D_MODEL, N_HEADS)
    mla = make(dict(name="mla", q_lora_rank=24), D_MODEL, N_HEADS)
    mla.load_state_dict({k: v for k, v in dsa.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(2, 16, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(dsa(x)[0], mla(x)[0])
        y17, _ = dsa(torch.cat([x, x[:, :1]], 1))  # 17 > top-k: the last query is sparse
        y17_mla, _ = mla(torch.cat([x, x[:, :1]], 1))
    assert torch.equal(y17[:, :16], y17_mla[:, :16])
    assert not torch.allclose(y17[:, 16], y17_mla[:, 16])


def _kl_reference(dsa, x, sparse: bool):
    """KL(p || softmax(I)) written out from the explicit attention probabilities of every head."""
    B, T, _ = x.shape
    with torch.no_grad():
        q, latent, q_lat, rope = dsa.project(x, 0)
        k, _ = dsa.expand(latent)
        scores = dsa.indexer.scores(x, q_lat if q_lat is not None else x, dsa.indexer.keys(x, rope), rope)
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T)
        if sparse:
            allowed = dsa.select(scores, allowed)
        total = 0.0
        for b in range(B):
            for t in range(T):
                keys = allowed[b, t].nonzero().flatten()
                logits = torch.einsum("hd,shd->hs", q[b, t], k[b, keys]) * dsa.scale
                p = logits.softmax(-1).sum(0)
                p = p / p.sum()
                log_i = scores[b, t, keys].log_softmax(-1)
                total += torch.nn.functional.kl_div(log_i, p, reduction="sum")
    return total / (B * T)


@pytest.mark.parametrize("warmup", [False, True])
def test_dsa_aux_loss_value_and_gradient_reach_only_the_indexer(warmup):
    dsa = make(dict(name="dsa", q_lora_rank=24, index_topk=4, indexer_warmup=warmup), D_MODEL, N_HEADS)
    x = torch.randn(2, 12, D_MODEL, dtype=torch.float64)
    dsa.eval()
    assert dsa(x)[0] is not None and dsa.aux_loss is None
    dsa.train()
    xg = x.clone().requires_grad_(True)
    y, _ = dsa(xg)
    aux = dsa.aux_loss
    assert aux.ndim == 0 and aux.item() > 1e-4
    assert abs(aux.item() - _kl_reference(dsa, x, sparse=not warmup).item()) < 1e-10
    named = dict(dsa.named_parameters())
    grads = torch.autograd.grad(aux, list(named.values()) + [xg], allow_unused=True, retain_graph=True)
    for (name, p), g in zip(named.items(), grads):
        if name.startswith("indexer."):
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
        else:
            assert g is None, f"aux loss reaches {name}"
    assert grads[-1] is None, "aux loss reaches the input"
    # and the LM side gives the indexer no gradient
    grads = torch.autograd.grad(y.pow(2).sum(), list(named.values()), allow_unused=True)
    for (name, p), g in zip(named.items(), grads):
        assert (g is None) == name.startswith("indexer."), name
    if warmup:  # the warm-up stage attends densely
        mla = make(dict(name="mla", q_lora_rank=24), D_MODEL, N_HEADS)
        mla.load_state_dict({k: v for k, v in dsa.state_dict().items() if not k.startswith("indexer.")})
        with torch.no_grad():
            assert torch.equal(dsa.eval()(x)[0], mla(x)[0])


# -- gradients, configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SPECS))
def test_finite_gradients(key):
    m = make(SPECS[key], D_MODEL, N_HEADS).float().train()
    x = torch.randn(2, 17, D_MODEL, requires_grad=True)
    y, state = m(x, need_state=False)
    assert state is None
    loss = y.pow(2).mean() + (m.aux_loss if getattr(m, "aux_loss", None) is not None else 0)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bfloat16_runs_and_decodes():
    m = make(SPECS["gated"], D_MODEL, N_HEADS).to(torch.bfloat16)
    x = torch.randn(1, 9, D_MODEL, dtype=torch.bfloat16)
    with torch.no_grad():
        y, st = m(x)
        y2, st2 = m(x[:, :1], st)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y2).all()
    assert state_nbytes(st2) == m.state_bytes(1, 10, torch.bfloat16)


@pytest.mark.parametrize("spec,msg", [
    (dict(name="softmax", num_kv_heads=3), "num_kv_heads=3 must divide num_heads=4"),
    (dict(name="softmax", rope_fraction=0.0), "rope_fraction=0.0"),
    (dict(name="softmax", rope_fraction=0.05), "rope_fraction=0.05"),
    (dict(name="gated_attention", window=0), "window=0"),
    (dict(name="mla", qk_rope_head_dim=7), "qk_rope_head_dim=7"),
    (dict(name="dsa", index_topk=0), "index_topk=0"),
    (dict(name="dsa", index_n_heads=0), "index_n_heads=0"),
    (dict(name="mla", kv_lora_rank=0), "kv_lora_rank=0"),
])
def test_config_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        make_config(spec, D_MODEL, N_HEADS)


def test_dsa_index_head_dim_must_hold_rope():
    with pytest.raises(ValueError, match="index_head_dim=4 must be >= qk_rope_head_dim=8"):
        make(dict(name="dsa", index_head_dim=4), D_MODEL, N_HEADS)
