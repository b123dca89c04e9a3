"""Every named study in experiments/ composes, declares its own sweep, and every job of that sweep (also with the
GPU overrides its comment documents) is a valid configuration. Nothing is run here: composing and validating
only, with Hydra's compose API and the same sweep expansion as Hydra's basic sweeper."""
import os
import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf

from runner.config import ConfigError, register, validate
from runner.layout import layer_types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")
EXPERIMENTS = os.path.join(ROOT, "experiments")
NAMES = sorted(f[:-5] for f in os.listdir(EXPERIMENTS) if f.endswith(".yaml"))
REQUIRED = ("lineup", "ratio", "context", "scaling")


def _text(name: str) -> str:
    with open(os.path.join(EXPERIMENTS, f"{name}.yaml")) as f:
        return f.read()


register()
_COMPOSED: dict = {}


def _compose(overrides, hydra_config=False):
    """The composed config of `python -m runner <overrides>` (cached: many jobs share their overrides)."""
    key = (tuple(overrides), hydra_config)
    if key not in _COMPOSED:
        if not GlobalHydra.instance().is_initialized():
            initialize_config_dir(config_dir=CONF, version_base="1.3")  # kept for the whole module
        _COMPOSED[key] = compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)
    return _COMPOSED[key]


@pytest.fixture(scope="module", autouse=True)
def _release_hydra():
    yield
    GlobalHydra.instance().clear()


def _jobs(name: str, cli=()):
    """The override lists of the jobs of `python -m runner experiment=<name> <cli>`: the experiment's
    hydra.sweeper.params, then the command line (a key given on both: the command line's values), expanded into
    their product exactly as Hydra's basic sweeper does."""
    cfg = _compose([f"experiment={name}"], hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides(params + [f"experiment={name}", *cli])
    return cfg, BasicSweeper.split_arguments(overrides, None)[0]


def _documented_commands(name: str) -> list[list[str]]:
    """The `python -m runner experiment=<name> ...` commands in the experiment's comments (with their '\\'
    continuation lines), as override lists without the program."""
    lines = [ln[1:].strip() for ln in _text(name).splitlines() if ln.startswith("#")]
    commands, i = [], 0
    while i < len(lines):
        if lines[i].startswith("python -m runner"):
            cmd = lines[i]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1] + " " + lines[i]
            cmd = cmd.split(" # ")[0]  # a trailing comment
            from runner.__main__ import _seeds_short_form

            args = [a for a in _seeds_short_form(["runner", *shlex.split(cmd)[3:]])[1:] if a != "-m"]
            if args and args[0] == f"experiment={name}":  # a command of another study (e.g. at tuned rates)
                commands.append(args)
        i += 1
    return commands


def test_the_required_studies_exist():
    assert set(REQUIRED) <= set(NAMES), f"missing: {set(REQUIRED) - set(NAMES)}"


@pytest.mark.parametrize("name", NAMES)
def test_experiment_is_a_documented_global_sweep(name):
    text = _text(name)
    assert text.splitlines()[0].strip() == "# @package _global_", "first line must be '# @package _global_'"
    comments = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    if name == "quick":  # the smoke test: it must say it answers nothing
        assert "It answers nothing" in comments
    else:
        assert re.search(r"^# Question: [^?]+\?", comments, re.M), "a comment must say which question it answers"
    assert f"python -m runner experiment={name}" in text, "the comment must show how to run it"
    cfg, jobs = _jobs(name)
    assert cfg.hydra.mode.name == "MULTIRUN", "hydra.mode: MULTIRUN, so that it runs without -m"
    assert len(cfg.hydra.sweeper.params) >= 1 and len(jobs) >= 2, "it must declare its own sweep"
    assert OmegaConf.select(cfg, "hydra.callbacks.report._target_") == "runner.report.ReportCallback"


@pytest.mark.parametrize("name", NAMES)
def test_every_job_of_the_sweep_is_valid(name):
    _, jobs = _jobs(name)
    for job in jobs:
        validate(_compose(job))  # raises ConfigError naming every problem


