"""lm-evaluation-harness (EleutherAI's ``lm-eval``, the ``lm_eval`` extra) for this runner's models: the adapter
:class:`RunnerLM` implements the harness's ``LM`` interface over a trained model and its own tokenizer, so that the
tasks papers report (lambada_openai, hellaswag, arc_easy, ...) score it as they score any model.

* ``loglikelihood(context, continuation)``: the sum of log p(continuation tokens | everything before), and whether
  each was the most likely token, from one forward pass over context + continuation (the context cut on the left
  to the model's window, ``max_length``, the training length by default). Context and continuation are tokenized
  apart, so their tokens are those the model scores; an empty context is the document separator the training
  text joins its files with (``"\\n\\n"``), this runner's models having no BOS token.
* ``loglikelihood_rolling(text)``: the whole text scored token by token after the separator, in the harness's own
  rolling windows (``lm_eval.utils.get_rolling_token_windows``: each token predicted once, the last window with a
  full context).
* ``generate_until(context, {until, max_gen_toks, ...})``: greedy decoding through the state / KV cache
  (runner/generate.autoregressive) until a stop string or ``max_gen_toks`` tokens, cut before the stop string.

Requests are scored in batches of ``batch_size``, longest first, padded on the right (the models are causal: a
position never sees the padding after it). Only autoregressive models (objective=next_token) can be scored so.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from .accel import autocast
from .codec import Codec
from .generate import autoregressive

SEPARATOR = "\n\n"  # what the text sources join files with (runner/corpus.py): an empty context
DEFAULT_MAX_GEN_TOKS = 256


class RunnerLM(LM):
    """The harness's LM over ``model`` (a causal HybridLM) and ``codec`` (its run's tokenization)."""

    def __init__(self, model, codec: Codec, max_length: int, batch_size: int = 8, precision: str = "fp32"):
        super().__init__()
        if not model.causal:
            raise ValueError("lm-eval scores log-likelihoods of an autoregressive model; this one is not causal "
                             "(objective=mdlm gives bounds, the NELBO; objective=fill answers puzzles)")
        self.model, self.codec = model.eval(), codec
        self.max_length, self.batch_size, self.precision = int(max_length), int(batch_size), precision
        self._device = next(model.parameters()).device
        self.prefix = codec.encode(SEPARATOR)

    # ----------------------------------------------------------------------------------------------- scoring

    def _ids(self, text: str) -> list[int]:
        return self.codec.encode(text)

    @torch.no_grad()
    def score(self, windows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """For each (tokens, k): the summed log-probability of the last k tokens given the ones before them, and
        whether each was the most likely one. ``tokens`` holds at most ``max_length + 1`` ids."""
        out: list[Optional[tuple[float, bool]]] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(windows[batch[0]][0]) - 1
            x = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens = windows[i][0][:-1]
                x[row, :len(tokens)] = torch.tensor(tokens)
            with autocast(self.precision, self._device):
                logits = self.model(x.to(self._device))[0]
            logp = F.log_softmax(logits[..., :self.model.vocab_size].float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                tokens, k = windows[i]
                n = len(tokens) - 1
                target = torch.tensor(tokens[n - k + 1:])
                lp = logp[row, n - k:n]
                out[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return out  # type: ignore[return-value]

    def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens is longer than the model's window "
                             f"({self.max_length} tokens, max_length)")
        return (context + continuation)[-(self.max_length + 1):], len(continuation)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        windows, empty = [], []
        for i, req in enumerate(requests):
            context, continuation = req.args[0], req.args[1]
            cont = self._ids(continuation)
            if not cont:
                empty.append(i)
                cont = self.prefix[-1:]  # placeholder, its score replaced below
            windows.append(self._window(self._ids(context) if context else self.prefix, cont))
        scores = self.score(windows)
        for i in empty:
            scores[i] = (0.0, True)  # nothing to predict
        for req, s in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood", req.args, s)
        return scores

    def loglikelihood_rolling(self, requests) -> list[float]:
        windows, owner = [], []
        for i, req in enumerate(requests):
            ids = self._ids(req.args[0])
            pieces = get_rolling_token_windows(ids, self.prefix[-1], self.max_length, context_len=1)
            for j, (ctx, pred) in enumerate(map(make_disjoint_window, pieces)):
                head = self.prefix[:-1] + ctx if j == 0 else ctx  # the first window: after the whole separator
                windows.append(((head + pred)[-(self.max_length + 1):], len(pred)))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, self.score(windows)):
            totals[i] += lp
        for req, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, t)
        return totals

    # -------------------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            ids = (self._ids(context) if context else self.prefix)[-self.max_length:]
            text: list[str] = []
            self.codec.reset_stream()

            def stop(tok) -> bool:
                text.append(self.codec.stream(int(tok[0])))
                return any(u in "".join(text) for u in until)

            with autocast(self.precision, self._device):
                autoregressive(self.model, torch.tensor([ids], device=self._device), budget, temperature=0,
                               stop=stop)
            written = "".join(text)
            cut = min([written.index(u) for u in until if u in written], default=len(written))
            out.append(written[:cut])
            self.cache_hook.add_partial("generate_until", req.args, out[-1])
        return out


# ------------------------------------------------------------------------------------------------ running tasks

_managers: dict = {}


def task_manager(include_path: Optional[str] = None, builtin: bool = True):
    """The harness's task index (lm-eval's own tasks when ``builtin``, and the YAML tasks under ``include_path``),
    built once per process: indexing lm-eval's thousands of tasks takes tens of seconds."""
    from lm_eval.tasks import TaskManager

    key = (include_path, builtin)
    if key not in _managers:
        _managers[key] = TaskManager(include_path=include_path, include_defaults=builtin)
    return _managers[key]


