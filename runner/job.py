"""One attempt on a run folder: validate the config (and that it fits the machine), lock the folder, decide which
weights the stages use (runner/checkpoint.plan), then data, model and the stages, recording every ending.

What cannot run is refused before any work: an invalid configuration with the list of problems, a folder that is
held or cannot be written, a configuration that does not fit the folder's checkpoint. In a multirun sweep every job
records its outcome (also a failure, with the error) in its results.json and the sweep goes on; a single run exits
with the status the README lists (2 refused, 1 failed with a message, 130 / 143 interrupted).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from . import __version__, stops
from .config import ConfigError, validate
from .distributed import env_info
from .errors import ActionableError, during, explain
from .track import NullTracker, Tracker, summary_tables


def _run_dir() -> tuple[str, bool]:
    """The Hydra run folder (hydra.run.dir / hydra.sweep.dir+subdir) and whether this is a multirun job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.runtime.output_dir, hc.mode == RunMode.MULTIRUN
    except (ValueError, ImportError):
        return os.getcwd(), False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _same_config(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "resume"} == {k: v for k, v in b.items() if k != "resume"}


def _container(cfg) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve: record it as written
        return OmegaConf.to_container(cfg, resolve=False)


def run(cfg: DictConfig, run_dir: str | None = None, multirun: bool | None = None, console: Console | None = None) -> dict:
    """One attempt on one run folder; returns its record. A single run that cannot go on exits: 2 for an invalid
    configuration or one that does not fit the folder, 1 for an error the message explains, 130 / 143 when
    interrupted by SIGINT / SIGTERM (recorded as ``interrupted`` first); a bug keeps its traceback. A job of a
    sweep records every outcome and returns (an interrupt ends the sweep)."""
    hydra_dir, hydra_multi = _run_dir()
    run_dir = run_dir or hydra_dir
    multirun = hydra_multi if multirun is None else multirun
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    with stops.handling():
        try:
            return _attempt(cfg, run_dir, multirun, console)
        except KeyboardInterrupt as e:  # recorded as interrupted by _attempt
            if multirun:
                raise
            raise SystemExit(stops.exit_code(e)) from None


def _validated(cfg) -> dict:
    """validate(), then whether the training fits the machine's memory (runner/fit.py): ConfigError if not."""
    from . import fit

    facts = validate(cfg)
    if "tuned_lr" in facts:  # train.lr=tuned: the rate of the table, recorded as the rate trained at
        cfg.train.lr = float(facts["tuned_lr"]["lr"])
    dev = str(cfg.device)
    device_type = "cuda" if dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available()) else "cpu"
    why = fit.problem(cfg, facts, device_type)
    if why:
        raise ConfigError([why])
    return facts


def _refuse(console, e: BaseException, multirun: bool, write=None) -> dict:
    """Print why this attempt cannot start; record it (``write``) where the folder can take it; exit or return."""
    status = "invalid_config" if isinstance(e, ConfigError) else "refused"
    console.print(f"[bold red]error:[/] {escape(str(e))}")
    if _full_error():
        console.print(traceback.format_exc())
    record = {"status": status, "error": str(e)}
    if write is not None:
        try:
            record = write(status, str(e))
        except Exception as again:  # noqa: BLE001 - the refusal stands; say that it could not be recorded
            console.print(f"[yellow]could not record the refused attempt:[/] {type(again).__name__}: "
                          f"{escape(str(again))}")
    if multirun:
        return record
    raise SystemExit(2 if isinstance(e, ConfigError) else getattr(e, "exit_code", 1))