@pytest.mark.parametrize("name", NAMES)
def test_documented_gpu_overrides_are_valid(name):
    commands = _documented_commands(name)
    scaled = [c for c in commands if len(c) > 1]
    assert scaled, "the comment must document how to scale the study up (overrides of size and length)"
    for cli in commands:
        _, jobs = _jobs(name, cli[1:])
        for job in jobs:
            try:
                validate(_compose(job))
            except ConfigError as e:
                raise AssertionError(f"python -m runner {' '.join(cli)}: {job}: {e}") from None


def _configs(name, cli=()):
    _, jobs = _jobs(name, cli)
    out = []
    for job in jobs:
        cfg = _compose(job)
        out.append((cfg, validate(cfg)["layer_types"]))
    return out


def _mixers(cfg, layers) -> set:
    return ({cfg.attention.name} if "L" in layers else set()) | ({cfg.full.name} if "F" in layers else set())


def test_lineup_covers_every_mixer_of_conf_attention_at_3_1_and_the_all_softmax_model():
    from runner.mixers import FIXED_LENGTH  # position_mlp: one length, non-causal only (experiment=recursion)

    available = {f[:-5] for f in os.listdir(os.path.join(CONF, "attention")) if f.endswith(".yaml")} - FIXED_LENGTH
    configs = _configs("lineup")
    assert {c.attention.name for c, _ in configs} == available
    assert {c.ratio for c, _ in configs} == {"3:1"}
    assert len({c.model.name for c, _ in configs}) == 1 and len({c.seq_len for c, _ in configs}) == 1
    assert any(_mixers(c, lt) == {"softmax"} for c, lt in configs), "the all-softmax baseline"
    assert len({c.full.name for c, _ in configs}) == 1, "the same full layers for every mixer"


def test_ratio_sweeps_five_distinct_layouts_for_gated_deltanet_and_kda():
    configs = _configs("ratio")
    assert {c.attention.name for c, _ in configs} == {"gated_deltanet", "kda"}
    assert {c.ratio for c, _ in configs} == {"0:1", "1:1", "3:1", "7:1", "1:0"}
    for att in ("gated_deltanet", "kda"):
        layouts = ["".join(lt) for c, lt in configs if c.attention.name == att]
        assert len(set(layouts)) == 5, f"{att}: ratios collapse to the same layout at this depth: {layouts}"
    assert "".join(layer_types(8, "7:1")) == "LLLLLLLF"


def test_context_compares_all_softmax_hybrid_and_all_linear_on_a_long_ladder():
    configs = _configs("context")
    kinds = {("L" in lt, "F" in lt) for _, lt in configs}
    assert kinds == {(False, True), (True, True), (True, False)}, "0:1, a hybrid and 1:0"
    assert {c.ratio for c, _ in configs} == {"0:1", "3:1", "1:0"}
    assert any(_mixers(c, lt) == {"softmax"} for c, lt in configs)
    for c, _ in configs:
        assert "bench" in c.stages and ("train" not in c.stages or c.train.steps <= 50)
        assert len(c.bench.lengths) >= 5 and c.bench.lengths[-1] >= 16 * c.bench.lengths[0]
        assert c.bench.time_budget_s <= 60 and c.bench.memory_budget_gb > 0, "the quadratic model must stop early"


def test_scaling_has_sizes_times_softmax_and_3_1():
    configs = _configs("scaling")
    sizes = {c.model.name for c, _ in configs}
    assert 2 <= len(sizes) <= 3
    for size in sizes:
        mine = [(c, lt) for c, lt in configs if c.model.name == size]
        assert any(_mixers(c, lt) == {"softmax"} for c, lt in mine)
        assert any(c.ratio == "3:1" and "L" in lt and c.attention.name != "softmax" for c, lt in mine)
    widths = {c.model.name: c.model.d_model for c, _ in configs}
    assert len(set(widths.values())) == len(sizes), "different sizes"
    # the documented GPU command replaces the sizes
    gpu = [c for c in _documented_commands("scaling") if len(c) > 1][0]
    assert len({c.model.name for c, _ in _configs("scaling", gpu[1:])}) >= 2


