"""Every bad input this project knows of, as `python -m runner ...` commands with what they must print and the exit
status they must end with: the test (tests/test_bad_input.py) runs each one, and

    python tests/bad_inputs.py > docs/bad-input.md

runs them all and writes the reference table of docs/bad-input.md (the message as printed, the exit status, and
whether a stack trace was printed: never, unless HYDRA_FULL_ERROR=1).

Exit status: 2 = the command cannot run as given (invalid configuration, or a configuration that does not fit the
run folder), refused before any work and nothing written; 1 = the run cannot go on for a reason outside the command
line (data, files, memory, network, another process), or Hydra refused the command line itself (unknown option, key
or type); 0 = handled (a warning, and the run goes on).
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model=tiny", "seq_len=32", "train.steps=4", "train.batch_size=2", "train.warmup_steps=1",
        "train.eval_every=0", "eval.max_tokens=256", "bench.lengths=[16,32]", "bench.repeats=1",
        "bench.decode_tokens=2", "data.max_bytes=100000", "threads=1"]


@dataclass
class Case:
    name: str  # what the user got wrong
    args: list  # the command line after `python -m runner`; {dir} = the case's run folder, {tmp} = its scratch
    status: int
    says: str  # a fragment the output must hold
    setup: Optional[Callable[[str], None]] = None  # prepares {tmp} (files, a trained run, a held lock)
    needs_root: bool = False  # mounts a file system
    env: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- setups

def _write(rel: str, data: bytes):
    def setup(tmp):
        path = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return setup


def _folder_without_text(tmp):
    os.makedirs(os.path.join(tmp, "notext", "sub"))
    _write("notext/image.png", b"\x89PNG\r\n")(tmp)


TRAINED: dict = {}  # a trained tiny run, made once per process and copied into each case that needs it


def trained_run(scratch: str) -> str:
    if "dir" not in TRAINED:
        d = os.path.join(scratch, "trained-once")
        p = run_cli([*TINY, "stages=[train]", f"hydra.run.dir={d}"])
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        TRAINED["dir"] = d
    return TRAINED["dir"]


def _trained(tmp):
    shutil.copytree(trained_run(os.path.dirname(tmp)), os.path.join(tmp, "run"))


def _corrupt(tmp):
    _trained(tmp)
    ckpt = os.path.join(tmp, "run", "checkpoints", "last.pt")
    with open(ckpt, "r+b") as f:
        f.truncate(os.path.getsize(ckpt) // 3)


def _other_layers(tmp):
    """The trained run's checkpoint as a version of the runner with other parameter names would have written it."""
    import torch

    _trained(tmp)
    ckpt = os.path.join(tmp, "run", "checkpoints", "last.pt")
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k.replace("norm", "layer_norm"): v for k, v in state["model"].items()}
    torch.save(state, ckpt)