def _attempt(cfg, run_dir: str, multirun: bool, console: Console) -> dict:
    from . import checkpoint, run_folder
    from .common import atomic_write_text
    from .track import _clean

    main = env_info().is_main
    stages = list(cfg.stages) if OmegaConf.select(cfg, "stages") is not None else []
    try:
        facts, invalid = _validated(cfg), None
        if "tuned_lr" in facts:
            console.print(f"train.lr=tuned: {facts['tuned_lr']['lr']:g} from {escape(str(cfg.train.lr_table))} "
                          f"(eval loss {facts['tuned_lr'].get('loss', float('nan')):.4f} there)")
        for note in facts.get("notes", ()):
            console.print(f"[yellow]warning:[/] {escape(note)}")
    except ConfigError as e:
        facts, invalid = None, e
        if not multirun:  # refused before anything is touched, the folder included
            return _refuse(console, e, multirun)
    if invalid is None and cfg.get("resume"):
        run_dir = os.path.abspath(os.path.expanduser(cfg.resume))  # validated: an existing folder
    if main:
        try:
            run_dir = run_folder.acquire(run_dir)
        except run_folder.FolderError as e:
            return _refuse(console, e, multirun)  # nothing can be written there
    previous = None

    def write(status: str, error: str) -> dict:
        """Add a refused attempt to the folder's record (a completed one keeps all it said)."""
        rec = run_folder.append_attempt(previous, _container(cfg), stages, status, error)
        if previous is not None or multirun:
            atomic_write_text(os.path.join(run_dir, "results.json"), json.dumps(_clean(rec), indent=2) + "\n")
        return rec

    try:
        if main:
            for path in run_folder.remove_leftovers(run_dir):
                console.print(f"removed {path}: a file an earlier process did not finish writing")
            previous, note = run_folder.read_record(run_dir)
            if note:
                console.print(f"[yellow]{escape(note)}[/]")
            if previous is not None and any(a.get("status") == "running" for a in previous.get("attempts") or
                                            [previous]):
                previous = run_folder.died_record(previous)
                console.print(f"[yellow]{run_dir}: an earlier attempt ended without recording how (killed, or the "
                              f"machine stopped); it is marked 'died' in results.json[/]")
        if invalid is not None:  # a sweep's job: recorded, and the sweep goes on
            return _refuse(console, invalid, multirun, write if main else None)
        plan = None
        if main:
            try:
                plan = checkpoint.plan(cfg, run_dir, previous, log=console.print)
            except ActionableError as e:
                return _refuse(console, e, multirun, write)
            if plan.adopted:
                cfg = plan.cfg
                try:
                    facts = _validated(cfg)
                except ConfigError as e:
                    return _refuse(console, e, multirun, write)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if main and previous is not None and previous.get("status") == "completed" and \
                _same_config(previous.get("config") or {}, resolved) and env_info().world == 1:
            console.print(f"{run_dir} already holds a completed run with this configuration; not running it again")
            for table in summary_tables(previous):
                console.print(table)
            return previous
        return _run_stages(cfg, facts, plan, previous, resolved, stages, run_dir, multirun, console, main)
    finally:
        if main:
            run_folder.release(run_dir)


def _run_stages(cfg, facts, plan, previous, resolved, stages, run_dir, multirun, console, main) -> dict:
    from . import run_folder

    tracker, where = None, {"stage": None}
    try:
        if not main:
            tracker = NullTracker(run_dir, resolved)
            console = tracker.console
        else:
            run_folder.reserve(run_dir)
            tracker = Tracker(run_dir, resolved, cfg.logger, console, previous, stages, plan.same_weights)
        tracker.update(layer_types=facts["layer_types"], run_dir=run_dir,
                       weights=plan.describe() if plan is not None else None,
                       env={"python": platform.python_version(), "torch": torch.__version__, "runner": __version__,
                            "threads": torch.get_num_threads(), "machine": platform.machine(),
                            "host": platform.node()})
        _stages(cfg, facts, tracker, run_dir, console, plan, where)
        with stops.deferred():
            if not isinstance(tracker, NullTracker) and "bench" in tracker.record.sections:
                try:
                    from .plots import run_plots

                    tracker.record.set(plots=[os.path.basename(p) for p in run_plots(tracker.results, run_dir)])
                except Exception as e:  # a plot must never fail a run
                    console.print(f"[yellow]plots skipped:[/] {type(e).__name__}: {escape(str(e))}")
            tracker.finish("completed")
            late = stops.take()
    except (Exception, KeyboardInterrupt) as e:  # every ending is recorded, Ctrl-C and SIGTERM included
        return _ended(e, tracker, where["stage"], cfg, resolved, previous, stages, run_dir, multirun, console)
    finally:
        if main:
            run_folder.free_reserve(run_dir)
    if isinstance(tracker, NullTracker):
        return tracker.results
    for table in summary_tables(tracker.results):
        console.print(table)
    console.print(f"results: {os.path.join(run_dir, 'results.json')}")
    if late:
        raise stops.Interrupted(late, "after the run completed and was recorded")
    return tracker.results


