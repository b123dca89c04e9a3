"""Train stage: AdamW with linear warm-up and cosine decay, gradient clipping, periodic validation, a rich
progress bar, the training curve in metrics.jsonl and a checkpoint in the run folder."""
from __future__ import annotations

import math
import os
import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .data import Corpus, eval_windows, random_batches
from .evaluate import mean_loss


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, decay parameters or gates' vectors)."""
    decay, no_decay = [], []
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def save_checkpoint(path: str, model, optimizer, step: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def train(model, corpus: Corpus, cfg, tracker, device: torch.device, run_dir: str) -> dict:
    """Runs cfg.train.steps optimisation steps; returns the train section of results.json."""
    tc = cfg.train
    seq_len = cfg.seq_len
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = random_batches(corpus.train, tc.batch_size, seq_len, gen)
    vx, vy = eval_windows(corpus.val, seq_len, tc.eval_batches * tc.batch_size * seq_len)
    opt = make_optimizer(model, tc)
    ckpt = os.path.join(run_dir, "checkpoints", "last.pt")
    tokens_per_step = tc.batch_size * seq_len
    recent: list[float] = []
    model.train()
    t_start = time.perf_counter()
    train_time = 0.0  # excludes periodic validation and checkpoints
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn())
    with Progress(*columns, console=tracker.console, transient=False) as bar:
        task = bar.add_task("train", total=tc.steps, loss="-", tps="-")
        for step in range(tc.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss, lm = model.loss(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss ({loss.item()}) at step {step}; "
                                         f"try a lower train.lr (now {tc.lr}) or train.grad_clip")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
            opt.step()
            lm_val = lm.item()
            train_time += time.perf_counter() - t0
            recent = (recent + [lm_val])[-10:]
            done = step + 1
            tps = done * tokens_per_step / max(train_time, 1e-9)
            bar.update(task, advance=1, loss=f"{lm_val:.3f}", tps=f"{tps:,.0f}")
            row = None
            if tc.log_every and (done % tc.log_every == 0 or done == tc.steps):
                row = {"step": done, "loss": lm_val, "lr": lr, "tokens": done * tokens_per_step, "tokens_per_s": tps,
                       "grad_norm": None if gnorm is None else float(gnorm)}
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                row = row or {"step": done, "loss": lm_val, "lr": lr, "tokens": done * tokens_per_step,
                              "tokens_per_s": tps}
                row["val_loss"] = mean_loss(model, vx.to(device), vy.to(device), tc.batch_size)
                model.train()
            if row is not None:
                tracker.log(row)
            if tc.ckpt_every and done % tc.ckpt_every == 0 and done < tc.steps:
                save_checkpoint(ckpt, model, opt, done)
    if tc.steps:
        save_checkpoint(ckpt, model, opt, tc.steps)
    return {"steps": tc.steps, "tokens": tc.steps * tokens_per_step,
            "tokens_per_s": tc.steps * tokens_per_step / max(train_time, 1e-9),
            "final_loss": sum(recent) / len(recent) if recent else None,
            "wall_s": time.perf_counter() - t_start, "checkpoint": ckpt if tc.steps else None}
