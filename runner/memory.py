"""Analytic cache / state memory versus context length, for published architectures and for this repo's models.

``python -m runner.memory`` prints, for each chosen preset, a table of the bytes a model keeps per sequence to
continue decoding after n tokens (rows: context lengths 4K .. 1M; columns: configurations) and the ratio of
each configuration to the preset's all-full-attention counterpart; ``--plot`` draws it (log-log), ``--csv``
writes it in long form.

What is counted, per layer kind (elements per sequence, times the dtype's bytes, times the batch):

* softmax attention (MHA / GQA): K and V for every cached token, ``2 * n * kv_heads * head_dim``
  (with a sliding window, ``n`` is capped at the window);
* MLA: the KV latent and the shared decoupled key for every token, ``n * (kv_lora_rank + qk_rope_head_dim)``;
* linear layers (Gated DeltaNet, KDA, lightning attention, ...): the matrix state ``heads * k_dim * v_dim``,
  constant in n, plus the short-convolution tails ``channels * (conv_size - 1)`` where the layer has a short
  convolution, plus a normaliser ``heads * k_dim`` where the layer keeps one (none of the presets does).

Everything is in one dtype (``--dtype``, default bf16). Not counted: weights, activations, the position counter,
allocator slack and paging granularity. Serving stacks often keep linear layers' recurrent state in fp32
(transformers does for Qwen3-Next and Kimi Linear), which doubles the (small) linear share; run with
``--dtype fp32`` to see the upper end. Bytes are shown in decimal units (1 GB = 10^9 B).

"Our" models (``--ours``) are built from conf/ with :class:`runner.model.HybridLM` on the ``meta`` device (no
memory is allocated) and their figure is the sum of the mixers' own ``state_bytes(batch, n, dtype)``.

API: :func:`cache_bytes` (one configuration, one length) and :func:`presets` (name -> :class:`Preset`).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch

from .paths import CONF_DIR as CONF

PARTS = ("kv", "latent", "matrix", "conv", "normaliser")
PART_NAMES = {"kv": "K/V cache", "latent": "MLA latent + rope key", "matrix": "matrix state",
              "conv": "conv tails", "normaliser": "normaliser"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def dtype_of(dtype) -> torch.dtype:
    """'bf16' | 'fp16' | 'fp32' (or their long names, or a torch.dtype) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if key not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not known; allowed: {list(DTYPES)}")
    return DTYPES[key]


def itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype_of(dtype)).element_size()


def dtype_name(dtype) -> str:
    d = dtype_of(dtype)
    return next((k for k, v in DTYPES.items() if v == d), str(d).replace("torch.", ""))


# -- layers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer's cache/state: elements per token (per sequence) and constant elements, by part."""

    label: str  # e.g. "GQA 2kv x 256"
    per_token: tuple = ()  # ((part, elements per token), ...)
    fixed: tuple = ()  # ((part, elements), ...)
    window: Optional[int] = None  # tokens kept at most (sliding window); None = all

    def elements(self, n: int, parts: Optional[Iterable[str]] = None) -> int:
        keep = None if parts is None else set(parts)
        m = n if self.window is None else min(n, self.window)
        grow = sum(e for p, e in self.per_token if keep is None or p in keep)
        const = sum(e for p, e in self.fixed if keep is None or p in keep)
        return m * grow + const

    def bytes(self, n: int, dtype="bf16", batch: int = 1, parts: Optional[Iterable[str]] = None) -> int:
        return batch * self.elements(n, parts) * itemsize(dtype)

    @property
    def grows(self) -> bool:
        return any(e for _, e in self.per_token)