# studies whose question needs longer training (recall forms only after ~600 steps of the small model and needs ~3000;
# the tiny model starts retrieving a needle after ~700 steps of 16 x 128 tokens and is still learning at 1500)
LONG = {"mqar": 25_000_000, "niah": 4_200_000}
# studies whose question needs a deeper stack: recursion's equal-compute arm unrolls the recursive model's 18 runs of
# its 2 layers (the tiny model's width)
DEEP = {"recursion": 36}
# studies with one seed by default, and why their comment gives: quick answers nothing (a smoke test), context
# measures costs (the seed does not change them), mqar would take 15 h with three
ONE_SEED = {"quick": "answers nothing", "context": "does\nnot depend on the weights", "mqar": "15 h"}


@pytest.mark.parametrize("name", NAMES)
def test_cpu_defaults_stay_small_and_say_how_long_they_take(name):
    comments = " ".join(ln[1:].strip() for ln in _text(name).splitlines() if ln.startswith("#"))
    assert re.search(r"about (a minute|\d+ (min|h))[^.]{0,30} on 2 cores", comments, re.I), \
        "a study must say how long it takes on 2 cores"
    for cfg, _ in _configs(name):
        assert cfg.model.d_model <= 128 and cfg.model.n_layers <= DEEP.get(name, 8), \
            "a CPU default must be a tiny/small model"
        if "train" in cfg.stages:
            assert cfg.train.steps * cfg.train.batch_size * cfg.seq_len <= LONG.get(name, 2_000_000), \
                "a CPU-sized training"
        if "bench" in cfg.stages:
            assert cfg.bench.lengths[-1] <= 32768


@pytest.mark.parametrize("name", NAMES)
def test_every_study_runs_three_seeds_unless_it_says_why_not(name):
    seeds = {int(c.seed) for c, _ in _configs(name)}
    if name in ONE_SEED:
        assert len(seeds) == 1 and ONE_SEED[name].replace("\n", " ") in " ".join(
            ln[1:].strip() for ln in _text(name).splitlines() if ln.startswith("#"))
        _, jobs = _jobs(name, ["seed=range(3)"])  # seeds=3 gives the intervals
        assert len({int(_compose(j).seed) for j in jobs}) == 3
    else:
        assert len(seeds) >= 3, "at least three seeds: the report's intervals and verdicts need them"
        assert len(_configs(name)) == len(seeds) * len(_configs(name, ["seed=0"])), "every configuration, every seed"