def unknown_tasks(tasks: list[str], include_path: Optional[str] = None, builtin: bool = True) -> list[str]:
    """The names among ``tasks`` that neither lm-eval nor ``include_path`` defines."""
    known = set(task_manager(include_path, builtin).all_tasks)
    return [t for t in tasks if t not in known]


def run_tasks(lm: RunnerLM, tasks: list[str], num_fewshot: Optional[int] = None, limit: Optional[float] = None,
              include_path: Optional[str] = None, builtin: bool = True, bootstrap_iters: int = 1000,
              seed: int = 0, log_samples: bool = False) -> dict:
    """lm-eval's ``simple_evaluate`` of ``tasks`` on ``lm``; returns {"tasks": {name: {metric: value,
    metric_stderr: value, "samples": n}}, "settings": ..., "lm_eval": version} (and lm-eval's own per-sample
    records under "samples" with ``log_samples``)."""
    import datasets
    import lm_eval
    from lm_eval.evaluator import simple_evaluate

    datasets.disable_progress_bars()  # lm-eval's own bar says how far the requests are
    res = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                          task_manager=task_manager(include_path, builtin), bootstrap_iters=bootstrap_iters,
                          log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                          fewshot_random_seed=seed)
    out: dict = {"tasks": {}, "lm_eval": getattr(lm_eval, "__version__", "?"),
                 "settings": {"num_fewshot": num_fewshot, "limit": limit, "max_length": lm.max_length,
                              "bootstrap_iters": bootstrap_iters, "seed": seed}}
    for name, metrics in res["results"].items():
        row = {}
        for key, value in metrics.items():
            metric, _, flt = key.partition(",")
            if key in ("alias", "sample_len") or not isinstance(value, (int, float)):
                continue  # sample_len: the documents scored, kept as "samples"
            row[metric if flt in ("", "none") else f"{metric}[{flt}]"] = float(value)
        n = (res.get("n-samples") or {}).get(name) or {}
        if "effective" in n:
            row["samples"] = int(n["effective"])
        out["tasks"][name] = row
    if log_samples:
        out["samples"] = res.get("samples")
    return out
