"""Published architectures as presets of the memory calculator (their configs, and the all-full-attention model of
the same depth for the ratio): a reference hybrid, Qwen3-Next, Kimi Linear, MiniMax-M1 and Llama 3 8B."""
from __future__ import annotations

from typing import Sequence

from .arch import Arch, Layer, Preset, attention_layer, linear_layer, mla_layer

def _layout(n_layers: int, full_every: int) -> list:
    """'F' at every full_every-th layer (the last of each group), 'L' elsewhere (Qwen3-Next, MiniMax-M1)."""
    return ["F" if (i + 1) % full_every == 0 else "L" for i in range(n_layers)]


def _arch(name: str, layout: Sequence[str], linear: Layer, full: Layer, role: str, note: str = "") -> Arch:
    return Arch(name, tuple(full if k == "F" else linear for k in layout), role, note)


def _reference() -> Preset:
    L, H, D = 48, 16, 128
    mha = attention_layer(H, D)
    gdn = linear_layer("GDN", H, D, D, conv_channels=3 * H * D, conv_size=4)
    return Preset(
        "reference-48L", "textbook 48 layers, 16 heads x 128: all-MHA vs all-Gated-DeltaNet vs 3:1",
        "MHA counts K and V (2 x 16 x 128 per token per layer). Gated DeltaNet counts the 16 x 128 x 128 matrix "
        "state AND the short-conv tails (kernel 4 over q, k, v: 3 x 2048 channels x 3 steps) per layer: at bf16 "
        "that is 25.2 MB of matrix state + 1.77 MB of conv tails = 26.9 MB for 48 layers (the breakdown below "
        "gives both). No normaliser. 3:1 = 36 GDN + 12 MHA layers (every 4th full).",
        (_arch("all-MHA", ["F"] * L, gdn, mha, "full"),
         _arch("all-GDN", ["L"] * L, gdn, mha, "linear"),
         _arch("3:1 GDN:MHA", _layout(L, 4), gdn, mha, "hybrid")),
        main="3:1 GDN:MHA", baseline="all-MHA")


def _qwen3_next() -> Preset:
    # transformers Qwen3NextConfig defaults = the released checkpoint: 48 layers, full_attention_interval 4,
    # 16 q / 2 kv heads x 256 (gated attention), GDN 16 q/k heads x 128, 32 value heads x 128, conv kernel 4.
    ga = attention_layer(2, 256, q_heads=16, name="gated GQA")
    gdn = linear_layer("GDN", 32, 128, 128, conv_channels=2 * 16 * 128 + 32 * 128, conv_size=4)
    return Preset(
        "qwen3-next-80b-a3b", "Qwen3-Next-80B-A3B: Gated DeltaNet : gated attention 3:1, 48 layers",
        "Gated attention counts K and V of 2 kv heads x 256 per token (the output gate is not cached). Gated "
        "DeltaNet counts the matrix state of its 32 value heads (each 128 x 128; the 16 q/k heads are shared by "
        "pairs of value heads) and the conv tails (kernel 4 over q, k, v = 2 x 16 x 128 + 32 x 128 = 8192 "
        "channels x 3 steps). No normaliser. Hybrid = 36 GDN + 12 full (every 4th layer); compared with the "
        "same 48 layers all gated attention. Source: transformers' Qwen3NextConfig defaults.",
        (_arch("Qwen3-Next 3:1", _layout(48, 4), gdn, ga, "hybrid"),
         _arch("all gated-attn", ["F"] * 48, gdn, ga, "full")),
        main="Qwen3-Next 3:1", baseline="all gated-attn")


# Released Kimi-Linear-48B-A3B checkpoint: linear_attn_config.full_attn_layers (1-indexed).
KIMI_MLA_LAYERS = (4, 8, 12, 16, 20, 24, 27)


