"""Masked diffusion (absorbing state): MDLM (Sahoo et al., NeurIPS 2024, arXiv 2406.07524) and LLaDA (Nie et al.,
arXiv 2502.09992). A [MASK] token is added after the data's vocabulary. For each training sequence a time
t ~ U(eps, 1) is drawn and every token is replaced by [MASK] with probability t (the linear schedule
alpha_t = 1 - t, the one both papers train with; no other schedule is offered). The denoiser sees the whole
sequence (non-causal mixers) and predicts the clean token at every masked position; the loss is the
continuous-time negative ELBO

    NELBO = E_t [ (1 / t) * sum_{i masked} -log p(x_i | x_t) ]

divided by the sequence length, so it is in nats per token like the autoregressive loss and, in expectation, an
upper bound on the data's negative log-likelihood (the validation scores say so: ``BOUND``). The model is not told
t (both papers work without time conditioning). The logit of [MASK] itself is never a prediction (MDLM's "zero
masking probabilities"): the cross-entropy runs over the data's tokens only.

``sampler=low_discrepancy`` (default) draws the batch's times stratified, t_b = eps + (1 - eps) * ((u + b / B)
mod 1) with one u per batch, MDLM's variance reduction; ``sampler=uniform`` draws them independently.

Targets carry the time: (B, T + 1) int64, the clean token at masked positions and -100 elsewhere, then t in units
of 2**-24 in the last column, so the loss, the scores and the data-parallel split see exactly the t the mask was
drawn with. Validation: ``eval_samples`` masks per window from a generator seeded by ``eval_seed`` (the same
scores on any device and batch size), times stratified over all windows and samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CAUSAL = False
BOUND = True
EXTRA_TOKENS = 1  # [MASK] = the data's vocabulary size
NEEDS = "text"  # running text to reconstruct (a data source that PROVIDES it), not a task's query/answer pairs
IGNORE = -100
T_UNITS = 1 << 24  # t is stored in the targets' last column as round(t * T_UNITS)
SAMPLERS = ("low_discrepancy", "uniform")
DEFAULTS = {"sampler": "low_discrepancy", "eps": 1e-3, "eval_samples": 4, "eval_seed": 0}


def settings_of(settings) -> dict:
    return {**DEFAULTS, **dict(settings or {})}


def objective_problems(c) -> list[str]:
    """The ``objective`` section's own settings (conf/objective/mdlm.yaml)."""
    s = dict(c.objective)
    s.pop("name", None)
    problems = [f"objective.{k} is not a setting of objective=mdlm; its settings are {sorted(DEFAULTS)}"
                for k in sorted(set(s) - set(DEFAULTS))]
    s = settings_of(s)
    if s["sampler"] not in SAMPLERS:
        problems.append(f"objective.sampler={s['sampler']!r} is not known; allowed: {list(SAMPLERS)}")
    eps = s["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 0.5:
        problems.append(f"objective.eps={eps!r} must be in (0, 0.5] (the smallest masking rate), e.g. 0.001")
    for key, low, high in (("eval_samples", 1, 1000), ("eval_seed", 0, 2**63 - 1)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            problems.append(f"objective.{key}={v!r} must be a whole number in [{low}, {high}]"
                            + (", e.g. 4" if key == "eval_samples" else ""))
    return problems


def _quantised(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * T_UNITS).clamp_(1, T_UNITS).long()


def draw_times(n: int, generator, sampler: str, eps: float) -> torch.Tensor:
    """n masking rates in [eps, 1] (as integers in units of 1 / T_UNITS), stratified or independent."""
    if sampler == "low_discrepancy":
        u = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n) % 1
    else:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
    return _quantised(eps + (1 - eps) * u)


def mask(y: torch.Tensor, q: torch.Tensor, mask_id: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean sequences y (B, T) masked at rates q / T_UNITS (B,): (inputs, targets (B, T + 1))."""
    t = (q.double() / T_UNITS).to(y.device)
    u = torch.rand(y.shape, generator=generator, dtype=torch.float64).to(y.device)
    masked = u < t[:, None]
    inputs = torch.where(masked, torch.full_like(y, mask_id), y)
    targets = torch.where(masked, y, torch.full_like(y, IGNORE))
    return inputs, torch.cat([targets, q.to(y.device)[:, None]], 1)


def prepare(x: torch.Tensor, y: torch.Tensor, generator=None, *, vocab_size: int, settings=None):
    """A training batch: the sequences y (the text the autoregressive model predicts, so both are scored on the
    same bytes) masked at one drawn rate each."""
    s = settings_of(settings)
    return mask(y, draw_times(y.shape[0], generator, s["sampler"], s["eps"]), vocab_size, generator)


def eval_views(x: torch.Tensor, y: torch.Tensor, *, vocab_size: int, settings=None):
    """The validation windows masked ``eval_samples`` times, deterministically (``eval_seed``); the mean of their
    scores is the NELBO estimate of each position."""
    s = settings_of(settings)
    g = torch.Generator().manual_seed(int(s["eval_seed"]))
    n, k = y.shape[0], int(s["eval_samples"])
    q = draw_times(n * k, g, "low_discrepancy", s["eps"]).view(k, n)
    for j in range(k):
        yield mask(y, q[j], vocab_size, g)


def token_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1 / t) * cross-entropy at every masked position (nats; over the data's tokens, not [MASK]), 0 elsewhere:
    summed over a sequence, the NELBO estimate of that sequence."""
    y, q = targets[:, :-1], targets[:, -1]
    real = logits[..., :logits.shape[-1] - EXTRA_TOKENS].float()
    ce = F.cross_entropy(real.reshape(-1, real.shape[-1]), y.reshape(-1), reduction="none",
                         ignore_index=IGNORE).reshape(y.shape)
    return ce * (T_UNITS / q.to(ce.dtype))[:, None]


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The NELBO per token: the weighted cross-entropy summed over the batch, divided by its tokens."""
    return token_scores(logits, targets).sum() / (targets.shape[0] * (targets.shape[1] - 1))