def attention_layer(kv_heads: int, head_dim: int, q_heads: Optional[int] = None, v_head_dim: Optional[int] = None,
                    window: Optional[int] = None, name: Optional[str] = None) -> Layer:
    """Softmax attention: K (kv_heads x head_dim) and V (kv_heads x v_head_dim) per token."""
    q_heads = q_heads or kv_heads
    dv = v_head_dim or head_dim
    if name is None:
        name = "MHA" if q_heads == kv_heads else ("MQA" if kv_heads == 1 else "GQA")
    label = f"{name} {q_heads}q/{kv_heads}kv x {head_dim}" + (f", window {window}" if window else "")
    return Layer(label, per_token=(("kv", kv_heads * (head_dim + dv)),), window=window)


def mla_layer(kv_lora_rank: int, qk_rope_head_dim: int, name: str = "MLA") -> Layer:
    """Multi-head latent attention: the latent and the shared decoupled key per token, whatever the heads."""
    return Layer(f"{name} latent {kv_lora_rank} + key {qk_rope_head_dim}",
                 per_token=(("latent", kv_lora_rank + qk_rope_head_dim),))


def linear_layer(name: str, heads: int, k_dim: int, v_dim: int, conv_channels: int = 0, conv_size: int = 4,
                 normaliser: bool = False) -> Layer:
    """A linear-attention / SSM layer: heads matrices of k_dim x v_dim, the short-conv tails of
    ``conv_channels`` channels (``conv_size - 1`` steps each) and optionally a normaliser vector per head."""
    fixed = [("matrix", heads * k_dim * v_dim)]
    label = f"{name} {heads} x {k_dim}x{v_dim}"
    if conv_channels and conv_size > 1:
        fixed.append(("conv", conv_channels * (conv_size - 1)))
        label += f", conv {conv_channels} ch x {conv_size - 1}"
    if normaliser:
        fixed.append(("normaliser", heads * k_dim))
        label += ", normaliser"
    return Layer(label, fixed=tuple(fixed))


# -- configurations and presets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """One configuration: a list of layers, described analytically."""

    name: str
    layers: tuple
    role: str = "hybrid"  # full | hybrid | linear
    note: str = ""

    def bytes(self, n: int, dtype="bf16", batch: int = 1, parts: Optional[Iterable[str]] = None) -> int:
        parts = None if parts is None else tuple(parts)
        return sum(layer.bytes(n, dtype, batch, parts) for layer in self.layers)

    def breakdown(self, n: int, dtype="bf16", batch: int = 1) -> dict:
        """Bytes by part (only parts present)."""
        out = {p: self.bytes(n, dtype, batch, (p,)) for p in PARTS}
        return {p: b for p, b in out.items() if b}

    def composition(self) -> str:
        counts: dict = {}
        for layer in self.layers:
            counts[layer.label] = counts.get(layer.label, 0) + 1
        return " + ".join(f"{c} x [{label}]" for label, c in counts.items())


@dataclass(frozen=True)
class ModelArch:
    """A configuration built from this repo's conf/ as a HybridLM on the meta device; bytes = the sum of the
    mixers' ``state_bytes``."""

    name: str
    model: object = field(repr=False, compare=False)
    role: str = "hybrid"
    note: str = ""

    def bytes(self, n: int, dtype="bf16", batch: int = 1, parts: Optional[Iterable[str]] = None) -> int:
        if parts is not None:
            raise ValueError(f"{self.name}: a built model has no per-part breakdown; ask for parts=None")
        d = dtype_of(dtype)
        return int(sum(m.state_bytes(batch, n, d) for m in self.model.mixers))

    def breakdown(self, n: int, dtype="bf16", batch: int = 1) -> dict:
        out: dict = {}
        for kind, m in zip(self.model.layer_types, self.model.mixers):
            key = f"{'L' if kind == 'L' else 'F'}: {type(m).__name__}"
            out[key] = out.get(key, 0) + int(m.state_bytes(batch, n, dtype_of(dtype)))
        return out

    def composition(self) -> str:
        counts: dict = {}
        for m in self.model.mixers:
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
        layout = "".join(self.model.layer_types)
        return " + ".join(f"{c} x {name}" for name, c in counts.items()) + f" (layout {layout})"


