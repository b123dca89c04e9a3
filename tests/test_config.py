"""Config composition and validation: typos and bad values are errors that say what would be right."""
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from runner.config import ConfigError, validate


def test_default_config_composes_and_validates(compose):
    cfg = compose()
    facts = validate(cfg)
    assert cfg.attention.name == "gated_deltanet" and cfg.full.name == "gated_attention"
    assert cfg.ratio == "3:1" and list(cfg.stages) == ["train", "eval", "bench"]
    assert "".join(facts["layer_types"]) == "LLLF"


@pytest.mark.parametrize("overrides,layout", [
    (["ratio=1:0"], "LLLL"), (["ratio=0:1"], "FFFF"), (["pattern=LFLF"], "LFLF"),
    (["model=base", "ratio=3:1"], "LLLFLLLF"), (["model=base", "ratio=7:1"], "LLLLLLLF"),
])
def test_layouts_from_the_command_line(compose, overrides, layout):
    assert "".join(validate(compose(*overrides))["layer_types"]) == layout


@pytest.mark.parametrize("overrides,fragment", [
    (["ratio=3-1"], "not of the form 'L:F'"),
    (["ratio=0:0"], "no layers"),
    (["seq_len=0"], "seq_len=0 must be a whole number in [1,"),
    (["train.steps=-5"], "train.steps=-5 must be a whole number >= 1"),
    (["data=text", "data.path=/no/such/file.txt"], "does not exist"),
    (["data=text"], "needs data.path"),
    (["stages=[train,evaluate]"], "unknown stage"),
    (["pattern=LLXF"], "'L' (efficient) and 'F'"),
    (["pattern=LLF"], "does not divide"),
    (["bench.lengths=[512,256]"], "increasing"),
    (["train.lr=0"], "train.lr=0 must be a rate in (0, 10]"),
    (["+attention.nonsense=3"], "has no option(s) ['nonsense']"),
    (["attention.name=nope"], "not a known mixer"),
    (["attention.keep_factors=2"], "keep_factors=2 is not a switch; use true or false"),
    (["attention.use_gate=no"], "use_gate='no' is not a switch"),
    (["logger.mode=sometimes"], "logger.mode"),
    (["model.n_heads=3"], "not divisible by num_heads=3"),
])
def test_bad_values_are_reported(compose, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(compose(*overrides))
    assert fragment in str(e.value), str(e.value)


def test_all_problems_are_reported_at_once(compose):
    with pytest.raises(ConfigError) as e:
        validate(compose("seq_len=0", "train.steps=-1", "ratio=3-1"))
    assert len(e.value.problems) == 3


def test_unknown_group_option_fails_at_composition(compose):
    with pytest.raises(ConfigCompositionException, match="nope"):
        compose("attention=nope")


def test_typo_in_a_key_fails_at_composition(compose):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)):
        compose("train.stepz=5")


@pytest.mark.parametrize("overrides,tag", [
    ([], ""),
    # attention is in the name already; the logger does not change what runs; model=small is the default
    (["attention=softmax", "logger=wandb", "model=small"], ""),
    (["experiment=diffusion", "objective=mdlm"], "_full=softmax_objective=mdlm_model=tiny"),
    (["experiment=recursion", "depth=shallow"], "_full=softmax_objective=fill_model=tiny_data=sudoku_depth=shallow"),
    (["arch=qwen3_next", "model=tiny", "full=mla"], "_full=mla_model=tiny_arch=qwen3_next"),  # the defaults' order
])
def test_folder_names_carry_the_groups_chosen_away_from_the_defaults(compose, overrides, tag):
    """A sweep over objective=, depth=, model=... names its jobs apart (conf/config.yaml's run and sweep folders)."""
    from hydra.core.hydra_config import HydraConfig

    from runner.config import choices_tag

    cfg = compose(*overrides, hydra_config=True)
    assert choices_tag(cfg.hydra.runtime.choices) == tag
    cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)  # what a job sees: the folders resolve through ${hydra:runtime.choices}
    try:
        ratio = cfg.ratio.replace(":", "-")
        assert cfg.hydra.sweep.subdir == f"3_{cfg.attention.name}_{ratio}_{cfg.seq_len}_seed0{tag}"
        assert cfg.hydra.run.dir.endswith(f"_{cfg.attention.name}_{ratio}{tag}")
    finally:
        HydraConfig.instance().cfg = None
