"""The configuration schema and its validation.

Hydra composes conf/ (and experiments/, and the command line) onto the dataclasses below, so an unknown key or
a value of the wrong type is an error at composition. :func:`validate` then checks every value against what the
run can do and reports *all* problems at once, naming the key, the bad value and what would be right, before
any work starts.
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from .layout import layer_types
from .mixers import FIXED_LENGTH, REGISTRY, causal_problem, make_config, noncausal_problem
from .paths import CONF_DIR, EXPERIMENTS_DIR
from .peakmem import METHODS

STAGES = ("train", "eval", "bench", "sample")  # the order they run in (runner/run_folder.STAGES)
DEFAULT_STAGES = ("train", "eval", "bench")  # sample is asked for
WEIGHTS = ("auto", "random")
MAX_SEED = 2**32 - 1  # numpy's and most samplers' range; torch's generators take it as it is
# hard caps, far beyond this runner's model sizes (xl: d_model 2048, 24 layers), so that a typo fails here and not
# after minutes of building; what fits the machine is checked against its memory (runner/fit.py)
MAX_WIDTH, MAX_LAYERS, MAX_TOKENS = 1 << 16, 1024, 1 << 24
LOGGERS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class ModelConfig:
    name: str = "small"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 2
    mlp_hidden: Optional[int] = None  # SwiGLU hidden width; None = 8/3 * d_model rounded up to a multiple of 16
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02
    # activation checkpointing per block: training keeps each block's input and recomputes the block in the
    # backward, for less activation memory at the cost of about one more forward per step
    checkpoint: bool = False
    # recursion=trm (conf/recursion/): the stack is one tiny network run many times (runner/recursion.py)
    recursion: Dict[str, Any] = field(default_factory=lambda: {"name": "none"})


@dataclass
class DataConfig:
    name: str = "stdlib"  # stdlib | text | hf | mqar | state_tracking | multihop | selective_copy | niah
    path: Optional[str] = None  # for name=text: a .txt file or a folder of text files
    val_fraction: float = 0.1  # by file for folders and stdlib, the tail of the bytes for one file
    max_bytes: int = 8_000_000  # cap on bytes read (0 = no cap), files taken in sorted order; hf: per training split
    tokenizer: str = "bytes"  # bytes (vocabulary 256) | bpe (trained on the training split, cached)
    vocab_size: int = 4096  # bpe: vocabulary to train; mqar: token vocabulary (keys lower half, values upper half)
    cache_dir: Optional[str] = None  # tokenizers and tokenized splits; null = ~/.cache/hybrid-runner
    # name=hf: any dataset of the Hugging Face Hub (or a local dataset folder)
    dataset: Optional[str] = None  # Hub name such as wikitext, or a folder of parquet/json/csv/txt files
    config: Optional[str] = None  # the dataset's configuration, e.g. wikitext-103-raw-v1
    text_field: str = "text"  # the column holding the text
    train_split: str = "train"
    val_split: Optional[str] = "validation"  # null = hold out val_fraction of the training rows
    streaming: bool = False  # read row by row up to max_bytes instead of downloading the whole dataset
    revision: Optional[str] = None  # a dataset revision (branch, tag or commit)
    hub_timeout_s: float = 3.0  # how long to wait for the Hub to answer before working from the cache only
    # name=mqar: synthetic multi-query associative recall (runner/tasks/mqar.py); n_train, n_test, mix_lengths and
    # seed also set the generated tasks (runner/tasks/synthetic.py), whose own settings are under options
    num_kv_pairs: List[int] = field(default_factory=lambda: [2, 4, 8])  # pairs per example, mixed in training
    test_num_kv_pairs: Optional[List[int]] = None  # pairs of the test sets; null = num_kv_pairs
    n_train: int = 100_000  # training examples
    n_test: int = 1000  # test examples per number of pairs
    alpha: float = 0.01  # power-law exponent of the query distances (Zoology: 0.01)
    mix_lengths: bool = True  # training examples of lengths seq_len, seq_len/2, seq_len/4 (padded)
    seed: int = 0  # data seed: training examples from 2*seed, test examples from 2*seed+1
    options: Dict[str, Any] = field(default_factory=dict)  # settings of a source registered beyond these (its own keys)


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: Any = 3e-3  # a rate, or 'tuned': the rate train.lr_table gives this configuration (runner/tuned_lr.py)
    lr_table: Optional[str] = None  # with lr=tuned: the tuned_lr.json of a learning-rate sweep (experiment=lr)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 100  # periodic validation (0 = off)
    eval_batches: int = 4  # batches of the validation split used by periodic validation
    ckpt_every: int = 0  # 0 = checkpoint only at the end
    # an exponential moving average of the weights (decay per step, e.g. 0.999 as TRM; 0 = none): the stages after
    # training measure the average, the training itself and its periodic validation the weights being trained
    ema: float = 0.0


@dataclass
class LmEvalConfig:  # eval.tasks=[..., lm_eval]: lm-evaluation-harness tasks (runner/evals/lm_eval.py)
    tasks: List[str] = field(default_factory=lambda: ["lambada_openai", "hellaswag", "arc_easy"])
    num_fewshot: Optional[int] = None  # null = each task's own default
    limit: Optional[float] = None  # documents per task (a fraction if < 1); null = all
    include_path: Optional[str] = None  # a folder of task YAML files of one's own (e.g. over local JSON files)
    builtin: bool = True  # index lm-eval's own tasks too (tens of seconds); false = only include_path's
    bootstrap_iters: int = 1000  # lm-eval's bootstrap for the standard errors of non-mean metrics
    max_length: Optional[int] = None  # the model's window in tokens; null = the training length (seq_len)


@dataclass
class EvalConfig:
    max_tokens: int = 131072  # validation tokens scored (in non-overlapping windows of seq_len)
    batch_size: int = 8
    tasks: List[str] = field(default_factory=lambda: ["ppl"])  # ppl | extrapolation | positions | lm_eval | ...
    extrapolation_factors: List[int] = field(default_factory=lambda: [2, 4])  # lengths seq_len * factor
    position_buckets: int = 32  # positions task: buckets per seq_len
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    options: Dict[str, Any] = field(default_factory=dict)  # task name -> its settings, for tasks registered beyond these


@dataclass
class BenchConfig:
    lengths: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    batch_size: int = 1
    decode_tokens: int = 16  # tokens decoded one at a time after a prefix of n
    repeats: int = 3  # timed repetitions per measurement (median reported), after one warm-up
    time_budget_s: float = 30.0  # a length whose single measurement exceeds this ends the ladder ("timeout")
    memory: str = "tensors"  # peak-memory method (runner/peakmem.py): tensors | rss | none
    memory_budget_gb: float = 0.0  # a length whose training-step peak is (predicted) above this ends the ladder; 0 = none
    generate_tokens: int = 64  # generation: new tokens after a 16-token prompt (the diffusion block's length L)
    diffusion_steps: List[int] = field(default_factory=lambda: [8, 32, 64])  # denoising steps S (objective=mdlm)
    judge_samples: int = 8  # samples after validation prompts whose quality is measured (entropy, judge ppl)
    judge: Optional[str] = None  # run folder of an autoregressive run of the same data: judges the samples


@dataclass
class SampleConfig:  # the sample stage (runner/samples.py)
    prompts: List[str] = field(default_factory=lambda: ["def ", "class ", "import "])  # the texts continued
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 = the most likely token
    top_k: int = 0  # 0 = all tokens
    top_p: float = 1.0  # nucleus sampling; 1 = off
    seed: int = 0
    steps: Optional[int] = None  # objective=mdlm: denoising steps (null = one per token)
    remasking: str = "ancestral"  # objective=mdlm: ancestral | low_confidence | random (runner/generate.py)


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "hybrid-attention"
    mode: str = "offline"  # offline (default: no account, no network) | online | disabled
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    init_timeout_s: float = 15.0  # online: give up reaching W&B after this long and log offline instead


@dataclass
class Config:
    attention: Dict[str, Any] = field(default_factory=lambda: {"name": "gated_deltanet"})
    full: Dict[str, Any] = field(default_factory=lambda: {"name": "gated_attention"})
    objective: Dict[str, Any] = field(default_factory=lambda: {"name": "next_token"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    ratio: str = "3:1"  # efficient:full layers, e.g. 3:1, 1:0 (all efficient), 0:1 (all full)
    pattern: Optional[str] = None  # explicit layout such as LLLF; overrides ratio
    seq_len: int = 256
    seed: int = 0
    stages: List[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    resume: Optional[str] = None  # a run folder to continue in (its checkpoint and results); None = this run's folder
    weights: str = "auto"  # stages without train: auto = the run folder's checkpoint | random = untrained, on purpose
    precision: str = "fp32"  # fp32 | bf16 (bf16 autocast; runner/accel.py)
    compile: bool = False  # torch.compile the training step
    kernels: str = "torch"  # linear mixers' chunked ops: torch (runner/ops) | fla (flash-linear-attention, CUDA)
    parallel: str = "ddp"  # under torchrun: ddp (replicate) | fsdp (shard parameters, gradients, optimizer state)


def _sample_problems(c) -> list[str]:
    """The sample stage's settings (checked whether it runs or not: a slip in them is a slip); and that the data is
    text when it runs."""
    from .generate import REMASKING

    s, out = c.sample, []
    prompts = list(s.prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        out.append(f"sample.prompts={prompts} must be a non-empty list of texts, e.g. ['def ', 'class ']")
    elif c.objective.get("name", "next_token") == "next_token" and "" in prompts:
        out.append("sample.prompts has an empty prompt: an autoregressive model continues at least one token; "
                   "give each prompt some text")
    for key, lo, hi, eg in (("max_new_tokens", 1, 1 << 16, "128"), ("top_k", 0, 1 << 24, "0 (all tokens)"),
                            ("seed", 0, MAX_SEED, "0")):
        v = getattr(s, key)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            out.append(f"sample.{key}={v!r} must be a whole number in [{lo}, {hi}], e.g. {eg}")
    if not (isinstance(s.temperature, (int, float)) and math.isfinite(s.temperature) and s.temperature >= 0):
        out.append(f"sample.temperature={s.temperature!r} must be >= 0 (0 = the most likely token), e.g. 0.8")
    if not (isinstance(s.top_p, (int, float)) and 0 < s.top_p <= 1):
        out.append(f"sample.top_p={s.top_p!r} must be in (0, 1] (1 = off), e.g. 0.95")
    if s.steps is not None and not (isinstance(s.steps, int) and not isinstance(s.steps, bool) and s.steps >= 1):
        out.append(f"sample.steps={s.steps!r} must be a whole number >= 1, or null (one step per token)")
    if s.remasking not in REMASKING:
        out.append(f"sample.remasking={s.remasking!r} is not known; allowed: {list(REMASKING)}")
    if "sample" in c.stages and c.data.name in _synthetic_sources():
        out.append(f"stages={list(c.stages)} has sample, but data={c.data.name} is a synthetic task whose tokens are "
                   f"ids, not text: nothing to sample; leave sample out of the stages (its accuracy is in eval)")
    return out


def _synthetic_sources() -> list[str]:
    """The data sources that are not text (no ``text`` in their PROVIDES)."""
    from . import sources

    return [n for n in sources.names() if "text" not in getattr(sources.get(n), "PROVIDES", set())]


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def path_safe(value) -> str:
    """A config value as a piece of a folder name: ``3:1`` -> ``3-1`` (a colon is special to scp, rsync, make and
    Windows); used in conf/config.yaml's run and sweep folders as ``${path_safe:${ratio}}``."""
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", str(value))