def _kimi_linear() -> Preset:
    # transformers KimiLinearConfig defaults: 27 layers, 32 heads, kv_lora_rank 512, qk_rope_head_dim 64,
    # qk_nope_head_dim 128, v_head_dim 128; linear (KDA) 32 heads x 128, conv kernel 4 over q, k, v.
    n = 27
    mla = mla_layer(512, 64, name="MLA (NoPE)")
    kda = linear_layer("KDA", 32, 128, 128, conv_channels=3 * 32 * 128, conv_size=4)
    layout = ["F" if i + 1 in KIMI_MLA_LAYERS else "L" for i in range(n)]
    return Preset(
        "kimi-linear-48b-a3b", "Kimi Linear 48B-A3B: KDA : MLA (NoPE) 3:1, 27 layers",
        "MLA counts the KV latent (kv_lora_rank 512) and the shared decoupled key (qk_rope_head_dim 64; not "
        "rotated in this NoPE model, but still cached) = 576 numbers per token per layer, independent of the 32 "
        "heads. KDA counts 32 matrices of 128 x 128 and the conv tails (kernel 4 over q, k, v = 3 x 4096 "
        "channels x 3 steps). No normaliser. Layer count and sizes from transformers' KimiLinearConfig "
        "defaults (27 layers, 32 heads, qk_nope 128 / v 128, kv_lora_rank 512, qk_rope_head_dim 64, linear 32 "
        "heads x 128, conv 4); the layout from the released checkpoint's full_attn_layers "
        f"{list(KIMI_MLA_LAYERS)} (1-indexed): 7 MLA + 20 KDA. (KimiLinearConfig's own fallback layout, used only "
        "without a checkpoint layout, has 6 MLA layers.) Compared with the same 27 layers all MLA.",
        (_arch("Kimi Linear 3:1", layout, kda, mla, "hybrid"),
         _arch("all-MLA", ["F"] * n, kda, mla, "full")),
        main="Kimi Linear 3:1", baseline="all-MLA")


def _minimax_m1() -> Preset:
    # Published MiniMax-M1 / MiniMax-Text-01: 80 layers, hidden 6144, 64 heads x 128, softmax layers GQA with 8 kv
    # heads, one softmax layer after every 7 lightning layers. (transformers' MiniMaxConfig defaults are
    # Mixtral-sized: 32 layers, 32 heads, 8 kv heads, alternating layer types; not used.)
    soft = attention_layer(8, 128, q_heads=64, name="softmax GQA")
    light = linear_layer("lightning", 64, 128, 128)
    return Preset(
        "minimax-m1", "MiniMax-M1: lightning : softmax 7:1, 80 layers",
        "Softmax layers count K and V of 8 kv heads x 128 per token (GQA, 64 query heads). Lightning attention "
        "counts 64 matrices of 128 x 128 (its decay is fixed per head, no short convolution, no normaliser: "
        "the output is RMSNorm-ed instead). Hybrid = 70 lightning + 10 softmax (every 8th layer); compared "
        "with the same 80 layers all softmax. Sizes: the published MiniMax-M1/Text-01 configuration (80 layers, "
        "64 heads x 128, 8 kv heads); transformers' MiniMaxConfig defaults (32 layers, 32 heads, 8 kv heads, "
        "head_dim 4096/32 = 128, alternating layers) describe a smaller Mixtral-sized model and are not used.",
        (_arch("MiniMax-M1 7:1", _layout(80, 8), light, soft, "hybrid"),
         _arch("all-softmax", ["F"] * 80, light, soft, "full")),
        main="MiniMax-M1 7:1", baseline="all-softmax")


def _llama3_8b() -> Preset:
    gqa = attention_layer(8, 128, q_heads=32)
    return Preset(
        "llama-3-8b", "dense GQA baseline, Llama-3-8B-like: 32 layers, 32 q / 8 kv heads x 128",
        "Counts K and V of 8 kv heads x 128 per token in each of 32 layers (no linear layers).",
        (Arch("Llama-3-8B GQA", tuple([gqa] * 32), "full"),),
        main="Llama-3-8B GQA", baseline="Llama-3-8B GQA")


_BUILDERS = (_reference, _qwen3_next, _kimi_linear, _minimax_m1, _llama3_8b)


def presets() -> dict:
    """Name -> :class:`Preset` of every published architecture this module knows."""
    out = {}
    for build in _BUILDERS:
        p = build()
        out[p.name] = p
    return out


def find_preset(name: str) -> Preset:
    table = presets()
    for key, p in table.items():
        if key.lower() == str(name).lower():
            return p
    raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(table)}")
