"""Train stage: AdamW with linear warm-up and cosine decay, gradient clipping, periodic validation, a rich
progress bar, the training curve in metrics.jsonl, and checkpoints that resume exactly.

A checkpoint (``checkpoints/last.pt``, written atomically; runner/checkpoint.py) holds the model, the optimizer, the
moving average of the weights (``train.ema``, which the later stages measure), the step, the data sampler's and
torch's RNG states and the running statistics, so a resumed run continues bit for bit where the interrupted one
stopped. Checkpoints are written every ``train.ckpt_every`` steps, at the end, and when
the run is asked to stop: SIGTERM (preemption) or a first Ctrl-C finish the current step, save, and stop with
status ``interrupted`` (runner/stops.py); a second Ctrl-C stops at once.
"""
from __future__ import annotations

import math
import os
import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import objectives, stops
from .checkpoint import checkpoint_path, identity, load as load_checkpoint, save as save_checkpoint
from .corpus import Corpus
from .errors import ActionableError
from .scoring import mean_loss


class NonFiniteLoss(ActionableError, FloatingPointError):
    pass


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, decay parameters or gate vectors). The fused
    implementation (one kernel over all parameters): on a 2-core CPU an update of the small model took 0.36 ms
    instead of 1.6 ms, of the base model 2.9 instead of 8.3 ms."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def moving_average(model, decay: float):
    """train.ema: an exponential moving average of the weights (and buffers) after every step, as TRM keeps
    (torch.optim.swa_utils); None for decay 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train(model, corpus: Corpus, cfg, tracker, device: torch.device, run_dir: str, dist_info=None,
          resume_state: dict | None = None) -> dict:
    """Runs (or resumes) cfg.train.steps optimisation steps; returns the train section of results.json.
    ``resume_state``: the folder's checkpoint, already read and checked (runner/checkpoint.plan); without it the
    checkpoint is read here (the ranks of a torchrun other than 0). Under torchrun (``dist_info``) each rank trains
    on its shard of every global batch; rank 0 writes."""
    from . import accel, distributed

    dist_info = dist_info or distributed.DistInfo()
    wrapped = distributed.wrap(model, dist_info, device, cfg.parallel)
    sharded = distributed.is_sharded(model)  # FSDP: every rank takes part in forwards and in gathering state
    step_fn = accel.for_training(wrapped, cfg.compile)
    tc = cfg.train
    seq_len = cfg.seq_len
    gen = torch.Generator().manual_seed(cfg.seed)
    vx, vy = corpus.val_windows(seq_len, tc.eval_batches * tc.batch_size * seq_len)
    opt = make_optimizer(model, tc)
    ema = moving_average(model, tc.ema)
    ckpt = checkpoint_path(run_dir)
    tokens_per_step = tc.batch_size * seq_len
    flops_per_token = model.train_flops_per_token(seq_len)  # the curve's compute axis (metrics.jsonl "flops")
    start, recent, train_time, resumed_from = 0, [], 0.0, None
    state = resume_state
    if state is None and os.path.exists(ckpt):
        state = load_checkpoint(ckpt, map_location="cpu")  # rank 0 checked its identity (checkpoint.plan)
    if state is not None:
        distributed.load_full_state(model, state["model"], opt, state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
            ema.n_averaged.fill_(int(state["step"]))
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        start, recent, train_time = state["step"], state["recent"], state["train_time"]
        resumed_from = start
        tracker.console.print(f"resuming from {ckpt} at step {start}")
    state = resume_state = None  # the model and optimizer hold it now
    tracker.trim_metrics(start)  # one curve: rows of an earlier attempt after this step go
    saved = {"step": start if resumed_from is not None else None}
    batches = corpus.batches(tc.batch_size, seq_len, gen)  # draws from gen only, so the saved state resumes it
    objective = objectives.get(model.objective)

    def checkpoint(step):
        """Rank 0 writes; under FSDP every rank first helps gather the full tensors."""
        if not (dist_info.is_main or sharded):
            return
        model_sd, optim_sd = distributed.full_state(model, opt)
        if dist_info.is_main:
            save_checkpoint(ckpt, {"identity": identity(cfg), "model": model_sd, "optimizer": optim_sd,
                                   "ema": None if ema is None else ema.module.state_dict(),
                                   "step": step, "recent": recent, "train_time": train_time,
                                   "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state()})
        saved["step"] = step

    model.train()
    t_start = time.perf_counter()
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn())
    with stops.deferred(), Progress(*columns, console=tracker.console, transient=False) as bar:
        task = bar.add_task("train", total=tc.steps, completed=start, loss="-", tps="-")
        mark = (start, train_time)  # (steps, training seconds) at the previous log row
        supervised = []  # recursion=trm: the supervision steps each batch since the previous log row ran
        for step in range(start, tc.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = objective.prepare(*next(batches), gen, vocab_size=model.vocab_size,
                                     settings=model.objective_settings)  # the global batch; this rank's rows of it
            x, y = distributed.shard(x, dist_info).to(device), distributed.shard(y, dist_info).to(device)
            with accel.autocast(cfg.precision, device):
                loss, lm = step_fn(x, targets=y)
            # one collective per step: the global losses, and whether any rank was asked to stop
            loss_val, lm_val, stop_any = distributed.mean_over_ranks(
                [loss.item(), lm.item(), float(bool(stops.pending()))], dist_info)
            if not math.isfinite(loss_val):
                kept = (f"the checkpoint of step {saved['step']} is kept ({ckpt}), so a rerun would meet the same "
                        f"step again" if saved["step"] is not None else "no checkpoint was written")
                raise NonFiniteLoss(
                    f"the training loss became {loss_val} at step {step + 1} of {tc.steps}; {kept}. Lower train.lr "
                    f"(now {tc.lr}), keep train.grad_clip on (now {tc.grad_clip}) or lengthen train.warmup_steps "
                    f"(now {tc.warmup_steps}), in a new run folder (hydra.run.dir=...)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            train_time += time.perf_counter() - t0
            recent = (recent + [lm_val])[-10:]
            if getattr(model, "recursion", None) is not None:  # deep supervision: the steps this batch ran
                supervised.append(model.recursion.steps_run)
            done = step + 1
            # tokens/s since the previous log row: what the machine does now (a first compiled step, an evaluation
            # or a slowdown shows where it happens); results.json keeps the average over the whole run
            tps = (done - mark[0]) * tokens_per_step / max(train_time - mark[1], 1e-9)
            bar.update(task, advance=1, loss=f"{lm_val:.3f}", tps=f"{tps:,.0f}")
            row = None
            base = {"step": done, "loss": lm_val, "lr": lr, "tokens": done * tokens_per_step, "tokens_per_s": tps,
                    "flops": done * tokens_per_step * flops_per_token, "train_s": train_time}
            if tc.log_every and (done % tc.log_every == 0 or done == tc.steps):
                row = {**base, "grad_norm": None if gnorm is None else float(gnorm)}
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                row = row or base
                if dist_info.is_main or sharded:
                    rng = torch.get_rng_state()
                    with accel.autocast(cfg.precision, device):
                        row["val_loss"] = mean_loss(model, vx.to(device), vy.to(device), tc.batch_size)
                    torch.set_rng_state(rng)
                    model.train()
            if row is not None:
                if supervised:
                    row["supervision_steps"] = sum(supervised) / len(supervised)  # mean since the previous row
                    supervised = []
                tracker.log(row)
                mark = (done, train_time)
            if stop_any > 0:
                checkpoint(done)
                signame = stops.take() or "SIGTERM"  # under torchrun another rank may have been the one asked
                raise stops.Interrupted(signame, f"stopped at step {done} of {tc.steps}; checkpoint saved to "
                                                 f"{ckpt}: rerun the same command to continue")
            if tc.ckpt_every and done % tc.ckpt_every == 0 and done < tc.steps:
                checkpoint(done)
        if start < tc.steps and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise NonFiniteLoss(f"the weights became non-finite in the last steps (the loss was still finite at step "
                                f"{tc.steps}); nothing was saved after step {saved['step']}. Lower train.lr (now "
                                f"{tc.lr}) or keep train.grad_clip on (now {tc.grad_clip}), in a new run folder")
        if tc.steps and start < tc.steps:
            checkpoint(tc.steps)  # inside: a stop asked for during the last step waits for this checkpoint
    if ema is not None:  # the stages after training measure the average (runner/checkpoint.weights)
        model.load_state_dict(ema.module.state_dict())
        tracker.console.print(f"train: the stages after training measure the moving average of the weights "
                              f"(train.ema={tc.ema})")
    return {"steps": tc.steps, "tokens": tc.steps * tokens_per_step,
            "tokens_per_s": tc.steps * tokens_per_step / max(train_time, 1e-9),
            "final_loss": sum(recent) / len(recent) if recent else None,
            "wall_s": time.perf_counter() - t_start, "resumed_from_step": resumed_from,
            "parallel": cfg.parallel if dist_info.enabled else None, "sharded": sharded, "precision": cfg.precision,
            "checkpoint": ckpt if tc.steps else None}