# config groups a folder name leaves out: attention is in it already, the logger and the experiment are not a
# property of the model or the data (and a sweep's jobs share the experiment)
_UNTAGGED_GROUPS = ("attention", "logger", "experiment")


@functools.lru_cache(maxsize=1)
def _default_choices() -> Dict[str, Optional[str]]:
    """conf/config.yaml's defaults list as {group: choice} (None for ``null``)."""
    choices = {}
    for entry in OmegaConf.load(os.path.join(CONF_DIR, "config.yaml")).defaults:
        if isinstance(entry, DictConfig):
            choices.update({str(k): None if v is None else str(v) for k, v in entry.items()})
    return choices


def choices_tag(choices) -> str:
    """The config-group choices of a job that differ from conf/config.yaml's defaults, as ``_<group>=<choice>``
    pieces of its folder name (``3_gated_deltanet_0-1_128_seed0_objective=mdlm``), in the defaults' order: the
    jobs of a sweep over objective=, depth=, data=, model=... are told apart by name, not only by their number.
    ``choices`` is Hydra's ``hydra.runtime.choices``; used in conf/config.yaml's run and sweep folders."""
    choices = {} if choices is None else dict(choices)
    return "".join(f"_{group}={path_safe(choices[group])}" for group, default in _default_choices().items()
                   if group not in _UNTAGGED_GROUPS and group in choices and choices[group] != default)