def _ended(e: BaseException, tracker, stage, cfg, resolved, previous, stages, run_dir, multirun, console) -> dict:
    """Record how the attempt ended (interrupted, or failed with the actionable message or the stack trace), say it,
    then exit or, in a sweep, return the record. A job of a sweep never raises (an interrupt aside): Hydra's
    sweeper re-raises a job's exception once its batch is done, which would end the sweep without the later
    batches and without the report."""
    interrupted = isinstance(e, KeyboardInterrupt)
    known = None if interrupted else explain(e, stage, cfg)
    if interrupted:
        detail = getattr(e, "detail", "")
        error = f"{getattr(e, 'signame', 'SIGINT')}{during(stage)}" + (f": {detail}" if detail else "")
    elif known is not None:
        error = f"{type(known).__name__}: {known}"
    else:
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
    status = "interrupted" if interrupted else "failed"
    with stops.deferred():  # a second signal waits until the record is written
        try:
            if tracker is None:  # the tracker itself could not start (W&B): a record without it
                tracker = Tracker(run_dir, resolved, None, console, previous, stages)
            tracker.finish(status, error)
            results = tracker.results
        except Exception as again:  # nowhere to write: say so, and let a sweep go on
            console.print(f"[bold red]could not record the outcome in {run_dir}:[/] {type(again).__name__}: "
                          f"{escape(str(again))}")
            results = {"config": resolved, "status": status, "error": error}
        stops.take()
    console.print(f"[bold red]{status}:[/] {escape(str(known) if known is not None else error)}")
    if interrupted:
        if "train" in stages:
            console.print("rerun the same command to continue from the last checkpoint")
        raise e
    if _full_error() and known is not None:
        console.print("".join(traceback.format_exception(e)))
    if multirun:
        return results
    if known is not None:  # the message says what to do: no stack trace after it
        raise SystemExit(known.exit_code) from None
    raise e