@dataclass(frozen=True)
class Preset:
    """A named comparison: several configurations of one model family; ``main`` is the published one (what
    ``cache_bytes(preset)`` uses), ``baseline`` the all-full-attention counterpart the ratios divide by."""

    name: str
    title: str
    description: str
    configs: tuple
    main: str
    baseline: Optional[str] = None

    def config(self, name: str):
        for c in self.configs:
            if c.name.lower() == str(name).lower():
                return c
        raise KeyError(f"preset {self.name!r} has no configuration {name!r}; it has: {[c.name for c in self.configs]}")


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


# -- our models -----------------------------------------------------------------------------------------------

OURS_DEFAULTS = {"model": "small", "attention": "gated_deltanet", "full": "gated_attention", "ratio": "3:1",
                 "pattern": None}


def available_mixers() -> list:
    """Registered mixers whose module exists in this checkout."""
    import importlib.util

    from .mixers import REGISTRY

    return [n for n, (mod, *_rest) in REGISTRY.items() if importlib.util.find_spec(mod) is not None]


def parse_ours(text: str) -> dict:
    """'model=small,attention=gated_deltanet,full=gated_attention,ratio=3:1' (any subset; also pattern=LLLF and
    mixer options such as attention.window=64) -> a dict over the defaults."""
    import yaml

    spec = dict(OURS_DEFAULTS)
    spec["attention_options"], spec["full_options"] = {}, {}
    allowed = sorted(k for k in OURS_DEFAULTS) + ["attention.<option>", "full.<option>"]
    for item in filter(None, (s.strip() for s in str(text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"--ours item {item!r} is not key=value; keys: {', '.join(allowed)}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key in OURS_DEFAULTS:
            spec[key] = value if value.lower() not in ("", "null", "none") else None
        elif key.startswith(("attention.", "full.")) and key.count(".") == 1:
            group, option = key.split(".")
            spec[f"{group}_options"][option] = yaml.safe_load(value)
        else:
            raise ValueError(f"--ours key {key!r} is not known; keys: {', '.join(allowed)}")
    for key in ("model", "attention", "full"):
        if not spec[key]:
            raise ValueError(f"--ours needs {key}=<name>")
    return spec


def _override_value(v) -> str:
    """A Python value as a Hydra override's value."""
    import json

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(v)


def build_ours(spec: Union[str, Mapping], vocab_size: int = 256):
    """Build the HybridLM described by ``spec`` (see :func:`parse_ours`) on the meta device, from the configuration
    ``python -m runner`` would compose for the same choices (runner.config.compose_config, runner.model.build_model)."""
    from hydra.errors import HydraException

    from .config import compose_config
    from .layout import layer_types
    from .mixers import REGISTRY
    from .model import build_model

    spec = parse_ours(spec) if isinstance(spec, str) else {**parse_ours(""), **dict(spec)}
    present = available_mixers()
    for group in ("attention", "full"):
        if spec[group] not in REGISTRY:
            raise ValueError(f"{group}={spec[group]!r} is not a known mixer; known: {', '.join(REGISTRY)}")
        if spec[group] not in present:
            raise ValueError(f"{group}={spec[group]!r} is registered but its module is not in runner/mixers/ "
                             f"of this checkout, so it cannot be built; mixers present: {', '.join(present)}")
    overrides = [f"model={spec['model']}", f"attention={spec['attention']}", f"full={spec['full']}",
                 f"ratio={spec['ratio'] or '3:1'}"] + ([f"pattern={spec['pattern']}"] if spec["pattern"] else [])
    for group in ("attention", "full"):
        overrides += [f"++{group}.{k}={_override_value(v)}" for k, v in spec.get(f"{group}_options", {}).items()]
    sizes = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "model")) if f.endswith(".yaml"))
    if spec["model"] not in sizes:
        raise ValueError(f"model={spec['model']!r} has no conf/model/{spec['model']}.yaml; sizes: {', '.join(sizes)}")
    try:
        cfg = compose_config(overrides)
        kinds = layer_types(cfg.model.n_layers, cfg.ratio, cfg.pattern)
    except (HydraException, ValueError) as e:
        raise ValueError(f"--ours {','.join(overrides)}: {str(e).splitlines()[0]}") from None
    try:
        model = build_model(cfg, vocab_size, kinds, device="meta")
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot build model={spec['model']} attention={cfg.attention.name} full={cfg.full.name}: "
                         f"{e}")
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"model={spec['model']} attention={cfg.attention.name} full={cfg.full.name} cannot be built "
                         f"on the meta device (a mixer's constructor needs real tensor values): {e}")
    return model, spec