def register_resolvers() -> None:
    """The resolvers conf/ uses. Called at import, so that every process that reads the config (a joblib or
    submitit worker unpickles the job's function, importing this module) can resolve the folder names."""
    if not OmegaConf.has_resolver("path_safe"):
        OmegaConf.register_new_resolver("path_safe", path_safe)
    if not OmegaConf.has_resolver("choices_tag"):
        OmegaConf.register_new_resolver("choices_tag", choices_tag)


register_resolvers()


def register(experiments_dir: str = EXPERIMENTS_DIR) -> None:
    """Register the schema, and every experiments/<name>.yaml as option <name> of the `experiment` group
    (package _global_: a study sets any key, overrides groups and may declare its own sweep)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    if os.path.isdir(experiments_dir):
        for fn in sorted(os.listdir(experiments_dir)):
            if fn.endswith(".yaml"):
                node = OmegaConf.load(os.path.join(experiments_dir, fn))
                cs.store(group="experiment", name=fn[:-5], node=node, package="_global_")


def compose_config(overrides=()) -> DictConfig:
    """The configuration ``python -m runner <overrides>`` would run (conf/ + experiments/ + the overrides), for the
    tools that build models outside a run (the memory calculator, the benchmarks, the GPU check). Works inside a
    Hydra app too: its global state is put back afterwards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        gh.clear()
        if saved is not None:
            gh.initialize(saved)


