"""``python -m runner.sample <run folder> --prompt TEXT``: what a trained run writes.

An autoregressive run (objective=next_token) continues the prompt token by token through its state / KV cache,
streaming to the console; a masked-diffusion run (objective=mdlm) writes a block of ``--max-new-tokens`` after the
prompt in ``--steps`` denoising steps (runner/generate.py, through runner/samples.write). The run's own tokenizer
is used (bytes, or the BPE tokenizer its results.json names), under the run's precision (bf16 autocast where it
trained so). Sampling: ``--temperature`` (0 = the most likely token), ``--top-k``, ``--top-p``; ``--seed`` makes it
repeatable.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .accel import autocast
from .checkpoint import NoTrainedRun, run_model, trained_run
from .codec import Codec, is_text
from .errors import ActionableError
from .generate import REMASKING
from .samples import write


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m runner.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the folder of a run that trained (its results.json and checkpoints/last.pt)")
    p.add_argument("--prompt", default="def ", help="the text to continue (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to write (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = the most likely token (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = all (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set with this mass (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="diffusion runs: denoising steps (default: one per token)")
    p.add_argument("--remasking", choices=REMASKING, default="ancestral", help="diffusion runs: the sampler")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    a = p.parse_args(argv)
    bad = [m for ok, m in ((a.max_new_tokens >= 1, f"--max-new-tokens={a.max_new_tokens} must be >= 1"),
                           (a.temperature >= 0, f"--temperature={a.temperature} must be >= 0"),
                           (a.top_k >= 0, f"--top-k={a.top_k} must be >= 0 (0 = all tokens)"),
                           (0 < a.top_p <= 1, f"--top-p={a.top_p} must be in (0, 1]"),
                           (a.steps is None or a.steps >= 1, f"--steps={a.steps} must be >= 1")) if not ok]
    if bad:
        p.error("; ".join(bad))
    return a


def main(argv=None) -> int:
    a = _args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device={a.device}, but this machine has no usable CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    try:
        res, ckpt = trained_run(a.run_dir)
        data = res.get("data") or {}
        if not is_text(data):
            raise NoTrainedRun(f"{a.run_dir} trained on a synthetic task (its tokens are {data.get('tokenizer')!r} "
                               f"ids, not text): nothing to sample; its evaluation is eval.tasks=[ppl,accuracy] "
                               f"(or [ppl,mqar])")
        codec = Codec(data)
        model = run_model(res, ckpt, data["vocab_size"], torch.device(a.device))
    except ActionableError as e:  # no results, no checkpoint, a damaged one, an unreadable tokenizer
        print(f"error: {e}", file=sys.stderr)
        return 2
    ids = codec.encode(a.prompt)
    problem = ("the prompt has tokens outside the run's vocabulary" if any(i >= model.vocab_size for i in ids) else
               "an autoregressive run needs a prompt of at least one token (--prompt)" if model.causal and not ids
               else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    precision = (res.get("config") or {}).get("precision", "fp32")  # as the run trained and was evaluated
    out = sys.stdout
    out.write(a.prompt)
    out.flush()
    with autocast(precision, torch.device(a.device)):
        write(model, codec, a.prompt, a.max_new_tokens, a.temperature, a.top_k, a.top_p,
              torch.Generator().manual_seed(a.seed), a.steps, a.remasking,
              on_text=lambda piece: (out.write(piece), out.flush()))
    out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