def ours(spec: Union[str, Mapping] = "") -> Preset:
    """A preset for one of this repo's models and, unless it is all full already, the same model all full."""
    model, spec = build_ours(spec)
    kinds = "".join(model.layer_types)
    a, f = spec["attention"], spec["full"]
    layout = f"pattern {spec['pattern']}" if spec["pattern"] else f"ratio {spec['ratio']}"
    label = f"{a}+{f} {spec['pattern'] or spec['ratio']}"
    quadratic = {bool(getattr(m, "quadratic", False)) for m in model.mixers}
    role = "full" if quadratic == {True} else ("linear" if quadratic == {False} else "hybrid")
    configs = [ModelArch(label, model, role)]
    baseline = label
    if set(kinds) != {"F"}:
        full_model, _ = build_ours({**spec, "ratio": "0:1", "pattern": None})
        baseline = f"all {f}"
        configs.append(ModelArch(baseline, full_model, "full"))
    return Preset(
        f"ours-{spec['model']}-{a}-{f}-{(spec['pattern'] or spec['ratio']).replace(':', 'to')}",
        f"this repo: model={spec['model']} attention={a} full={f} {layout} (layout {kinds})",
        "Built from conf/ as HybridLM on the meta device; the figure is the sum of each mixer's own "
        "state_bytes(batch, n, dtype), i.e. exactly the tensors its state dict holds (see each mixer's docstring)."
        + (f" Mixer options set: attention {spec['attention_options']}" if spec.get("attention_options") else "")
        + (f" full {spec['full_options']}" if spec.get("full_options") else ""),
        tuple(configs), main=label, baseline=baseline)


# -- the function API -----------------------------------------------------------------------------------------


def resolve(preset_or_layers):
    """A configuration from: a preset name ('kimi-linear-48b-a3b' -> its published configuration), 'preset/config'
    ('reference-48L/all-MHA'), 'ours:model=...,...', a Preset, an Arch / ModelArch, a list of Layers, or a model
    with ``state_bytes``."""
    x = preset_or_layers
    if isinstance(x, str):
        if x.lower().startswith("ours"):
            p = ours(x.split(":", 1)[1] if ":" in x else "")
            return p.config(p.main)
        if "/" in x:
            name, config = x.split("/", 1)
            return find_preset(name).config(config)
        p = find_preset(x)
        return p.config(p.main)
    if isinstance(x, Preset):
        return x.config(x.main)
    if isinstance(x, (Arch, ModelArch)):
        return x
    if isinstance(x, Layer):
        return Arch("layers", (x,))
    if isinstance(x, (list, tuple)) and all(isinstance(v, Layer) for v in x):
        return Arch("layers", tuple(x))
    if hasattr(x, "mixers") and hasattr(x, "layer_types"):
        return ModelArch(type(x).__name__, x)
    raise TypeError(f"cannot compute cache bytes of {type(x).__name__}; give a preset name, 'preset/config', "
                    f"a Preset, an Arch, a list of Layer or a HybridLM")


