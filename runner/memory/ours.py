"""This runner's own models in the memory calculator (``--ours model=...,attention=...``): built from the
configuration ``python -m runner`` would compose, on the meta device (no memory), counted by the mixers' own
``state_bytes``."""
from __future__ import annotations

import os
from typing import Mapping, Union

from ..paths import CONF_DIR as CONF
from .arch import ModelArch, Preset

# -- our models -----------------------------------------------------------------------------------------------

OURS_DEFAULTS = {"model": "small", "attention": "gated_deltanet", "full": "gated_attention", "ratio": "3:1",
                 "pattern": None}


def available_mixers() -> list:
    """Registered mixers whose module exists in this checkout."""
    import importlib.util

    from ..mixers import FIXED_LENGTH, REGISTRY

    return [n for n, (mod, *_rest) in REGISTRY.items()
            if n not in FIXED_LENGTH and importlib.util.find_spec(mod) is not None]  # (one length: no curve in n)


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

    from ..config import compose_config
    from ..layout import layer_types
    from ..mixers import REGISTRY
    from ..model import build_model

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
