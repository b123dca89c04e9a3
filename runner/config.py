"""The configuration schema and its validation.

Hydra composes conf/ (and experiments/, and the command line) onto the dataclasses below, so an unknown key or
a value of the wrong type is an error at composition. :func:`validate` then checks every value against what the
run can do and reports *all* problems at once, naming the key, the bad value and what would be right, before
any work starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from .layout import layer_types
from .mixers import REGISTRY, make_config
from .peakmem import METHODS

STAGES = ("train", "eval", "bench")
DATA_SOURCES = ("stdlib", "text", "hf", "mqar")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class ModelConfig:
    name: str = "small"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: Optional[int] = None  # SwiGLU hidden width; None = 8/3 * d_model rounded up to a multiple of 16
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02


@dataclass
class DataConfig:
    name: str = "stdlib"  # stdlib | text | hf | mqar
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
    # name=mqar: synthetic multi-query associative recall (runner/tasks/mqar.py)
    num_kv_pairs: List[int] = field(default_factory=lambda: [2, 4, 8])  # pairs per example, mixed in training
    test_num_kv_pairs: Optional[List[int]] = None  # pairs of the test sets; null = num_kv_pairs
    n_train: int = 100_000  # training examples
    n_test: int = 1000  # test examples per number of pairs
    alpha: float = 0.01  # power-law exponent of the query distances (Zoology: 0.01)
    mix_lengths: bool = True  # training examples of lengths seq_len, seq_len/2, seq_len/4 (padded)
    seed: int = 0  # data seed: training examples from 2*seed, test examples from 2*seed+1


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
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


@dataclass
class EvalConfig:
    max_tokens: int = 131072  # validation tokens scored (in non-overlapping windows of seq_len)
    batch_size: int = 8
    tasks: List[str] = field(default_factory=lambda: ["ppl"])  # ppl | extrapolation | positions | mqar
    extrapolation_factors: List[int] = field(default_factory=lambda: [2, 4])  # lengths seq_len * factor
    position_buckets: int = 32  # positions task: buckets per seq_len


@dataclass
class BenchConfig:
    lengths: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    batch_size: int = 1
    decode_tokens: int = 16  # tokens decoded one at a time after a prefix of n
    repeats: int = 3  # timed repetitions per measurement (median reported), after one warm-up
    time_budget_s: float = 30.0  # a length whose single measurement exceeds this ends the ladder ("timeout")
    memory: str = "tensors"  # peak-memory method (runner/peakmem.py): tensors | rss | none
    memory_budget_gb: float = 0.0  # a length whose training-step peak is (predicted) above this ends the ladder; 0 = none


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "hybrid-attention"
    mode: str = "offline"  # offline (default: no account, no network) | online | disabled
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    attention: Dict[str, Any] = field(default_factory=lambda: {"name": "gated_deltanet"})
    full: Dict[str, Any] = field(default_factory=lambda: {"name": "gated_attention"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    ratio: str = "3:1"  # efficient:full layers, e.g. 3:1, 1:0 (all efficient), 0:1 (all full)
    pattern: Optional[str] = None  # explicit layout such as LLLF; overrides ratio
    seq_len: int = 256
    seed: int = 0
    stages: List[str] = field(default_factory=lambda: list(STAGES))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    resume: Optional[str] = None  # a run folder to continue in (its checkpoint and results); None = this run's folder
    precision: str = "fp32"  # fp32 | bf16 (bf16 autocast; runner/accel.py)
    compile: bool = False  # torch.compile the training step
    kernels: str = "torch"  # linear mixers' chunked ops: torch (runner/ops) | fla (flash-linear-attention, CUDA)
    parallel: str = "ddp"  # under torchrun: ddp (replicate) | fsdp (shard parameters, gradients, optimizer state)


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS_DIR = os.path.join(ROOT, "experiments")


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


def validate(cfg: DictConfig | Config) -> dict:
    """Check every value; raise :class:`ConfigError` listing all problems. Returns derived facts
    (``layer_types``, the resolved mixer configs) for the caller to use."""
    c = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    problems: list[str] = []

    def need(ok: bool, msg: str):
        if not ok:
            problems.append(msg)

    m = c.model
    need(m.d_model >= 1, f"model.d_model={m.d_model} must be a positive whole number, e.g. 128")
    need(m.n_layers >= 1, f"model.n_layers={m.n_layers} must be >= 1")
    need(m.n_heads >= 1, f"model.n_heads={m.n_heads} must be >= 1")
    need(m.mlp_hidden is None or m.mlp_hidden >= 1, f"model.mlp_hidden={m.mlp_hidden} must be >= 1 or null")
    need(c.seq_len >= 1, f"seq_len={c.seq_len} must be a positive number of tokens, e.g. 256")
    need(c.seed >= 0, f"seed={c.seed} must be >= 0")
    need(c.threads >= 0, f"threads={c.threads} must be >= 0 (0 = torch's default)")
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
    need(t.steps >= 0, f"train.steps={t.steps} must be >= 0")
    need(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    need(t.batch_size % world == 0, f"train.batch_size={t.batch_size} (the global batch) must be divisible by the "
                                    f"{world} processes torchrun started")
    need(t.lr > 0, f"train.lr={t.lr} must be > 0, e.g. 3e-3")
    need(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    need(t.warmup_steps >= 0, f"train.warmup_steps={t.warmup_steps} must be >= 0")
    need(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0")
    need(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, f"train.beta1={t.beta1}, train.beta2={t.beta2} must be in [0, 1)")
    need(t.grad_clip >= 0, f"train.grad_clip={t.grad_clip} must be >= 0 (0 = no clipping)")
    for key in ("log_every", "eval_every", "eval_batches", "ckpt_every"):
        need(getattr(t, key) >= 0, f"train.{key}={getattr(t, key)} must be >= 0")
    need(c.eval.max_tokens >= 1, f"eval.max_tokens={c.eval.max_tokens} must be >= 1")
    need(c.eval.batch_size >= 1, f"eval.batch_size={c.eval.batch_size} must be >= 1")
    from .evaluate import TASKS as eval_tasks

    ev = c.eval
    bad = [t for t in ev.tasks if t not in eval_tasks]
    need(not bad, f"eval.tasks={list(ev.tasks)} has unknown task(s) {bad}; allowed: {list(eval_tasks)}")
    need(len(ev.tasks) > 0, f"eval.tasks is empty; choose from {list(eval_tasks)} (or leave 'eval' out of stages)")
    need(len(ev.extrapolation_factors) > 0 and all(f >= 2 for f in ev.extrapolation_factors),
         f"eval.extrapolation_factors={list(ev.extrapolation_factors)} must be a non-empty list of whole numbers >= 2")
    need(ev.position_buckets >= 1, f"eval.position_buckets={ev.position_buckets} must be >= 1")
    if c.data.name == "mqar":
        need(not {"extrapolation", "positions"} & set(ev.tasks),
             f"eval.tasks={list(ev.tasks)}: extrapolation and positions score text; with data=mqar use "
             f"eval.tasks=[ppl,mqar]")
    else:
        need("mqar" not in ev.tasks, f"eval.tasks={list(ev.tasks)}: the mqar task needs a model trained on data=mqar "
                                     f"(data.name is {c.data.name!r})")

    b = c.bench
    need(len(b.lengths) > 0 and all(int(n) >= 1 for n in b.lengths),
         f"bench.lengths={list(b.lengths)} must be a non-empty list of positive lengths, e.g. [256, 1024, 4096]")
    need(list(b.lengths) == sorted(set(b.lengths)), f"bench.lengths={list(b.lengths)} must be increasing without repeats")
    need(b.batch_size >= 1, f"bench.batch_size={b.batch_size} must be >= 1")
    need(b.decode_tokens >= 1, f"bench.decode_tokens={b.decode_tokens} must be >= 1")
    need(b.repeats >= 1, f"bench.repeats={b.repeats} must be >= 1")
    need(b.time_budget_s > 0, f"bench.time_budget_s={b.time_budget_s} must be > 0")
    need(b.memory_budget_gb >= 0, f"bench.memory_budget_gb={b.memory_budget_gb} must be >= 0 (0 = no budget)")
    need(b.memory in METHODS, f"bench.memory={b.memory!r} is not a measurement method; allowed: {list(METHODS)}")

    d = c.data
    need(d.name in DATA_SOURCES, f"data.name={d.name!r} is not a known source; allowed: {list(DATA_SOURCES)}")
    need(d.tokenizer in ("bytes", "bpe"), f"data.tokenizer={d.tokenizer!r} is not supported; allowed: ['bytes', 'bpe']")
    if d.tokenizer == "bpe":
        need(d.name != "mqar", "data.tokenizer=bpe does not apply to data=mqar (synthetic token ids); use "
                               "data.tokenizer=bytes")
        need(257 <= d.vocab_size <= 1_000_000, f"data.vocab_size={d.vocab_size} must be in [257, 1000000] for "
                                               f"data.tokenizer=bpe (256 byte tokens + merges), e.g. 4096")
    need(0 < d.val_fraction < 1, f"data.val_fraction={d.val_fraction} must be in (0, 1), e.g. 0.1")
    need(d.max_bytes >= 0, f"data.max_bytes={d.max_bytes} must be >= 0 (0 = no cap)")
    if d.name == "hf":
        need(bool(d.dataset), "data=hf needs data.dataset=<a Hub dataset such as wikitext, or a local dataset folder>")
        need(bool(d.text_field), "data.text_field must name the column holding the text, e.g. text")
        need(bool(d.train_split), "data.train_split must name a split, e.g. train")
        need(d.hub_timeout_s > 0, f"data.hub_timeout_s={d.hub_timeout_s} must be > 0 seconds, e.g. 3")
        need(not d.streaming or d.max_bytes > 0, "data.streaming=true reads a dataset row by row: give data.max_bytes "
                                                 "> 0 (how much to read), e.g. data.max_bytes=50000000")
    if d.name == "mqar":
        from .tasks.mqar import check as mqar_check

        need(len(d.num_kv_pairs) > 0, "data.num_kv_pairs must be a non-empty list, e.g. [2, 4, 8]")
        need(d.test_num_kv_pairs is None or len(d.test_num_kv_pairs) > 0,
             "data.test_num_kv_pairs must be null (= num_kv_pairs) or a non-empty list, e.g. [4, 8, 16]")
        for key, kvs in (("num_kv_pairs", d.num_kv_pairs), ("test_num_kv_pairs", d.test_num_kv_pairs or [])):
            for kv in kvs:
                why = mqar_check(c.seq_len, kv, d.vocab_size) if c.seq_len >= 1 else None
                need(why is None, f"data.{key}={list(kvs)} with data.vocab_size={d.vocab_size}, seq_len={c.seq_len}: {why}")
        need(d.n_train >= 1, f"data.n_train={d.n_train} must be >= 1")
        need(d.n_test >= 1, f"data.n_test={d.n_test} must be >= 1")
        need(d.alpha > 0, f"data.alpha={d.alpha} must be > 0 (Zoology: 0.01)")
        need(d.seed >= 0, f"data.seed={d.seed} must be >= 0")
    if d.name == "text":
        if not d.path:
            problems.append("data=text needs data.path=<a text file or a folder of text files>")
        elif not os.path.exists(os.path.expanduser(d.path)):
            problems.append(f"data.path={d.path!r} does not exist (looked in {os.path.abspath(os.path.expanduser(d.path))}); "
                            f"give an existing text file or folder")

    lg = c.logger
    need(lg.name in LOGGERS, f"logger.name={lg.name!r} is not known; allowed: {list(LOGGERS)}")
    need(lg.mode in WANDB_MODES, f"logger.mode={lg.mode!r} is not known; allowed: {list(WANDB_MODES)}")

    facts: dict = {}
    try:
        n_layers = max(1, m.n_layers)
        facts["layer_types"] = layer_types(n_layers, c.ratio, c.pattern)
    except ValueError as e:
        problems.append(str(e))
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
    if problems:
        raise ConfigError(problems)
    return facts
