"""Recursive reasoning with a tiny network: TRM ("Less is More: Recursive Reasoning with Tiny Networks", arXiv
2510.04871), ``recursion=trm``: the model's block stack is one small network run many times instead of a deep one.

With the input embedding x, the answer y and the latent z (each (B, T, d_model)), one *cycle* is ``latent_steps``
(n) latent updates z <- net(x + y + z) then one answer update y <- net(y + z); one *supervision step* runs
``cycles`` (T) cycles, all but the last without gradient, and reads the answer logits head(y) and a halting logit
from y. Deep supervision runs up to ``supervision_steps`` (N) such steps, carrying (y, z) detached from one to the
next, each with its own loss: the cross-entropy of the answers plus the binary cross-entropy of the halting logit
against "this example's answer is entirely right". With ``halting``, an example stops at its first step whose
halting logit is > 0 (TRM's simplified ACT) and a batch stops when every example has (on every rank, under
torchrun). Inference runs all N steps (as TRM evaluates) and the evaluation reports the accuracy after every step
and where the halting head would stop. The stack's linear layers start from TRM's initialisation
(:func:`lecun_init`), not the runner's.

Where this departs from the paper, on purpose:

* one optimizer step per batch, on the mean of the supervision steps' losses (TRM steps the optimizer after every
  supervision step and refills halted examples with new puzzles), so that the training loop, gradient clipping,
  resume and torchrun stay the runner's own; memory grows with the steps run (each keeps one cycle's graph);
* the runner's blocks are pre-norm, so each update's output is RMS-normalised without a gain (TRM's post-norm
  blocks keep the states bounded the same way), and so is the input embedding (TRM scales it by sqrt(d_model));
* the halting logit reads the mean of y over positions (TRM reads a puzzle-embedding position), from a linear head
  initialised to weight 0 and bias -5 as TRM's; no exploration of the halting step.

TRM's moving average of the weights is the runner's ``train.ema`` (e.g. 0.999), for any model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .common import answer_scores, whole
from .objectives.next_token import IGNORE

NAMES = ("none", "trm")


@dataclass
class TRMSettings:
    latent_steps: int = 6  # n: latent updates per cycle
    cycles: int = 3  # T: cycles per supervision step, all but the last without gradient
    supervision_steps: int = 16  # N: deep-supervision steps at the most
    halting: bool = True  # training: an example stops at its first step whose halting logit is > 0

    @property
    def passes_per_step(self) -> int:
        """Runs of the network in one supervision step."""
        return self.cycles * (self.latent_steps + 1)


def problems(spec: dict, objective_causal: bool) -> list[str]:
    """The problems of the ``model.recursion`` section (conf/recursion/<name>.yaml)."""
    spec = dict(spec or {})
    name = spec.pop("name", "none")
    if name not in NAMES:
        return [f"model.recursion.name={name!r} is not a recursion scheme; allowed: {list(NAMES)} (recursion=trm)"]
    if name == "none":
        return [f"model.recursion.{k} is a setting of recursion=trm, and the recursion is none" for k in spec]
    known = {f.name: f.default for f in fields(TRMSettings)}
    out = [f"model.recursion.{k} is not a setting of recursion=trm; its settings: {sorted(known)}"
           for k in spec if k not in known]
    for key, hi in (("latent_steps", 64), ("cycles", 64), ("supervision_steps", 256)):
        whole(out, f"model.recursion.{key}", spec.get(key, known[key]), 1, hi, known[key])
    if not isinstance(spec.get("halting", True), bool):
        out.append(f"model.recursion.halting={spec['halting']!r} is not a switch; use true or false")
    if objective_causal:
        out.append("recursion=trm answers a whole puzzle at once: use objective=fill with a task of answers "
                   "(data=sudoku, or mqar, state_tracking, ...)")
    return out


def settings(spec: dict | None) -> TRMSettings | None:
    """The settings of a ``model.recursion`` section, or None without recursion."""
    spec = dict(spec or {})
    if spec.pop("name", "none") == "none":
        return None
    return TRMSettings(**spec)


def lecun_init(blocks: nn.Module) -> None:
    """TRM's initialisation of the network it recurses: every linear layer from a truncated normal of std
    1/sqrt(fan_in), so that each update moves the normalised state by about its own size (the runner's GPT-2
    initialisation, std 0.02 and smaller for the residual outputs, leaves a state of RMS 1 all but unchanged by each
    run of the stack: the recursive model then stayed at chance where this one learns)."""
    for mod in blocks.modules():
        if isinstance(mod, nn.Linear):
            std = 1.0 / math.sqrt(mod.in_features)
            nn.init.trunc_normal_(mod.weight, std=std, a=-2 * std, b=2 * std)


class Recursion(nn.Module):
    """What TRM adds to the model: the initial answer and latent (fixed draws, saved with the weights) and the
    halting head."""

    def __init__(self, d_model: int, s: TRMSettings):
        super().__init__()
        self.settings = s
        self.register_buffer("y_init", nn.init.trunc_normal_(torch.empty(d_model), std=1.0, a=-2.0, b=2.0))
        self.register_buffer("z_init", nn.init.trunc_normal_(torch.empty(d_model), std=1.0, a=-2.0, b=2.0))
        self.halt = nn.Linear(d_model, 1)
        nn.init.zeros_(self.halt.weight)
        nn.init.constant_(self.halt.bias, -5.0)
        self.steps_run = 0  # the supervision steps the last call of loss() ran (training logs them)

    def describe(self) -> str:
        s = self.settings
        return (f"recursion trm: {s.supervision_steps} supervision steps x {s.cycles} cycles x ({s.latent_steps} "
                f"latent + 1 answer update) = up to {s.supervision_steps * s.passes_per_step} runs of the stack"
                + (", halting" if s.halting else ""))


def _net(model, h: torch.Tensor) -> torch.Tensor:
    for block in model.blocks:
        h, _ = block(h, None, need_state=False)
    return F.rms_norm(h, (h.shape[-1],), eps=model.norm.eps)


def _cycle(model, x, y, z):
    for _ in range(model.recursion.settings.latent_steps):
        z = _net(model, x + y + z)
    return _net(model, y + z), z


def _supervision_step(model, x, y, z):
    """T cycles, the first T - 1 without gradient: (y, z, answer logits, halting logit (B,))."""
    with torch.no_grad():
        for _ in range(model.recursion.settings.cycles - 1):
            y, z = _cycle(model, x, y, z)
    y, z = _cycle(model, x, y, z)
    logits = model.head(model.norm(y))
    return y, z, logits, _at_least_fp32(model.recursion.halt(y.mean(1)).squeeze(-1))


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))  # bf16 autocast: the losses in fp32; fp64 stays


def steps(model, idx: torch.Tensor):
    """Every supervision step's (answer logits, halting logit), for inference: all N steps, each carrying (y, z)
    detached from the one before."""
    x = F.rms_norm(model.embed(idx), (model.d_model,), eps=model.norm.eps)
    y = model.recursion.y_init.to(x.dtype).expand_as(x)
    z = model.recursion.z_init.to(x.dtype).expand_as(x)
    for _ in range(model.recursion.settings.supervision_steps):
        y, z, logits, q = _supervision_step(model, x, y, z)
        y, z = y.detach(), z.detach()
        yield logits, q


def answer(model, idx: torch.Tensor) -> torch.Tensor:
    """The answer logits after the last supervision step (what the evaluation scores)."""
    for logits, _ in steps(model, idx):
        pass
    return logits


def loss(model, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep supervision (see the module's docstring): (the mean over the steps run of each step's answer
    cross-entropy + halting BCE, over the examples still running; the cross-entropy in nats per answer of every
    example's answer where it stopped)."""
    s = model.recursion.settings
    scored = targets != IGNORE
    n_answers = scored.sum(1)
    active = torch.ones(idx.shape[0], dtype=torch.bool, device=idx.device)
    final_nll = None
    total, run = 0.0, 0
    for i, (logits, q) in enumerate(steps(model, idx)):
        nll = F.cross_entropy(_at_least_fp32(logits).transpose(1, 2), targets, ignore_index=IGNORE,
                              reduction="none").sum(1)
        with torch.no_grad():
            right = ((logits.argmax(-1) == targets) | ~scored).all(1)
        halting = F.binary_cross_entropy_with_logits(q, right.to(q.dtype), reduction="none")
        w = active.to(nll.dtype)
        total = total + ((nll / n_answers.clamp(min=1) + halting) * w).sum() / w.sum()
        run += 1
        stop = active & ((q.detach() > 0) if s.halting else torch.zeros_like(active))
        if i == s.supervision_steps - 1:
            stop = active
        final_nll = torch.where(stop, nll.detach(), nll.detach() if final_nll is None else final_nll)
        active = active & ~stop
        if not _anyone_running(active):
            break
    model.recursion.steps_run = run
    return total / run, final_nll.sum() / n_answers.sum().clamp(min=1)


