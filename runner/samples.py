"""The sample stage (``stages=[..., sample]``, off by default): what the trained model writes after the fixed
prompts of ``sample.prompts``, with the run's own tokenizer, through its objective's generation (runner/generate.py:
autoregressive through the state / KV cache, or masked-diffusion steps). The texts go into results.json's
``sample`` section and ``samples.md`` of the run folder, and with ``logger=wandb`` into a W&B table; the same
``write`` serves ``python -m runner.sample``."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from .codec import Codec
from .common import atomic_write_text
from .generate import autoregressive, diffusion


def write(model, codec: Codec, prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
          generator: torch.Generator, steps: Optional[int] = None, remasking: str = "ancestral",
          on_text: Optional[Callable[[str], None]] = None) -> str:
    """The text the model writes after ``prompt`` (the prompt not included). An autoregressive model hands each
    piece to ``on_text`` as it is drawn (streaming); a diffusion model writes its block of ``max_new_tokens`` in
    ``steps`` denoising steps (default one per token) and hands it over whole."""
    ids = codec.encode(prompt)
    if any(i >= model.vocab_size for i in ids):
        raise ValueError("the prompt has tokens outside the run's vocabulary")
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    if model.causal:
        if not ids:
            raise ValueError("an autoregressive run needs a prompt of at least one token")
        pieces: list[str] = []

        def take(tok):
            pieces.append(codec.stream(int(tok[0])))
            if on_text is not None:
                on_text(pieces[-1])

        codec.reset_stream()
        autoregressive(model, x, max_new_tokens, temperature, top_k, top_p, generator, on_token=take)
        return "".join(pieces) + codec.flush_stream()
    block = diffusion(model, x, max_new_tokens, steps or max_new_tokens, remasking, temperature, top_k, top_p,
                      generator)
    text = codec.decode(block[0].tolist())
    if on_text is not None:
        on_text(text)
    return text


def run(model, data_info: dict, cfg, run_dir: Optional[str], progress=None, origin: str = "") -> dict:
    """The sample stage: one text per prompt of ``cfg.sample`` (seeded: the same weights write the same texts), into
    samples.md (headed by ``origin``: which attempt and weights wrote it); returns the results.json section.
    ``progress(done, total)`` is told after each prompt."""
    s = cfg.sample
    codec = Codec(data_info)
    gen = torch.Generator().manual_seed(int(s.seed))
    rows = []
    for i, prompt in enumerate(s.prompts):
        text = write(model, codec, prompt, s.max_new_tokens, s.temperature, s.top_k, s.top_p, gen, s.steps,
                     s.remasking)
        rows.append({"prompt": prompt, "text": text})
        if progress is not None:
            progress(i + 1, len(s.prompts))
    settings = {k: getattr(s, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}
    if not model.causal:
        settings.update(steps=s.steps or s.max_new_tokens, remasking=s.remasking)
    if run_dir is not None:
        atomic_write_text(os.path.join(run_dir, "samples.md"), markdown(rows, settings, origin))
    return {"settings": settings, "samples": rows}


def markdown(rows: list[dict], settings: dict, origin: str = "") -> str:
    """samples.md: each prompt and what followed it, in a fenced block (the text is code more often than not)."""
    head = ", ".join(f"{k} {v}" for k, v in settings.items())
    parts = [f"# Samples\n\n{origin + ': ' if origin else ''}{head}\n"]
    for i, r in enumerate(rows, 1):
        fence = "````" if "```" in r["prompt"] + r["text"] else "```"
        parts.append(f"## {i}. prompt {r['prompt']!r}\n\n{fence}\n{r['prompt']}{r['text']}\n{fence}\n")
    return "\n".join(parts)


def describe(section: dict, width: int = 100) -> list[str]:
    """Console lines: each sample on one line, cut to ``width`` characters."""
    lines = []
    for r in section.get("samples", []):
        one = "".join(c if c.isprintable() else repr(c)[1:-1] for c in r["prompt"] + r["text"])  # one line
        lines.append(f"  {one[:width]}" + ("..." if len(one) > width else ""))
    return lines