def validate(cfg: DictConfig | Config) -> dict:
    """Check every value; raise :class:`ConfigError` listing all problems. Returns derived facts
    (``layer_types``, the resolved mixer configs) for the caller to use."""
    c = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    problems: list[str] = []

    def need(ok: bool, msg: str):
        if not ok:
            problems.append(msg)

    def finite(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    def whole(key: str, v, lo: int, hi: Optional[int] = None, eg: str = "", why: str = ""):
        ok = isinstance(v, int) and v >= lo and (hi is None or v <= hi)
        if not ok:
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            need(False, f"{key}={v} must be a whole number {rng}{why}{', e.g. ' + eg if eg else ''}")

    m = c.model
    whole("model.d_model", m.d_model, 1, MAX_WIDTH, "128")
    whole("model.n_layers", m.n_layers, 1, MAX_LAYERS, "4")
    whole("model.n_heads", m.n_heads, 1, max(1, m.d_model), "4", " (at most d_model)")
    need(m.mlp_hidden is None or (isinstance(m.mlp_hidden, int) and 1 <= m.mlp_hidden <= 16 * MAX_WIDTH),
         f"model.mlp_hidden={m.mlp_hidden} must be a whole number in [1, {16 * MAX_WIDTH}] or null (8/3 d_model)")
    need(finite(m.norm_eps) and 0 < m.norm_eps < 1, f"model.norm_eps={m.norm_eps} must be in (0, 1), e.g. 1e-6")
    need(finite(m.init_std) and 0 < m.init_std <= 1, f"model.init_std={m.init_std} must be in (0, 1], e.g. 0.02")
    whole("seq_len", c.seq_len, 1, MAX_TOKENS, "256", " (a number of tokens)")
    whole("seed", c.seed, 0, MAX_SEED, "0")
    cores = os.cpu_count() or 1
    whole("threads", c.threads, 0, 4 * cores, "0 (torch's default)",
          f" (0 = torch's default; this machine has {cores} cores, more threads than 4 per core only thrash)")
    need(c.weights in WEIGHTS, f"weights={c.weights!r} is not known; allowed: {list(WEIGHTS)} (auto: the run "
                               f"folder's checkpoint; random: an untrained model, for bench-only runs)")
    need(not (c.weights == "random" and "train" in c.stages),
         "weights=random is for stages without train (an untrained model measured on purpose); with train in the "
         "stages the weights are the trained ones: drop weights=random")
    bad_stages = [s for s in c.stages if s not in STAGES]
    need(not bad_stages, f"stages={list(c.stages)} has unknown stage(s) {bad_stages}; allowed: {list(STAGES)}")
    need(len(c.stages) > 0, f"stages is empty; choose from {list(STAGES)}")
    dev = str(c.device)
    need(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
         f"device={dev!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    import torch

    cuda = torch.cuda.is_available()
    if dev.startswith("cuda"):
        need(cuda, f"device={dev!r} but CUDA is not available here; use device=cpu or device=auto")

    from .accel import problems as accel_problems

    device_type = "cuda" if dev.startswith("cuda") or (dev == "auto" and cuda) else "cpu"
    problems.extend(accel_problems(c, device_type))

    if c.resume is not None and not os.path.isdir(os.path.expanduser(c.resume)):
        problems.append(f"resume={c.resume!r} is not a folder; give the folder of the run to continue "
                        f"(it holds results.json and checkpoints/)")
    t = c.train
    whole("train.steps", t.steps, 1 if "train" in c.stages else 0, None, "300",
          " (with train in the stages; leave train out of stages to only evaluate or benchmark)")
    whole("train.batch_size", t.batch_size, 1, 1 << 20, "16")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    need(not isinstance(t.batch_size, int) or t.batch_size % world == 0,
         f"train.batch_size={t.batch_size} (the global batch) must be divisible by the {world} processes torchrun "
         f"started")
    tuned = t.lr == "tuned"
    need(tuned or (finite(t.lr) and not isinstance(t.lr, bool) and 0 < t.lr <= 10),
         f"train.lr={t.lr!r} must be a rate in (0, 10], e.g. 3e-3, or 'tuned' (the rate train.lr_table gives)")
    need(tuned or t.lr_table is None, f"train.lr_table={t.lr_table!r} is read only with train.lr=tuned (train.lr is "
                                      f"{t.lr!r}): drop one of them")
    need(finite(t.min_lr_ratio) and 0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    whole("train.warmup_steps", t.warmup_steps, 0, None, "30")
    need(finite(t.weight_decay) and 0 <= t.weight_decay <= 10,
         f"train.weight_decay={t.weight_decay} must be in [0, 10], e.g. 0.1")
    need(finite(t.beta1) and finite(t.beta2) and 0 <= t.beta1 < 1 and 0 <= t.beta2 < 1,
         f"train.beta1={t.beta1}, train.beta2={t.beta2} must be in [0, 1)")
    need(finite(t.grad_clip) and t.grad_clip >= 0, f"train.grad_clip={t.grad_clip} must be >= 0 (0 = no clipping)")
    need(finite(t.ema) and not isinstance(t.ema, bool) and 0 <= t.ema < 1,
         f"train.ema={t.ema} must be a decay in [0, 1), e.g. 0.999 (0 = no average of the weights)")
    need(not (t.ema and c.parallel == "fsdp" and world > 1),
         f"train.ema={t.ema} with parallel=fsdp: the average of sharded weights is not supported; use parallel=ddp")
    for key in ("log_every", "eval_every", "ckpt_every"):
        whole(f"train.{key}", getattr(t, key), 0, None, "", " (0 = off)")
    whole("train.eval_batches", t.eval_batches, 0 if not t.eval_every else 1, 1 << 20, "4",
          " (with train.eval_every > 0)")
    whole("eval.max_tokens", c.eval.max_tokens, 1, None, "131072")
    whole("eval.batch_size", c.eval.batch_size, 1, 1 << 20, "8")
    from . import evals

    ev = c.eval
    bad = [t for t in ev.tasks if t not in evals.REGISTRY]
    need(not bad, f"eval.tasks={list(ev.tasks)} has unknown task(s) {bad}; allowed: {evals.names()}")
    need(len(ev.tasks) > 0, f"eval.tasks is empty; choose from {evals.names()} (or leave 'eval' out of stages)")
    from . import sources

    offers = getattr(sources.get(c.data.name), "PROVIDES", set()) if c.data.name in sources.REGISTRY else None
    for t in evals.names():  # every task's own settings, asked for or not (a setting of a task left out is a slip)
        task = evals.get(t)
        problems.extend(task.task_problems(c))
        if t in ev.tasks and offers is not None and task.NEEDS is not None and task.NEEDS not in offers:
            able = [n for n in sources.names() if task.NEEDS in getattr(sources.get(n), "PROVIDES", set())]
            fits = [n for n in evals.names() if evals.get(n).NEEDS in (None, *offers)]
            problems.append(f"eval.tasks={list(ev.tasks)}: the {t} task needs a model trained on "
                            f"data={'|'.join(able)} (data.name is {c.data.name!r}); with data={c.data.name} use "
                            f"eval.tasks=[{','.join(fits)}] or some of them")

    b = c.bench
    need(len(b.lengths) > 0 and all(isinstance(n, int) and 1 <= n <= MAX_TOKENS for n in b.lengths),
         f"bench.lengths={list(b.lengths)} must be a non-empty list of lengths in [1, {MAX_TOKENS}], e.g. "
         f"[256, 1024, 4096]")
    need(list(b.lengths) == sorted(set(b.lengths)), f"bench.lengths={list(b.lengths)} must be increasing without repeats")
    whole("bench.batch_size", b.batch_size, 1, 1 << 20, "1")
    whole("bench.decode_tokens", b.decode_tokens, 1, 1 << 20, "16")
    whole("bench.repeats", b.repeats, 1, 1000, "3")
    whole("bench.generate_tokens", b.generate_tokens, 1, 1 << 16, "64")
    whole("bench.judge_samples", b.judge_samples, 1, 1 << 16, "8")
    if b.judge is not None:
        from .checkpoint import JudgeUnusable, judge_problems

        try:
            judge_problems(str(b.judge))
        except JudgeUnusable as e:
            problems.append(str(e))
    need(len(b.diffusion_steps) > 0 and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16
                                            for v in b.diffusion_steps),
         f"bench.diffusion_steps={b.diffusion_steps} must be a non-empty list of step counts in [1, 65536], e.g. "
         f"[8,32,64]")
    need(finite(b.time_budget_s) and b.time_budget_s > 0, f"bench.time_budget_s={b.time_budget_s} must be > 0 seconds")
    need(finite(b.memory_budget_gb) and b.memory_budget_gb >= 0,
         f"bench.memory_budget_gb={b.memory_budget_gb} must be >= 0 (0 = no budget)")
    need(b.memory in METHODS, f"bench.memory={b.memory!r} is not a measurement method; allowed: {list(METHODS)}")
    problems.extend(_sample_problems(c))

    d = c.data
    from . import sources

    source = sources.get(d.name) if d.name in sources.REGISTRY else None
    need(source is not None, f"data.name={d.name!r} is not a known source; allowed: {sources.names()}")
    need(d.tokenizer in ("bytes", "bpe"), f"data.tokenizer={d.tokenizer!r} is not supported; allowed: ['bytes', 'bpe']")
    if source is not None and d.tokenizer in ("bytes", "bpe") and d.tokenizer not in source.TOKENIZERS:
        need(False, f"data.tokenizer={d.tokenizer} does not apply to data={d.name} (it takes "
                    f"{list(source.TOKENIZERS)}); use data.tokenizer={source.TOKENIZERS[0]}")
    elif d.tokenizer == "bpe":
        need(isinstance(d.vocab_size, int) and 257 <= d.vocab_size <= 1_000_000,
             f"data.vocab_size={d.vocab_size} must be in [257, 1000000] for data.tokenizer=bpe (256 byte tokens + "
             f"merges), e.g. 4096")
    need(finite(d.val_fraction) and 0 < d.val_fraction < 1, f"data.val_fraction={d.val_fraction} must be in (0, 1), "
                                                             f"e.g. 0.1")
    whole("data.max_bytes", d.max_bytes, 0, None, "8000000", " (0 = no cap)")
    if source is not None:
        problems.extend(source.source_problems(c))

    from . import objectives

    obj = dict(c.objective).get("name")
    need(obj in objectives.REGISTRY, f"objective.name={obj!r} is not a known objective; allowed: {objectives.names()}")
    causal = objectives.get(obj).CAUSAL if obj in objectives.REGISTRY else True
    if obj in objectives.REGISTRY:
        problems.extend(getattr(objectives.get(obj), "objective_problems", lambda c: [])(c))
        wanted = getattr(objectives.get(obj), "NEEDS", None)
        if source is not None and wanted and wanted not in getattr(source, "PROVIDES", ()):
            problems.append(f"objective={obj} needs data that provides {wanted!r}, and data={d.name} provides "
                            f"{sorted(getattr(source, 'PROVIDES', ()))}; use one of "
                            + ", ".join(f"data={n}" for n in sources.names()
                                        if wanted in getattr(sources.get(n), "PROVIDES", ())))

    from . import recursion

    problems.extend(recursion.problems(dict(m.recursion), causal))

    lg = c.logger
    need(lg.name in LOGGERS, f"logger.name={lg.name!r} is not known; allowed: {list(LOGGERS)}")
    need(lg.mode in WANDB_MODES, f"logger.mode={lg.mode!r} is not known; allowed: {list(WANDB_MODES)}")
    need(finite(lg.init_timeout_s) and 0 < lg.init_timeout_s <= 600,
         f"logger.init_timeout_s={lg.init_timeout_s} must be in (0, 600] seconds, e.g. 15")

    facts: dict = {}
    try:
        n_layers = min(max(1, m.n_layers), MAX_LAYERS)
        facts["layer_types"] = layer_types(n_layers, c.ratio, c.pattern)
    except ValueError as e:
        problems.append(str(e))
    if tuned and "layer_types" in facts:
        from .tuned_lr import lookup

        entry, notes = lookup(OmegaConf.to_container(OmegaConf.structured(c), resolve=True),
                              "".join(facts["layer_types"]))
        if entry is None:
            problems.extend(notes)
        else:
            facts["tuned_lr"], facts["notes"] = entry, notes
    used = set(facts.get("layer_types", ["L", "F"]))
    for key, letter in (("attention", "L"), ("full", "F")):
        spec = dict(getattr(c, key))
        name = spec.get("name")
        if name not in REGISTRY:
            problems.append(f"{key}.name={name!r} is not a known mixer; known: {sorted(REGISTRY)}")
            continue
        if letter not in used:
            continue
        try:
            facts[key] = make_config(spec, max(1, m.d_model), max(1, m.n_heads))
        except (ValueError, TypeError, ImportError) as e:
            problems.append(f"{key}: {e}")
            continue
        why = None if causal else noncausal_problem(spec)
        if why:
            problems.append(f"{key}={why}, and objective={obj} needs mixers that see the whole sequence")
        if causal and causal_problem(spec):
            problems.append(f"{key}={causal_problem(spec)}: it has no causal form, and objective={obj} predicts "
                            f"each token from the ones before it; use objective=fill with a fixed-size task "
                            f"(data=sudoku)")
        length = getattr(facts[key], "length", None)
        if name in FIXED_LENGTH and length != c.seq_len:
            problems.append(f"{key}.length={length} must be seq_len={c.seq_len}: {name} mixes exactly that many "
                            f"positions (leave it at ${{seq_len}})")
        if name in FIXED_LENGTH and "bench" in c.stages and list(c.bench.lengths) != [c.seq_len]:
            problems.append(f"bench.lengths={list(c.bench.lengths)}: {key}={name} runs at seq_len only; use "
                            f"bench.lengths=[{c.seq_len}]")
    if problems:
        raise ConfigError(problems)
    return facts