def _busy(tmp):
    """Another process holds the folder: this test process takes its lock, as a running job would."""
    os.makedirs(os.path.join(tmp, "run"))
    fd = os.open(os.path.join(tmp, "run", ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b'{"pid": 4242, "host": "elsewhere", "started": "earlier"}')
    HELD.append(fd)


HELD: list = []


def _readonly(tmp):
    os.makedirs(os.path.join(tmp, "ro"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", os.path.join(tmp, "ro")], check=True)
    MOUNTS.append(os.path.join(tmp, "ro"))


MOUNTS: list = []


def cleanup() -> None:
    while HELD:
        os.close(HELD.pop())
    while MOUNTS:
        subprocess.run(["umount", MOUNTS.pop()], check=False)


LATIN1 = "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 200
WORDS = b"the quick brown fox jumps over the lazy dog\n" * 100

CASES = [
    # ------------------------------------------------------------------- the configuration (exit 2, nothing written)
    Case("ratio not L:F", ["ratio=3-1"], 2, "not of the form 'L:F'"),
    Case("ratio with no layers", ["ratio=0:0"], 2, "has no layers at all"),
    Case("pattern with other letters", ["pattern=LLXF"], 2, "must be a string of 'L'"),
    Case("pattern not dividing the depth", ["pattern=LLF"], 2, "does not divide model.n_layers=4"),
    Case("no tokens per window", ["seq_len=0"], 2, "seq_len=0 must be a whole number in [1, 16777216]"),
    Case("negative steps", ["train.steps=-1"], 2, "train.steps=-1 must be a whole number >= 1"),
    Case("zero steps with train", ["train.steps=0"], 2, "leave train out of stages to only evaluate or benchmark"),
    Case("empty batch", ["train.batch_size=0"], 2, "train.batch_size=0 must be a whole number in [1,"),
    Case("zero learning rate", ["train.lr=0"], 2, "train.lr=0 must be a rate in (0, 10]"),
    Case("NaN learning rate", ["train.lr=nan"], 2, "train.lr=nan must be a rate in (0, 10]"),
    Case("infinite learning rate", ["train.lr=inf"], 2, "train.lr=inf must be a rate in (0, 10]"),
    Case("min_lr_ratio above 1", ["train.min_lr_ratio=2"], 2, "train.min_lr_ratio=2.0 must be in [0, 1]"),
    Case("negative clipping", ["train.grad_clip=-1"], 2, "train.grad_clip=-1.0 must be >= 0"),
    Case("beta1 of 1", ["train.beta1=1"], 2, "must be in [0, 1)"),
    Case("periodic validation of no batches", ["train.eval_batches=0"], 2, "train.eval_batches=0 must be a whole"),
    Case("unknown stage", ["stages=[train,evaluate]"], 2, "unknown stage(s) ['evaluate']"),
    Case("no stages", ["stages=[]"], 2, "stages is empty"),
    Case("text source without a path", ["data=text"], 2, "data=text needs data.path"),
    Case("text file that does not exist", ["data=text", "data.path=/no/such/file.txt"], 2, "does not exist"),
    Case("validation fraction above 1", ["data.val_fraction=1.5"], 2, "data.val_fraction=1.5 must be in (0, 1)"),
    Case("BPE vocabulary below the bytes", ["data.tokenizer=bpe", "data.vocab_size=100"], 2, "must be in [257,"),
    Case("MQAR pairs that do not fit", ["data=mqar", "data.num_kv_pairs=[100]"], 2, "needs length >= 4 * 100"),
    Case("bench lengths not increasing", ["bench.lengths=[512,256]"], 2, "must be increasing without repeats"),
    Case("unknown memory method", ["bench.memory=vibes"], 2, "is not a measurement method"),
    Case("zero time budget", ["bench.time_budget_s=0"], 2, "bench.time_budget_s=0.0 must be > 0 seconds"),
    Case("extrapolation factor 1", ["eval.extrapolation_factors=[1]"], 2, "eval.extrapolation_factors=[1] must be"),
    Case("an unknown group for state tracking", ["data=state_tracking", "data.options.group=s7"], 2,
         "data.options.group='s7' is not a group this task knows; allowed: ['parity', 's3', 's5']"),
    Case("a misspelt task option", ["data=niah", "+data.options.depths=[0.5]"], 2,
         "['depths'] are not options of data=niah"),
    Case("examples too short for the task's settings", ["data=multihop", "seq_len=16"], 2,
         "needs examples of at least 32 tokens; use seq_len >= 32"),
    Case("a needle depth outside [0, 1]", ["data=niah", "data.options.test_depths=[50]"], 2,
         "must be a non-empty list of depths in [0, 1]"),
    Case("negative eigenvalues on a mixer without a delta rule",
         ["attention=mamba2", "+attention.allow_neg_eigval=true"], 2, "mixer 'mamba2' has no option(s) ['allow_neg_eigval']"),
    Case("a task the data cannot serve", ["eval.tasks=[ppl,mqar]"], 2,
         "the mqar task needs a model trained on data=mqar (data.name is 'stdlib')"),
    Case("text tasks on synthetic data", ["data=mqar", "seq_len=64", "eval.tasks=[positions]"], 2,
         "with data=mqar use eval.tasks=[ppl,mqar]"),
    Case("unknown W&B mode", ["logger.mode=sometimes"], 2, "logger.mode='sometimes' is not known"),
    Case("zero W&B timeout", ["logger=wandb", "logger.init_timeout_s=0"], 2, "logger.init_timeout_s=0.0 must be"),
    Case("unknown device", ["device=tpu"], 2, "device='tpu' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    Case("CUDA without a GPU", ["device=cuda"], 2, "CUDA is not available here"),
    Case("heads not dividing the width", ["model.n_heads=3"], 2, "not divisible by num_heads=3"),
    Case("zero width", ["model.d_model=0"], 2, "model.d_model=0 must be a whole number in [1, 65536]"),
    Case("absurd width", ["model.d_model=100000000"], 2, "model.d_model=100000000 must be a whole number"),
    Case("absurd depth", ["model.n_layers=100000"], 2, "model.n_layers=100000 must be a whole number in [1, 1024]"),
    Case("zero norm epsilon", ["model.norm_eps=0"], 2, "model.norm_eps=0.0 must be in (0, 1)"),
    Case("a model the machine cannot hold", ["model.d_model=16384", "model.n_heads=64", "model.n_layers=64"], 2,
         "this training cannot fit"),
    Case("a batch the machine cannot hold", ["train.batch_size=1000000"], 2, "this training cannot fit"),
    Case("unknown mixer option", ["+attention.nonsense=3"], 2, "has no option(s) ['nonsense']"),
    Case("unknown mixer name", ["attention.name=nope"], 2, "attention.name='nope' is not a known mixer"),
    Case("value heads not a multiple", ["attention.num_v_heads=3"], 2, "num_v_heads=3 must be a positive multiple"),
    Case("KV heads not dividing", ["full.num_kv_heads=3"], 2, "num_kv_heads=3 must divide num_heads"),
    Case("KDA chunk not a power of two", ["attention=kda", "attention.chunk_size=48"], 2, "must be a power of two"),
    Case("resume from nowhere", ["resume=/no/such/run"], 2, "resume='/no/such/run' is not a folder"),
    Case("negative threads", ["threads=-1"], 2, "threads=-1 must be a whole number in [0,"),
    Case("far too many threads", ["threads=100000"], 2, "more threads than 4 per core only thrash"),
    Case("negative seed", ["seed=-1"], 2, "seed=-1 must be a whole number in [0, 4294967295]"),
    Case("seed beyond the generators", ["seed=99999999999999999999"], 2, "must be a whole number in [0, 4294967295]"),
    Case("no seeds", ["seeds=0"], 2, "seeds=0 must be a whole number of seeds in [1, 999]"),
    Case("seeds and a seed", ["seeds=3", "seed=1"], 2, "seeds=3 and seed= were both given"),
    Case("a word for a learning rate", ["train.lr=fast"], 2, "train.lr='fast' must be a rate in (0, 10]"),
    Case("tuned rate without a table", ["train.lr=tuned"], 2, "train.lr=tuned needs train.lr_table="),
    Case("tuned rate, table missing", ["train.lr=tuned", "train.lr_table={tmp}/nope.json"], 2, "does not exist"),
    Case("tuned rate, not a table", ["train.lr=tuned", "train.lr_table={tmp}/t.json"], 2,
         "cannot be read as a tuned_lr.json", setup=_write("t.json", b"lr = 3e-3\n")),
    Case("tuned rate, configuration not tuned", ["train.lr=tuned", "train.lr_table={tmp}/t.json"], 2,
         "has no rate for this configuration", setup=_write("t.json", b'{"entries": {"linear LLLL": {"lr": 0.01}}}')),
    Case("a rate table without tuned", ["train.lr_table={tmp}/t.json"], 2, "is read only with train.lr=tuned"),
    Case("fla kernels without a GPU", ["kernels=fla"], 2, "kernels=fla runs flash-linear-attention's Triton"),
    Case("unknown kernels", ["kernels=triton"], 2, "kernels='triton' is not a kernel backend"),
    Case("fp16", ["precision=fp16"], 2, "precision='fp16' is not supported"),
    Case("unknown parallelism", ["parallel=zero3"], 2, "parallel='zero3' is not supported"),
    Case("unknown weights", ["weights=maybe"], 2, "weights='maybe' is not known"),
    Case("random weights with training", ["weights=random"], 2, "weights=random is for stages without train"),
    # --------------------------------------------------------------------- what Hydra refuses (exit 1, composition)
    Case("unknown study", ["experiment=nope"], 1, "Could not find 'experiment/nope'"),
    Case("unknown architecture preset", ["arch=nope"], 1, "Could not find 'arch/nope'"),
    Case("unknown group option", ["attention=nope"], 1, "Could not find 'attention/nope'"),
    Case("unknown objective", ["objective=nope"], 1, "Could not find 'objective/nope'"),
    Case("masked diffusion with a sliding window", ["objective=mdlm", "full=softmax", "full.window=64"], 2,
         "full='softmax' with window=64 is a causal sliding window; set window=null, and objective=mdlm needs"),
    Case("masked diffusion on a task's query/answer pairs", ["objective=mdlm", "data=mqar"], 2,
         "objective=mdlm needs data that provides 'text', and data=mqar provides ['mqar']"),
    Case("masked diffusion's smallest masking rate out of range", ["objective=mdlm", "objective.eps=2"], 2,
         "objective.eps=2 must be in (0, 0.5]"),
    Case("sampling a synthetic task's ids", ["data=mqar", "seq_len=64", "stages=[train,sample]"], 2,
         "has sample, but data=mqar is a synthetic task whose tokens are ids, not text"),
    Case("bad sampling settings", ["sample.top_p=0", "sample.prompts=[]"], 2,
         "sample.prompts=[] must be a non-empty list of texts"),
    Case("an lm-eval task folder that is not there", ["eval.tasks=[ppl,lm_eval]", "eval.lm_eval.builtin=false",
                                                      "eval.lm_eval.include_path={tmp}/none"], 2,
         "is not a folder; give a folder of lm-eval task YAML files"),
    Case("lm-eval on a masked-diffusion model", ["objective=mdlm", "eval.tasks=[ppl,lm_eval]"], 2,
         "which scores an autoregressive model's log-likelihoods"),
    Case("filling answers of running text", ["objective=fill"], 2,
         "objective=fill needs data that provides 'answers', and data=stdlib provides ['text']"),
    Case("a sudoku at another length", ["data=sudoku", "objective=fill", "seq_len=64"], 2,
         "data=sudoku is one token per cell; use seq_len=81"),
    Case("a recursive model on running text", ["recursion=trm"], 2,
         "recursion=trm answers a whole puzzle at once: use objective=fill"),
    Case("a misspelt recursion setting", ["recursion=trm", "objective=fill", "data=sudoku", "seq_len=81",
                                          "+model.recursion.cycle=2"], 2,
         "model.recursion.cycle is not a setting of recursion=trm"),
    Case("an MLP over positions on running text", ["attention=position_mlp", "ratio=1:0"], 2,
         "'position_mlp' mixes every position with every other: it has no causal form"),
    Case("bad diffusion step counts for the bench", ["bench.diffusion_steps=[0]"], 2,
         "bench.diffusion_steps=[0] must be a non-empty list of step counts"),
    Case("unknown key", ["train.stepz=5"], 1, "Key 'stepz' not in 'TrainConfig'"),
    Case("a word for a number", ["train.steps=abc"], 1, "Value 'abc' of type 'str' could not be converted to Integer"),
    # --------------------------------------------------------------------------- the run folder (exit 1 or 2)
    Case("run folder that is a file", ["hydra.run.dir={tmp}/afile"], 1, "is a file, not a folder",
         setup=_write("afile", b"x")),
    Case("run folder on a read-only disk", ["hydra.run.dir={tmp}/ro/run"], 1, "cannot create the run folder",
         setup=_readonly, needs_root=True),
    Case("evaluation with no trained model", ["stages=[eval]", "hydra.run.dir={tmp}/run"], 2,
         "would measure an untrained model"),
    Case("benchmark with no trained model", ["stages=[bench]", "hydra.run.dir={tmp}/run"], 2,
         "or set weights=random to measure an untrained model on purpose"),
    Case("random weights in a trained run's folder", [*TINY, "weights=random", "stages=[bench]",
                                                      "hydra.run.dir={tmp}/run"], 2,
         "weights=random measures an untrained model, but", setup=_trained),
    Case("training settings changed in a trained run's folder", [*TINY, "model=small", "hydra.run.dir={tmp}/run"], 2,
         "was written by a run with other settings (model.d_model: checkpoint 64, this command 128", setup=_trained),
    Case("evaluating a trained model at another seq_len", ["stages=[eval]", "seq_len=64", "hydra.run.dir={tmp}/run"],
         2, "seq_len: checkpoint 32, this command 64", setup=_trained),
    Case("a second run into a folder in use", [*TINY, "hydra.run.dir={tmp}/run"], 1,
         "another run (pid 4242 on elsewhere, started earlier) is writing to", setup=_busy),
    Case("a damaged checkpoint", [*TINY, "hydra.run.dir={tmp}/run"], 1, "cannot be read", setup=_corrupt),
    Case("a checkpoint of other layers", [*TINY, "stages=[eval]", "hydra.run.dir={tmp}/run"], 1,
         "does not fit the model its settings build: in its 'model' weights,", setup=_other_layers),
    # ----------------------------------------------------------------------------------------- the data (exit 1)
    Case("a binary file as text", [*TINY, "data=text", "data.path={tmp}/model.bin", "hydra.run.dir={tmp}/run"], 1,
         "is binary, not text", setup=_write("model.bin", b"\x00\x01\x02weights\x00" * 100)),
    Case("a latin-1 file", [*TINY, "data=text", "data.path={tmp}/latin1.txt", "hydra.run.dir={tmp}/run"], 1,
         "is not UTF-8 text (byte 0xe9 at offset 3", setup=_write("latin1.txt", LATIN1)),
    Case("an empty file", [*TINY, "data=text", "data.path={tmp}/empty.txt", "hydra.run.dir={tmp}/run"], 1,
         "is empty (0 bytes, no text)", setup=_write("empty.txt", b"")),
    Case("a folder with no text", [*TINY, "data=text", "data.path={tmp}/notext", "hydra.run.dir={tmp}/run"], 1,
         "is a folder with no text files in it", setup=_folder_without_text),
    Case("a file too short for seq_len", [*TINY, "seq_len=256", "data=text", "data.path={tmp}/short.txt",
                                          "hydra.run.dir={tmp}/run"], 1,
         "too few for seq_len=256", setup=_write("short.txt", b"just a few words of text\n")),
    Case("a haystack text too short for the needle task", [*TINY, "seq_len=64", "data=niah",
                                                           "data.options.haystack=text", "data.path={tmp}/short.txt",
                                                           "hydra.run.dir={tmp}/run"], 1,
         "fewer than the 45 of one haystack at length 64", setup=_write("short.txt", b"just a few words of text\n")),
    Case("a Hub dataset without network", [*TINY, "data=hf", "data.dataset=wikitext",
                                           "data.config=wikitext-103-raw-v1", "hydra.run.dir={tmp}/run"], 1,
         "What to do", env={"HF_HUB_OFFLINE": "1"}),
    Case("a read-only tokenizer cache", [*TINY, "stages=[train]", "train.steps=1", "data=text",
                                         "data.path={tmp}/words.txt", "data.tokenizer=bpe", "data.vocab_size=300",
                                         "data.cache_dir={tmp}/ro", "hydra.run.dir={tmp}/run"], 0,
         "going on without caching it", setup=lambda tmp: (_write("words.txt", WORDS)(tmp), _readonly(tmp)),
         needs_root=True),
    # ------------------------------------------------------------------------------ the machine and the network
    Case("a batch that runs out of memory", [*TINY, "stages=[train]", "train.batch_size=64", "seq_len=8192",
                                             "hydra.run.dir={tmp}/run"], 1,
         "out of memory during the train stage", env={"MEMORY_LIMIT_GB": "3"}),
    Case("online W&B without network", [*TINY, "stages=[train]", "train.steps=1", "logger=wandb",
                                        "logger.mode=online", "logger.init_timeout_s=3", "hydra.run.dir={tmp}/run"],
         0, "logging offline instead",
         env={"WANDB_MODE": "", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}),
]


def _memory_limit(gb: Optional[str]):
    """A preexec_fn capping the child's address space (ulimit -v), so that running out of memory is a clean
    allocation failure in that process, not the machine's OOM killer."""
    def limit():
        if gb:
            import resource

            b = int(float(gb) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
    return limit


def run_cli(args: list, env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1", COLUMNS="200")
    e.pop("HYDRA_FULL_ERROR", None)
    env = dict(env or {})
    limit = _memory_limit(env.pop("MEMORY_LIMIT_GB", None))
    for k, v in env.items():
        if v == "":
            e.pop(k, None)
        else:
            e[k] = v
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e, preexec_fn=limit)


def run_case(case: Case, tmp: str) -> subprocess.CompletedProcess:
    """Prepare ``tmp`` and run the case's command in it (the caller calls cleanup() afterwards)."""
    if case.setup is not None:
        case.setup(tmp)
    args = [a.replace("{tmp}", tmp) for a in case.args]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp}/run")
    return run_cli(args, case.env)


STARTS = ("error:", "failed:", "In 'config'", "Could not", "Error merging", "W&B:", "data: cannot write")
ENDS = ("data: python", "data: trained", "data: read", "model:", "train ", "weights:", "eval:", "bench", "results:",
        "Config search path", "Set the environment variable HYDRA_FULL_ERROR", "┌", "│", "└", "┏")


def message(p: subprocess.CompletedProcess, tmp: str) -> str:
    """What the user reads: the error or warning, from its first line to the end of its paragraph (the whole
    output's last lines if there is none)."""
    out = (p.stdout + p.stderr).replace(tmp, "<tmp>")
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith(STARTS)), None)
    if start is None:
        return " ".join(lines[-3:])
    picked = [lines[start]]
    for ln in lines[start + 1:]:
        if ln.startswith(ENDS) or ln.startswith(STARTS):
            break
        picked.append(ln)
    return re.sub(r"\s+", " ", " ".join(picked))


def has_traceback(p: subprocess.CompletedProcess) -> bool:
    return "Traceback (most recent call last)" in p.stdout + p.stderr


def markdown() -> str:
    import tempfile

    rows, tracebacks = [], 0
    root = tempfile.mkdtemp(prefix="bad-input-")
    root_ok = os.geteuid() == 0
    for i, case in enumerate(CASES):
        if case.needs_root and not root_ok:
            rows.append(f"| {case.name} | `{' '.join(case.args)}` | (needs root to mount a file system) | | |")
            continue
        tmp = os.path.join(root, f"case{i:02d}")
        os.makedirs(tmp)
        try:
            p = run_case(case, tmp)
        finally:
            cleanup()
        tb = has_traceback(p)
        tracebacks += tb
        shown = " ".join(a for a in case.args if a not in TINY)
        msg = message(p, tmp).replace("|", "\\|")
        rows.append(f"| {case.name} | `{shown}` | {msg} | {p.returncode} | {'yes' if tb else 'no'} |")
        print(f"{i + 1}/{len(CASES)} {case.name}: exit {p.returncode}", file=sys.stderr)
    head = ["# Bad input: what it says", "",
            "Every row is a command `python -m runner <arguments>` run by `python tests/bad_inputs.py` (which wrote "
            "this page; tests/test_bad_input.py runs the same cases and checks the exit status and the message). "
            "`{tmp}` stands for a scratch folder the case prepares (the file, the trained run or the held lock it "
            "names); cases that run a job add the tiny model's settings (`model=tiny seq_len=32 ...`), left out "
            "here.", "",
            "Exit status: **2** = the command cannot run as given (an invalid configuration, or one that does not "
            "fit the run folder): refused before any work, nothing written but, in a folder that holds a record, "
            "the refused attempt in its `attempts` list; **1** = the run cannot go on for a reason outside the "
            "command line (data, files, memory, network, another process), recorded as `failed` when the run had "
            "started, or Hydra refused the command line itself (unknown option, key or type); **0** = handled: a "
            "warning, and the run goes on. A stack trace is printed only with `HYDRA_FULL_ERROR=1`.", "",
            f"{len(CASES)} cases, {tracebacks} with a stack trace.", "",
            "| what is wrong | arguments | message (as printed) | exit | stack trace |", "|---|---|---|---|---|"]
    shutil.rmtree(root, ignore_errors=True)
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