def _stages(cfg, facts, tracker: Tracker, run_dir: str, console: Console, plan=None, where=None) -> None:
    """Data, model, then the stages in order; ``where["stage"]`` names the one running (for the error message).
    ``plan`` (runner/checkpoint.plan) says which weights they use; None on the ranks of a torchrun other than 0."""
    from .accel import autocast
    from .bench import bench_generation, run_bench, scaling
    from .checkpoint import check_fits
    from .checkpoint import weights as checkpoint_weights
    from .data import load_corpus
    from .evaluate import describe as describe_eval, evaluate
    from .model import build_model
    from .train import train

    where = where if where is not None else {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from . import distributed

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    dist_info = distributed.setup(device)
    device = distributed.device_for(dist_info, device)
    run_dir = distributed.broadcast(run_dir, dist_info)  # checkpoints are read from rank 0's folder
    tracker.update(env={**(tracker.record.get("env") or {}), "device": str(device), "world_size": dist_info.world})
    t0 = time.perf_counter()
    where["stage"] = "data"
    corpus = load_corpus(cfg.data, seq_len=cfg.seq_len, log=console.print, console=console)
    tracker.update(data=corpus.info())
    console.print(f"data: {corpus.description}: {corpus.summary()} "
                  f"(fingerprint {corpus.fingerprint}, {time.perf_counter() - t0:.1f} s)")
    from . import sources

    for note in getattr(sources.get(cfg.data.name), "notes", lambda c: [])(cfg):
        console.print(note)
    judge = None
    if cfg.bench.judge and "bench" in cfg.stages:  # before any training: a judge of other data is refused now
        from .checkpoint import load_judge

        judge = load_judge(str(cfg.bench.judge), corpus.info(), device)

    m = cfg.model

    def build():
        return build_model(cfg, corpus.vocab_size, facts["layer_types"], device)

    where["stage"] = "model"
    model = build()
    tracker.describe(layer_types=facts["layer_types"], n_params=model.n_params(),
                     n_params_non_embedding=model.n_params(embeddings=False))
    console.print(f"model: {m.name} d_model={m.d_model} layers={''.join(facts['layer_types'])} "
                  f"({cfg.attention.name} + {cfg.full.name}), {model.n_params():,} parameters"
                  + (f", {model.recursion.describe()}" if model.recursion is not None else ""))

    state = plan.state if plan is not None else None
    if state is not None:
        check_fits(model, state, plan.path)
    step = int(state["step"]) if state is not None else (cfg.train.steps if "train" in cfg.stages else 0)
    try:
        if "train" in cfg.stages:
            where["stage"] = "train"
            # a finished training is not run again (under torchrun every rank goes through train() instead: it
            # has nothing left to do there, but its collectives must meet)
            if plan is not None and plan.train_done and tracker.record.get("train") and not dist_info.enabled:
                distributed.load_full_state(model, checkpoint_weights(state))
                console.print(f"train: already complete ({plan.path} holds step {step} of {cfg.train.steps}); "
                              f"not trained again")
            else:
                tracker.update(train=train(model, corpus, cfg, tracker, device, run_dir, dist_info, state))
                step = cfg.train.steps
            if distributed.is_sharded(model):  # FSDP: rank 0 evaluates and benchmarks an unsharded copy
                full_sd, _ = distributed.full_state(model)
                if dist_info.is_main:
                    model = build()
                    model.load_state_dict(full_sd)
        elif plan is not None and plan.source == "checkpoint":
            distributed.load_full_state(model, checkpoint_weights(state))
            total = int(state["identity"]["train"]["steps"])
            console.print(f"weights: {plan.path}, step {step} of {total}"
                          + ("" if step >= total else " [yellow](training not finished: a partly trained model)[/]"))
        elif plan is not None and plan.source == "random":
            console.print("weights: random initialisation (weights=random): the stages measure an untrained model")
    finally:
        state = None
        if plan is not None:
            plan.state = None  # the model holds the weights now
        if not dist_info.is_main:
            model = None  # the sharded model and its hooks go before the process group does
        distributed.teardown(dist_info)  # only rank 0 goes on to eval and bench
    if not dist_info.is_main:
        return
    if "eval" in cfg.stages:
        where["stage"] = "eval"
        with autocast(cfg.precision, device):
            ev = evaluate(model, corpus, cfg, device, run_dir=run_dir, log=console.print, console=console)
        tracker.update(eval=ev)
        row = {"step": step, "eval_loss": ev["loss"], "eval_bpb": ev["bpb"]}
        if "mqar" in ev:
            row["eval_mqar_accuracy"] = ev["mqar"]["accuracy"]
        if "accuracy" in ev:
            row["eval_task_accuracy"] = ev["accuracy"]["accuracy"]
            row["eval_task_accuracy_longest"] = ev["accuracy"]["accuracy_longest"]
        tracker.log(row, replaces="eval_loss")
        for line in describe_eval(ev):
            console.print(line)
    if "bench" in cfg.stages:
        where["stage"] = "bench"
        console.print("bench:")
        rows = run_bench(model, cfg, device, console)
        tracker.update(bench=rows, bench_scaling=scaling(rows))
        tracker.update(bench_generation=bench_generation(model, cfg, device, console, corpus, judge))
    if "sample" in cfg.stages:
        where["stage"] = "sample"
        _sample_stage(model, cfg, corpus, device, tracker, run_dir, console, step)
    where["stage"] = None


def _sample_stage(model, cfg, corpus, device, tracker, run_dir: str, console: Console, step: int) -> None:
    """What the model writes after sample.prompts: results.json, samples.md, the console and a W&B table."""
    from . import samples
    from .accel import autocast
    from .progress import bar

    origin = f"attempt {tracker.record.attempt['attempt']}, the weights after training step {step}"
    with bar(console, "sample", len(cfg.sample.prompts)) as advance, autocast(cfg.precision, device):
        section = samples.run(model, corpus.info(), cfg, run_dir, progress=lambda done, total: advance(),
                              origin=origin)
    tracker.update(sample=section)
    tracker.table("samples", ["prompt", "text"], [[r["prompt"], r["text"]] for r in section["samples"]])
    console.print("sample: (samples.md)")
    for line in samples.describe(section):
        console.print(escape(line))
