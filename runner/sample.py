"""``python -m runner.sample <run folder> --prompt TEXT``: what a trained run writes.

An autoregressive run (objective=next_token) continues the prompt token by token through its state / KV cache,
streaming to the console; a masked-diffusion run (objective=mdlm) writes a block of ``--max-new-tokens`` after the
prompt in ``--steps`` denoising steps (runner/generate.py). The run's own tokenizer is used (bytes, or the BPE
tokenizer its results.json names). Sampling: ``--temperature`` (0 = the most likely token), ``--top-k``,
``--top-p``; ``--seed`` makes it repeatable.
"""
from __future__ import annotations

import argparse
import codecs
import sys

import torch

from .checkpoint import NoTrainedRun, run_model, trained_run
from .errors import ActionableError
from .generate import REMASKING, autoregressive, diffusion


class Codec:
    """Text <-> token ids in a run's tokenization; ``stream`` turns ids into text as they come."""

    def __init__(self, data: dict):
        self.bpe = None
        if data.get("tokenizer", "bytes") == "bpe":
            import tokenizers

            path = data.get("tokenizer_path")
            try:
                self.bpe = tokenizers.Tokenizer.from_file(path)
            except Exception as e:  # noqa: BLE001 - any failure to read it is the same advice
                raise NoTrainedRun(f"the run's BPE tokenizer {path} cannot be read ({type(e).__name__}); it lives in "
                                   f"the data cache (data.cache_dir): rerun the data stage on this machine") from None
        self.ids: list[int] = []
        self.shown = ""
        self.bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text).ids if self.bpe is not None else list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return self.bpe.decode(ids) if self.bpe is not None else bytes(ids).decode("utf-8", errors="replace")

    def stream(self, token: int) -> str:
        """The text the next token adds (bytes may wait for the rest of a UTF-8 character)."""
        if self.bpe is None:
            return self.bytes.decode(bytes([token]))
        self.ids.append(token)
        text = self.bpe.decode(self.ids)
        new, self.shown = text[len(self.shown):], text
        return new


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
        if data.get("tokenizer", "bytes") not in ("bytes", "bpe"):
            raise NoTrainedRun(f"{a.run_dir} trained on a synthetic task (its tokens are {data.get('tokenizer')!r} "
                               f"ids, not text): nothing to sample; its evaluation is eval.tasks=[ppl,accuracy] "
                               f"(or [ppl,mqar])")
        codec = Codec(data)
        model = run_model(res, ckpt, data["vocab_size"], torch.device(a.device))
    except ActionableError as e:  # no results, no checkpoint, a damaged one, an unreadable tokenizer
        print(f"error: {e}", file=sys.stderr)
        return 2
    ids = codec.encode(a.prompt)
    if any(i >= model.vocab_size for i in ids):
        print("error: the prompt has tokens outside the run's vocabulary", file=sys.stderr)
        return 2
    prompt = torch.tensor([ids], dtype=torch.long, device=a.device)
    gen = torch.Generator().manual_seed(a.seed)
    out = sys.stdout
    out.write(a.prompt)
    if model.causal:
        if not ids:
            print("\nerror: an autoregressive run needs a prompt of at least one token (--prompt)", file=sys.stderr)
            return 2
        autoregressive(model, prompt, a.max_new_tokens, a.temperature, a.top_k, a.top_p, gen,
                       on_token=lambda t: (out.write(codec.stream(int(t[0]))), out.flush()))
    else:
        block = diffusion(model, prompt, a.max_new_tokens, a.steps or a.max_new_tokens, a.remasking, a.temperature,
                          a.top_k, a.top_p, gen)
        out.write(codec.decode(block[0].tolist()))
    out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
