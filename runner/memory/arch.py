"""The memory calculator's model of a layer and of a configuration: what each layer kind keeps per sequence after
n tokens (K/V, MLA latent, matrix state, conv tails, normaliser), configurations of layers, and presets that
compare configurations with their all-full-attention counterpart."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

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
