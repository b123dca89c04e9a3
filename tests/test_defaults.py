"""Every default is written once, and where it is written twice the copies agree: the schema (runner/config.py)
and the yaml the default run composes; each mixer's yaml and its config dataclass; the full-layer configs
(conf/full/) and their conf/attention/ twins, of which they are references."""
import dataclasses
import os

import pytest
from omegaconf import OmegaConf

from runner.config import Config, compose_config
from runner.mixers import _load
from runner.paths import CONF_DIR

MIXER_YAMLS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "attention")) if f.endswith(".yaml"))
FULL_YAMLS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "full")) if f.endswith(".yaml"))


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_the_default_run_composes_to_the_schema_defaults():
    composed = OmegaConf.to_container(compose_config([]), resolve=True)
    schema = dataclasses.asdict(Config())
    mixers = {"attention", "full"}  # the schema only names the default mixers; their options: the next test
    assert {k: v for k, v in composed.items() if k not in mixers} == {k: v for k, v in schema.items()
                                                                      if k not in mixers}
    assert composed["attention"]["name"] == schema["attention"]["name"]
    assert composed["full"]["name"] == schema["full"]["name"]


@pytest.mark.parametrize("name", MIXER_YAMLS)
def test_a_mixer_yaml_lists_every_option_with_its_dataclass_default(name):
    y = OmegaConf.to_container(OmegaConf.load(os.path.join(CONF_DIR, "attention", f"{name}.yaml")))
    _, cfg_cls = _load(y["name"])
    # an option taken from the run (position_mlp's length: ${seq_len}) is a derived default, as null is
    y = {k: None if isinstance(v, str) and v.startswith("${") else v for k, v in y.items()}
    assert y == _defaults(cfg_cls)


@pytest.mark.parametrize("name", FULL_YAMLS)
def test_a_full_layer_config_is_its_attention_twin(name):
    full = OmegaConf.to_container(compose_config([f"full={name}"]).full)
    assert full == OmegaConf.to_container(compose_config([f"attention={name}"]).attention)
    assert name in MIXER_YAMLS


def test_model_sizes_name_only_schema_fields():
    fields = {f.name for f in dataclasses.fields(type(Config().model))}
    for fn in os.listdir(os.path.join(CONF_DIR, "model")):
        y = OmegaConf.to_container(OmegaConf.load(os.path.join(CONF_DIR, "model", fn)))
        assert set(y) <= fields and y["name"] == fn[:-5], fn