def cache_bytes(preset_or_layers, n: int, dtype="bf16", batch: int = 1, parts: Optional[Iterable[str]] = None) -> int:
    """Bytes of cache/state one forward keeps for ``batch`` sequences after ``n`` tokens. ``parts`` restricts
    the count to some of 'kv', 'latent', 'matrix', 'conv', 'normaliser' (analytic configurations only)."""
    if n < 0 or batch < 1:
        raise ValueError(f"need n >= 0 and batch >= 1, got n={n}, batch={batch}")
    if parts is not None:
        bad = sorted(set(parts) - set(PARTS))
        if bad:
            raise ValueError(f"unknown part(s) {bad}; allowed: {list(PARTS)}")
    return int(resolve(preset_or_layers).bytes(int(n), dtype, int(batch), parts))


# -- formatting -----------------------------------------------------------------------------------------------


def human_bytes(b: float) -> str:
    """Decimal units, 3 significant figures: 51539607552 -> '51.5 GB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            v = b / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{int(b)} B"


def human_tokens(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return f"{n:,}"


def context_lengths(min_len: int = 4096, max_len: int = 1 << 20) -> list:
    """Powers of two from min_len up to max_len, with min_len and max_len themselves always included."""
    out = [min_len]
    p = 1 << math.ceil(math.log2(min_len))
    while p <= max_len:
        if p > out[-1]:
            out.append(p)
        p <<= 1
    if out[-1] != max_len and max_len > min_len:
        out.append(max_len)
    return out


def rows(selected: Sequence[Preset], lengths: Sequence[int], dtype, batch: int) -> list:
    """Long-form records: one per (preset, configuration, length)."""
    out = []
    for p in selected:
        base = p.config(p.baseline) if p.baseline else None
        for c in p.configs:
            for n in lengths:
                b = c.bytes(n, dtype, batch)
                full = base.bytes(n, dtype, batch) if base is not None else None
                out.append({"preset": p.name, "configuration": c.name, "role": c.role, "context": n,
                            "dtype": dtype_name(dtype), "batch": batch, "bytes": b,
                            "fraction_of_full": (b / full) if full else None})
    return out


def print_tables(selected: Sequence[Preset], lengths: Sequence[int], dtype, batch: int, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    for p in selected:
        base = p.config(p.baseline) if p.baseline else None
        others = [c for c in p.configs if base is not None and c is not base]
        console.print(f"[bold]{escape(p.name)}[/bold]: {escape(p.title)}")
        t = Table()
        t.add_column("context", justify="right")
        for c in p.configs:
            t.add_column(c.name, justify="right")
        for c in others:
            t.add_column(f"{c.name} / full", justify="right", style="cyan")
        for n in lengths:
            vals = [c.bytes(n, dtype, batch) for c in p.configs]
            full = base.bytes(n, dtype, batch) if base is not None else None
            ratios = [f"{c.bytes(n, dtype, batch) / full:.3g}" if full else "-" for c in others]
            t.add_row(human_tokens(n), *[human_bytes(v) for v in vals], *ratios)
        console.print(t)
        console.print(f"cache/state for batch {batch} in {dtype_name(dtype)}, decimal units (1 GB = 1e9 B)"
                      + (f"; ratios are configuration / {escape(base.name)}" if others else ""))
        console.print(escape(p.description), style="dim")
        n = lengths[-1]
        for c in p.configs:
            parts = c.breakdown(n, dtype, batch)
            detail = " + ".join(f"{PART_NAMES.get(k, k)} {human_bytes(v)}" for k, v in parts.items())
            console.print(escape(f"  {c.name}: {c.composition()}\n    at {human_tokens(n)}: {detail or '0 B'}"
                                 f" = {human_bytes(c.bytes(n, dtype, batch))}"))
        if base is not None:
            for c in others:
                full = base.bytes(n, dtype, batch)
                if full:
                    frac = c.bytes(n, dtype, batch) / full
                    console.print(f"  [bold]{escape(c.name)}[/bold] keeps {frac:.1%} of {escape(base.name)}'s cache at "
                                  f"{human_tokens(n)} tokens ({1 - frac:.1%} less)")
        console.print()


def write_csv(path: str, records: Sequence[dict]) -> None:
    cols = ["preset", "configuration", "role", "context", "dtype", "batch", "bytes", "fraction_of_full"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            frac = r["fraction_of_full"]
            w.writerow({**r, "fraction_of_full": "" if frac is None else f"{frac:.6g}"})


def plot(path: str, selected: Sequence[Preset], lengths: Sequence[int], dtype, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    styles = {"full": "--", "hybrid": "-", "linear": ":"}
    fig, ax = plt.subplots(figsize=(10, 6.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(selected):
        for c in p.configs:
            ys = [max(c.bytes(n, dtype, batch), 1) for n in lengths]
            ax.plot(lengths, ys, styles.get(c.role, "-."), marker="o", markersize=3,
                    color=colors[i % len(colors)], label=f"{p.name}: {c.name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_tokens(int(v)) if v >= 1 else ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.set_xlabel("context length n (tokens, log scale)")
    ax.set_ylabel("cache / state memory (bytes, decimal units, log scale)")
    ax.set_title(f"Cache / state memory vs context: {dtype_name(dtype)}, batch {batch}\n"
                 "dashed: all full attention, solid: hybrid, dotted: all linear")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line ---------------------------------------------------------------------------------------------


def _preset_name(text: str) -> str:
    names = list(presets())
    for name in names:
        if name.lower() == text.lower():
            return name
    raise argparse.ArgumentTypeError(f"invalid preset {text!r} (choose from {', '.join(names)})")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def parser() -> argparse.ArgumentParser:
    names = list(presets())
    ap = argparse.ArgumentParser(
        prog="python -m runner.memory",
        description="Analytic KV-cache / recurrent-state memory versus context length for published hybrid "
                    "architectures and this repo's models.",
        epilog=f"presets: {', '.join(names)}. Without --preset and --ours every preset is shown; with only "
               "--ours, only ours. --ours takes key=value pairs: model (conf/model), attention, full (mixer "
               "names), ratio or pattern, and mixer options as attention.<key>=value / full.<key>=value.")
    ap.add_argument("--preset", action="append", type=_preset_name, metavar="NAME",
                    help=f"a preset to show (repeatable); one of: {', '.join(names)}")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16",
                    help="element type of every cache/state (default bf16)")
    ap.add_argument("--batch", type=_positive, default=1, help="sequences (default 1)")
    ap.add_argument("--min-len", type=_positive, default=4096, help="shortest context in the table (default 4096)")
    ap.add_argument("--max-len", type=_positive, default=1 << 20, help="longest context (default 1048576)")
    ap.add_argument("--plot", metavar="PNG", help="write a log-log plot of bytes vs context here")
    ap.add_argument("--csv", metavar="CSV", help="write every figure in long form here")
    ap.add_argument("--ours", action="append", nargs="?", const="", metavar="SPEC",
                    help="one of this repo's models, e.g. model=small,attention=gated_deltanet,"
                         "full=gated_attention,ratio=3:1 (repeatable; missing keys take those defaults)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.min_len > args.max_len:
        ap.error(f"--min-len {args.min_len} is larger than --max-len {args.max_len}")
    table = presets()
    selected = [table[n] for n in dict.fromkeys(args.preset or [])]
    for spec in args.ours or []:
        try:
            selected.append(ours(spec))
        except ValueError as e:
            ap.error(f"--ours {spec!r}: {e}")
    if not selected:
        selected = list(table.values())
    lengths = context_lengths(args.min_len, args.max_len)
    dtype = DTYPES[args.dtype]
    print_tables(selected, lengths, dtype, args.batch)
    if args.csv:
        write_csv(args.csv, rows(selected, lengths, dtype, args.batch))
        print(f"wrote {args.csv}")
    if args.plot:
        plot(args.plot, selected, context_lengths(min(1024, args.min_len), args.max_len), dtype, args.batch)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