def _anyone_running(active: torch.Tensor) -> bool:
    """Whether any example still runs, here or (under torchrun) on any rank: every rank then runs the same number of
    steps, as FSDP's gathers of each block's parameters need."""
    running = active.any().to(torch.int32)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(running, op=torch.distributed.ReduceOp.MAX)
    return bool(running)


@torch.no_grad()
def by_supervision_step(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[dict, torch.Tensor]:
    """Answer and exact accuracy after each supervision step, and where the halting head would stop each example
    (its first step with a halting logit > 0, else the last), over all examples and by the step it stops at:
    ({"steps": [...], "halted": {...}}, which answers the last step has right, (N, T) bool on the CPU, as the
    model's own forward scores them), in one pass."""
    was_training = model.training
    model.eval()
    scored = y != IGNORE
    per_step, halted_at, halted_ok = [], [], []
    for lo in range(0, len(x), batch_size):
        xb, yb, sb = x[lo:lo + batch_size], y[lo:lo + batch_size], scored[lo:lo + batch_size]
        rows, first = [], torch.full((len(xb),), -1, dtype=torch.long, device=x.device)
        for i, (logits, q) in enumerate(steps(model, xb)):
            ok = (logits.argmax(-1) == yb) & sb
            rows.append(ok)
            first = torch.where((first < 0) & (q > 0), torch.full_like(first, i), first)
        first = torch.where(first < 0, torch.full_like(first, len(rows) - 1), first)
        per_step.append(torch.stack(rows))  # (steps, B, T)
        halted_at.append(first)
        halted_ok.append(per_step[-1][first, torch.arange(len(xb), device=x.device)])
    ok_all = torch.cat(per_step, 1)
    out = [{"step": i + 1, **answer_scores(ok_all[i], scored)} for i in range(ok_all.shape[0])]
    ok = torch.cat(halted_ok)
    at = torch.cat(halted_at) + 1
    model.train(was_training)
    return ({"steps": out, "halted": {"mean_steps": float(at.double().mean()), **answer_scores(ok, scored),
                                      "by_step": [{"step": int(i), "examples": int((at == i).sum()),
                                                   **answer_scores(ok[at == i], scored[at == i])}
                                                  for i in torch.unique(at).tolist()]}},
            ok_all[-1].cpu())
