"""One run: validate the config, load the data, build the model, run the stages, write the results.

A configuration error stops the run before any work with the list of problems. In a multirun sweep every job
records its outcome (also a failure, with the error) in its results.json and the sweep goes on; a single run
exits non-zero on failure.
"""
from __future__ import annotations

import os
import platform
import sys
import time
import traceback

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from . import __version__
from .config import ConfigError, validate
from .distributed import env_info
from .errors import ActionableError
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


def _finished_results(run_dir: str, resolved: dict) -> dict | None:
    """results.json of a completed run of the same configuration in this folder, else None."""
    import json

    path = os.path.join(run_dir, "results.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None
    same = {k: v for k, v in old.get("config", {}).items() if k != "resume"} == \
        {k: v for k, v in resolved.items() if k != "resume"}
    return old if old.get("status") == "completed" and same else None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: DictConfig, run_dir: str | None = None, multirun: bool | None = None, console: Console | None = None) -> dict:
    hydra_dir, hydra_multi = _run_dir()
    run_dir = run_dir or hydra_dir
    multirun = hydra_multi if multirun is None else multirun
    console = console or Console(width=None if sys.stdout.isatty() else 120)

    tracker, recorded = None, False
    try:
        try:
            facts = validate(cfg)
        except ConfigError as e:
            console.print(f"[bold red]error:[/] {e}")
            if multirun:
                t = Tracker(run_dir, OmegaConf.to_container(cfg, resolve=True), None, console)
                t.finish("invalid_config", str(e))
                return t.results
            raise SystemExit(2)

        if cfg.resume:
            run_dir = os.path.abspath(os.path.expanduser(cfg.resume))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        done = _finished_results(run_dir, resolved)
        if done is not None and env_info().world == 1:
            console.print(f"{run_dir} already holds a completed run with this configuration; not running it again")
            for table in summary_tables(done):
                console.print(table)
            return done
        if not env_info().is_main:
            tracker = NullTracker(run_dir, resolved)
            console = tracker.console
        else:
            tracker = Tracker(run_dir, resolved, cfg.logger, console)
        tracker.results.update({"layer_types": facts["layer_types"], "run_dir": run_dir,
                                "env": {"python": platform.python_version(), "torch": torch.__version__,
                                        "runner": __version__, "threads": torch.get_num_threads(),
                                        "machine": platform.machine()}})
        try:
            _stages(cfg, facts, tracker, run_dir, console)
        except BaseException as e:  # record every failure, Ctrl-C included
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            tracker.finish(status, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
            console.print(f"[bold red]{status}:[/] {type(e).__name__}: {e}")
            if multirun and not isinstance(e, KeyboardInterrupt):
                return tracker.results
            if isinstance(e, ActionableError):  # the message above says what to do: no traceback after it
                raise SystemExit(1) from None
            raise
        if not isinstance(tracker, NullTracker) and tracker.results.get("bench"):
            try:
                from .plots import run_plots

                tracker.results["plots"] = [os.path.basename(p) for p in run_plots(tracker.results, run_dir)]
            except Exception as e:  # a plot must never fail a run
                console.print(f"[yellow]plots skipped:[/] {type(e).__name__}: {e}")
        tracker.finish("completed")
        recorded = True
        if isinstance(tracker, NullTracker):
            return tracker.results
        for table in summary_tables(tracker.results):
            console.print(table)
        console.print(f"results: {os.path.join(run_dir, 'results.json')}")
        return tracker.results
    except Exception as e:
        # A job of a sweep never raises (Ctrl-C aside): Hydra's sweeper re-raises a job's exception once its batch
        # is done, which ends the sweep without the later batches and without the report. The stages' failures
        # are recorded above; this records the rest (W&B start, results files, a failure while finishing).
        if not multirun:
            raise
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        console.print(f"[bold red]failed:[/] {type(e).__name__}: {e}")
        if recorded:
            return tracker.results  # the results were written; only the console summary failed
        if tracker is not None:
            try:
                tracker.finish("failed", error)
                return tracker.results
            except Exception as again:
                console.print(f"[bold red]could not finish the run's records:[/] {type(again).__name__}: {again}")
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception:
            config = OmegaConf.to_container(cfg, resolve=False)
        results = dict(tracker.results) if tracker is not None else {}
        try:
            t = Tracker(run_dir, config, None, console)
            t.results.update({k: v for k, v in results.items() if k not in ("status", "error")})
            t.finish("failed", error)
            return t.results
        except Exception as again:  # nowhere to write: say so, and let the sweep go on
            console.print(f"[bold red]no results.json written to {run_dir}:[/] {type(again).__name__}: {again}")
            return {**results, "config": config, "status": "failed", "error": error}


def _stages(cfg, facts, tracker: Tracker, run_dir: str, console: Console) -> None:
    from .accel import autocast
    from .bench import run_bench, scaling
    from .data import load_corpus
    from .evaluate import describe as describe_eval, evaluate
    from .model import HybridLM
    from .train import train

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from . import distributed

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    dist_info = distributed.setup(device)
    device = distributed.device_for(dist_info, device)
    run_dir = distributed.broadcast(run_dir, dist_info)  # checkpoints are read from rank 0's folder
    tracker.results["env"].update(device=str(device), world_size=dist_info.world)
    t0 = time.perf_counter()
    corpus = load_corpus(cfg.data, seq_len=cfg.seq_len, log=console.print)
    tracker.update(data=corpus.info())
    console.print(f"data: {corpus.description}: {corpus.summary()} "
                  f"(fingerprint {corpus.fingerprint}, {time.perf_counter() - t0:.1f} s)")
    if cfg.data.name == "mqar" and "mqar" not in cfg.eval.tasks and "eval" in cfg.stages:
        console.print("note: add eval.tasks=[ppl,mqar] for the recall accuracy by number of pairs and by distance")

    m = cfg.model
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    full = OmegaConf.to_container(cfg.full, resolve=True)

    def build():
        return HybridLM(corpus.vocab_size, m.d_model, m.n_heads, facts["layer_types"], attention, full,
                        m.mlp_hidden, m.norm_eps, m.tie_embeddings, m.init_std, kernels=cfg.kernels).to(device)

    model = build()
    tracker.describe(layer_types=facts["layer_types"], n_params=model.n_params(),
                     n_params_non_embedding=model.n_params(embeddings=False))
    console.print(f"model: {m.name} d_model={m.d_model} layers={''.join(facts['layer_types'])} "
                  f"({attention['name']} + {full['name']}), {model.n_params():,} parameters")

    try:
        if "train" in cfg.stages:
            tracker.update(train=train(model, corpus, cfg, tracker, device, run_dir, dist_info))
            if distributed.is_sharded(model):  # FSDP: rank 0 evaluates and benchmarks an unsharded copy
                state, _ = distributed.full_state(model)
                if dist_info.is_main:
                    model = build()
                    model.load_state_dict(state)
    finally:
        if not dist_info.is_main:
            model = None  # the sharded model and its hooks go before the process group does
        distributed.teardown(dist_info)  # only rank 0 goes on to eval and bench
    if not dist_info.is_main:
        return
    if "eval" in cfg.stages:
        with autocast(cfg.precision, device):
            ev = evaluate(model, corpus, cfg, device, run_dir=run_dir, log=console.print)
        tracker.update(eval=ev)
        row = {"step": cfg.train.steps if "train" in cfg.stages else 0, "eval_loss": ev["loss"], "eval_bpb": ev["bpb"]}
        if "mqar" in ev:
            row["eval_mqar_accuracy"] = ev["mqar"]["accuracy"]
        tracker.log(row)
        for line in describe_eval(ev):
            console.print(line)
    if "bench" in cfg.stages:
        console.print("bench:")
        rows = run_bench(model, cfg, device, console)
        tracker.update(bench=rows, bench_scaling=scaling(rows))