@pytest.mark.parametrize("launcher,target", [("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
                                             ("submitit_slurm", "SlurmLauncher")])
def test_a_study_runs_under_any_launcher(launcher, target):
    """The studies choose their sweep, not how it is launched: hydra/launcher=... composes with each."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "joblib"
                        else "hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    cfg = _compose(["experiment=lineup", f"hydra/launcher={launcher}"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target) and cfg.hydra.mode.name == "MULTIRUN"
    assert len(cfg.hydra.sweeper.params) >= 1


def test_mqar_compares_softmax_hybrids_and_pure_linear_at_8_pairs_length_128():
    configs = _configs("mqar")
    kinds = {(frozenset(_mixers(c, lt)), "".join(lt)) for c, lt in configs}
    assert (frozenset({"softmax"}), "LLLF") in kinds or (frozenset({"softmax"}), "LLLL") in kinds  # all softmax
    assert (frozenset({"gated_deltanet", "softmax"}), "LLLF") in kinds
    assert (frozenset({"linear"}), "LLLL") in kinds
    for c, _ in configs:
        assert c.data.name == "mqar" and c.seq_len == 128 and 8 in c.data.num_kv_pairs and "mqar" in c.eval.tasks


def test_lr_sweeps_a_log_grid_of_four_rates_for_softmax_the_hybrid_and_linear_attention():
    configs = _configs("lr")
    kinds = {(frozenset(_mixers(c, lt)), "".join(lt)) for c, lt in configs}
    assert kinds == {(frozenset({"softmax"}), "FFFF"), (frozenset({"gated_deltanet", "softmax"}), "LLLF"),
                     (frozenset({"linear"}), "LLLL")}
    rates = sorted({float(c.train.lr) for c, _ in configs})
    assert len(rates) >= 4 and 3e-3 in rates, "four rates or more, the default among them"
    steps = [b / a for a, b in zip(rates, rates[1:])]
    assert max(steps) / min(steps) < 1.2, f"a log grid: {rates}"
    assert all("bench" not in c.stages for c, _ in configs), "a training study: no bench"


def test_placement_moves_two_full_layers_of_eight():
    configs = _configs("placement")
    layouts = {"".join(lt) for _, lt in configs}
    assert {"FFLLLLLL", "LLLFFLLL", "LLLLLLFF", "LLLFLLLF", "FLLLLLLF"} <= layouts  # first/middle/last/spread/sandwich
    assert "FFFFFFFF" in layouts, "the all-softmax baseline"
    assert all(lt.count("F") == 2 for lt in layouts - {"FFFFFFFF"}), "the share of full layers is fixed"
    assert {_mixers(c, lt).__len__() for c, lt in configs if "L" in lt} == {2}
    assert len({(c.model.d_model, c.train.steps, c.seq_len) for c, _ in configs}) == 1, "only the placement varies"


ARCH = {"all_softmax": ({"softmax"}, "0:1"), "gated_deltanet_3_1": ({"gated_deltanet", "softmax"}, "3:1"),
        "linear_1_0": ({"linear"}, "1:0"), "qwen3_next": ({"gated_deltanet", "gated_attention"}, "3:1"),
        "kimi_linear": ({"kda", "mla"}, "3:1"), "minimax_m1": ({"lightning", "softmax"}, "7:1"),
        "gated_deltanet_1_0": ({"gated_deltanet"}, "1:0"), "gated_deltanet_neg_1_0": ({"gated_deltanet"}, "1:0"),
        "gated_deltanet_neg_3_1": ({"gated_deltanet", "softmax"}, "3:1"), "deltanet_1_0": ({"deltanet"}, "1:0"),
        "deltanet_neg_1_0": ({"deltanet"}, "1:0"), "mamba2_1_0": ({"mamba2"}, "1:0")}
NEG_EIGVAL = {"gated_deltanet_neg_1_0", "gated_deltanet_neg_3_1", "deltanet_neg_1_0"}


@pytest.mark.parametrize("arch", sorted(ARCH))
def test_an_arch_preset_sets_the_mixers_and_the_ratio(arch):
    assert os.path.exists(os.path.join(CONF, "arch", f"{arch}.yaml"))
    cfg = _compose([f"arch={arch}"])
    mixers, ratio = ARCH[arch]
    assert _mixers(cfg, validate(cfg)["layer_types"]) == mixers and cfg.ratio == ratio
    assert bool(cfg.attention.get("allow_neg_eigval")) == (arch in NEG_EIGVAL)
    # the command line still wins over a preset; a preset wins over a study's own choice of mixers
    assert _compose([f"arch={arch}", "ratio=1:1"]).ratio == "1:1"
    if not arch.endswith("_1_0"):  # a preset without full layers leaves the study's choice of them
        assert _compose([f"arch={arch}", "experiment=placement"]).full.name == cfg.full.name


def test_every_arch_preset_is_listed_here():
    assert {f[:-5] for f in os.listdir(os.path.join(CONF, "arch")) if f.endswith(".yaml")} == set(ARCH)


def test_the_documented_lr_recipe_tunes_every_configuration_of_the_ratio_study_it_names():
    """experiment=lr's comment shows how to tune experiment=ratio's Gated DeltaNet jobs: the table that recipe
    writes must have an entry for each of them, with the same training (no warning)."""
    from runner.tuned_lr import config_key, training_of

    recipe = next(c for c in _documented_commands("lr") if "arch=gated_deltanet_3_1" in c)
    def keys(configs):
        return {config_key(OmegaConf.to_container(c, resolve=True), "".join(lt)): training_of(
            OmegaConf.to_container(c, resolve=True)) for c, lt in configs}
    tuned = keys(_configs("lr", recipe[1:]))
    study = keys(_configs("ratio", ["attention=gated_deltanet"]))
    assert set(study) <= set(tuned), set(study) - set(tuned)
    assert all(study[k] == tuned[k] for k in study), "the recipe trains like the study (steps, batch, warm-up)"
    assert "python -m runner experiment=ratio attention=gated_deltanet train.lr=tuned" in _text("lr")
