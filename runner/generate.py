"""Generation for both objectives: autoregressive decoding through the mixers' state / KV cache
(``HybridLM.decode_step``) and masked-diffusion sampling of a block of L tokens in S denoising steps.

Diffusion (runner/objectives/mdlm.py): the block starts as L [MASK] tokens after the prompt; each step runs the
whole sequence through the non-causal model and reveals some masked positions with tokens drawn from its
predictions (revealed tokens stay: the absorbing process never remasks a clean token). Which positions, from
t = 1 - k / S to s = 1 - (k + 1) / S:

* ``ancestral`` (MDLM, Sahoo et al. 2024): each masked position independently with probability (t - s) / t, the
  reverse process of the linear schedule; a step that reveals nothing reuses the last predictions (no forward);
* ``low_confidence`` (LLaDA, Nie et al. 2025): exactly the positions the schedule says, L(k + 1)/S - Lk/S of them
  (rounded down), those whose drawn token the model is most sure of;
* ``random``: the same counts, positions chosen at random (LLaDA's random remasking).

So with S = L the two last reveal exactly one token per step. Tokens are drawn with ``temperature`` (0 = the most
likely), ``top_k`` and ``top_p`` as in autoregressive sampling.
"""
from __future__ import annotations

from typing import Optional

import torch

REMASKING = ("ancestral", "low_confidence", "random")


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Tokens (...) drawn from logits (..., V): temperature 0 takes the most likely; top_k > 0 keeps the k most
    likely; top_p < 1 keeps the smallest set whose probability reaches top_p (nucleus sampling)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep a token while the mass before it is below top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1).reshape(-1, logits.shape[-1])
    u = torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device)
    return u.view(logits.shape[:-1])


@torch.no_grad()
def autoregressive(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, generator: Optional[torch.Generator] = None, on_token=None,
                   stop=None) -> torch.Tensor:
    """prompt (B, P), P >= 1 -> the max_new_tokens tokens after it (B, N), one decode step per token through the
    state / KV cache; ``on_token(tokens (B,))`` is called as each is drawn (streaming), then ``stop(tokens)``: true
    ends the generation there (N < max_new_tokens)."""
    if not model.causal:
        raise ValueError("autoregressive generation needs a causal model; this one is a masked-diffusion model")
    if prompt.shape[1] < 1:
        raise ValueError("autoregressive generation needs a prompt of at least one token")
    model.eval()
    logits, state = model(prompt, need_state=True)
    out = []
    for _ in range(max_new_tokens):
        tok = sample_logits(logits[:, -1, :model.vocab_size], temperature, top_k, top_p, generator)
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if stop is not None and stop(tok):
            break
        if len(out) < max_new_tokens:
            logits, state = model.decode_step(tok[:, None], state)
    return torch.stack(out, 1) if out else prompt.new_zeros(prompt.shape[0], 0)


def reveal_counts(length: int, steps: int) -> list[int]:
    """Tokens revealed at each of the steps under the linear schedule: they add up to length."""
    return [length * (k + 1) // steps - length * k // steps for k in range(steps)]


@torch.no_grad()
def diffusion(model, prompt: torch.Tensor, length: int, steps: int, remasking: str = "low_confidence",
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              generator: Optional[torch.Generator] = None, trace: Optional[list] = None) -> torch.Tensor:
    """prompt (B, P), P >= 0 -> a block of ``length`` tokens after it (B, length) in ``steps`` denoising steps
    (module docstring); ``trace`` (a list) receives the number of positions each step revealed (B,)."""
    if model.causal:
        raise ValueError("diffusion sampling needs a masked-diffusion model (objective=mdlm); this one is causal")
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r} is not known; allowed: {list(REMASKING)}")
    if steps < 1 or length < 1:
        raise ValueError(f"length={length} and steps={steps} must be >= 1")
    model.eval()
    B, P, V = prompt.shape[0], prompt.shape[1], model.vocab_size
    mask_id = V  # runner/objectives/mdlm.py: [MASK] follows the data's vocabulary
    x = torch.cat([prompt, prompt.new_full((B, length), mask_id)], 1)
    counts = reveal_counts(length, steps)
    logits = None
    for k in range(steps):
        masked = x == mask_id
        masked[:, :P] = False
        if logits is None:
            logits = model(x)[0][..., :V].float()
        pred = sample_logits(logits, temperature, top_k, top_p, generator)  # (B, P + L)
        if remasking == "ancestral":
            t, s = 1 - k / steps, 1 - (k + 1) / steps
            u = torch.rand(x.shape, generator=generator).to(x.device)
            reveal = masked & (u < (t - s) / t)
        else:
            if remasking == "low_confidence":
                score = logits.log_softmax(-1).gather(-1, pred[..., None])[..., 0]
            else:
                score = torch.rand(x.shape, generator=generator).to(x.device)
            score = score.masked_fill(~masked, float("-inf"))
            n = min(counts[k], int(masked.sum(1).min()))
            reveal = torch.zeros_like(masked)
            if n > 0:
                reveal.scatter_(1, score.topk(n, dim=1).indices, True)
        if trace is not None:
            trace.append(reveal.sum(1))
        if reveal.any():
            x = torch.where(reveal, pred, x)
            logits = None  # the sequence changed: the next step runs the model again
    return x[:, P:]
