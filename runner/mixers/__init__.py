"""Registry of token mixers: name -> (module, mixer class, config class).

Every mixer module defines a config dataclass (a subclass of :class:`MixerConfig`) and a :class:`Mixer`
subclass constructed as ``Cls(d_model, cfg, layer_idx=0, n_layers=1)``. Modules are imported lazily so a
broken optional mixer never blocks the others.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from .base import Mixer, MixerConfig, State, state_nbytes

# name: (module, mixer class, config class, quadratic?)
REGISTRY: dict[str, tuple[str, str, str, bool]] = {
    "softmax": ("runner.mixers.softmax", "SoftmaxAttention", "SoftmaxConfig", True),
    "gated_attention": ("runner.mixers.gated_attention", "GatedAttention", "GatedAttentionConfig", True),
    "mla": ("runner.mixers.mla", "MultiHeadLatentAttention", "MLAConfig", True),
    "dsa": ("runner.mixers.dsa", "DeepSeekSparseAttention", "DSAConfig", True),
    "linear": ("runner.mixers.linear", "LinearAttention", "LinearAttentionConfig", False),
    "lightning": ("runner.mixers.lightning", "LightningAttention", "LightningConfig", False),
    "deltanet": ("runner.mixers.deltanet", "DeltaNet", "DeltaNetConfig", False),
    "gated_deltanet": ("runner.mixers.gated_deltanet", "GatedDeltaNet", "GatedDeltaNetConfig", False),
    "kda": ("runner.mixers.kda", "KimiDeltaAttention", "KDAConfig", False),
    "mamba2": ("runner.mixers.mamba2", "Mamba2", "Mamba2Config", False),
    "position_mlp": ("runner.mixers.position_mlp", "PositionMLP", "PositionMLPConfig", False),
}
# mixers of one fixed length (the cells of a grid), whose position t reads every position: they have no causal form,
# so they run with non-causal objectives only (causal_problem), and the checks and tools that sweep every mixer over
# lengths or causal objectives (the bench ladder, the memory calculator, decoding) leave them out
FIXED_LENGTH = frozenset({"position_mlp"})


def mixer_names(quadratic: bool | None = None, fixed_length: bool = True) -> list[str]:
    """The registered mixers (only the quadratic or linear ones; without the fixed-length ones)."""
    return [n for n, (_, _, _, q) in REGISTRY.items()
            if (quadratic is None or q == quadratic) and (fixed_length or n not in FIXED_LENGTH)]


def _load(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {', '.join(REGISTRY)}")
    mod_name, cls_name, cfg_name, _ = REGISTRY[name]
    mod = importlib.import_module(mod_name)
    return getattr(mod, cls_name), getattr(mod, cfg_name)


def make_config(spec: Mapping[str, Any], d_model: int, n_heads: int) -> MixerConfig:
    """Turn a plain mapping (from Hydra) into the mixer's config dataclass, with clear errors for unknown keys
    or bad values, and fill ``num_heads`` / ``head_dim`` from the model where they are None."""
    spec = dict(spec)
    name = spec.get("name")
    _, cfg_cls = _load(name)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"mixer {name!r} has no option(s) {unknown}; its options are: {sorted(fields)}")
    for f in dataclasses.fields(cfg_cls):  # switches take true/false only: 2 or "no" would be silently truthy
        if f.type in ("bool", bool) and f.name in spec and not isinstance(spec[f.name], bool):
            raise ValueError(f"mixer {name!r}: {f.name}={spec[f.name]!r} is not a switch; use true or false")
    cfg = cfg_cls(**spec)
    if cfg.num_heads is None:
        cfg.num_heads = n_heads
    if cfg.head_dim is None:
        if d_model % cfg.num_heads:
            raise ValueError(
                f"mixer {name!r}: d_model={d_model} is not divisible by num_heads={cfg.num_heads}; "
                f"set head_dim explicitly or choose num_heads dividing {d_model}")
        cfg.head_dim = d_model // cfg.num_heads
    if cfg.num_heads < 1 or cfg.head_dim < 1:
        raise ValueError(f"mixer {name!r}: num_heads and head_dim must be >= 1, got {cfg.num_heads}, {cfg.head_dim}")
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def noncausal_problem(spec: Mapping[str, Any]) -> str | None:
    """Why the mixer ``spec`` names cannot run without its causal mask, or None when it can."""
    name = spec.get("name")
    cls, _ = _load(name)
    if not cls.bidirectional:
        return f"{name!r} runs only with its causal mask"
    if spec.get("window") is not None:
        return f"{name!r} with window={spec['window']} is a causal sliding window; set window=null"
    return None


def causal_problem(spec: Mapping[str, Any]) -> str | None:
    """Why the mixer ``spec`` names cannot run causally, or None when it can."""
    name = spec.get("name")
    _load(name)  # an unknown name is refused as everywhere else
    return f"{name!r} mixes every position with every other" if name in FIXED_LENGTH else None


def build_mixer(spec: Mapping[str, Any], d_model: int, n_heads: int, layer_idx: int = 0, n_layers: int = 1,
                kernels: str = "torch", causal: bool = True) -> Mixer:
    """The mixer ``spec`` names, for layer ``layer_idx`` of ``n_layers``; ``kernels``: the backend of its chunked
    ops (runner/ops/backends.py); ``causal=False``: every position sees the whole sequence (the quadratic mixers
    without their mask, the linear ones as two passes, runner/mixers/bidirectional.py)."""
    cls, _ = _load(spec.get("name"))
    why = causal_problem(spec) if causal else noncausal_problem(spec)
    if why:
        raise ValueError(f"{why}: it cannot run {'causally' if causal else 'non-causally'}")
    cfg = make_config(spec, d_model, n_heads)
    mixer = cls(d_model, cfg, layer_idx=layer_idx, n_layers=n_layers)
    mixer.kernels = kernels
    if causal:
        return mixer
    if cls.native_noncausal:
        mixer.causal = False
        return mixer
    from .bidirectional import Bidirectional

    return Bidirectional(mixer)


__all__ = ["Mixer", "MixerConfig", "State", "state_nbytes", "REGISTRY", "FIXED_LENGTH", "mixer_names", "make_config",
           "build_mixer", "noncausal_problem", "causal_problem"]
