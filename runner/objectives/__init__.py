"""Training objectives: ``objective=`` (conf/objective/) -> the module that defines it. One module per objective,
registered here by one line.

An objective module defines:

* ``CAUSAL``: True when the model must not see later tokens (then every mixer runs with its causal mask); an
  objective with False needs mixers that can run without it (``Mixer.bidirectional``, runner/mixers/base.py);
* ``BOUND``: True when its validation scores are an upper bound on the loss rather than the loss itself;
* ``EXTRA_TOKENS`` (optional, 0): tokens it adds after the data's vocabulary (the model has rows for them);
* ``prepare(x, y, generator, *, vocab_size, settings) -> (inputs, targets)``: what the model sees and what is
  scored, from the data's pairs (x, y) (for running text y is x shifted by one token; targets of -100 are not
  scored); ``generator`` is the data sampler's, so that a resumed run draws the same; ``settings``: the other keys
  of its ``objective`` section;
* optionally ``eval_views(x, y, *, vocab_size, settings)``: the (inputs, targets) pairs whose scores are averaged
  for validation (without it: (x, y) itself);
* ``loss(logits, targets) -> tensor``: the training loss (mean over the scored targets);
* ``token_scores(logits, targets) -> tensor``: the loss at every position (nats), 0 where not scored, for the
  validation scores (runner/scoring.py);
* optionally ``GENERATES`` (True): False for an objective with nothing to generate (the bench stage skips it);
* optionally ``NEEDS``: what the data source must provide (its ``PROVIDES``, runner/sources), e.g. "text";
* optionally ``objective_problems(c) -> list[str]``: the problems of its own settings (the other keys of the
  ``objective`` section, conf/objective/<name>.yaml).
"""
from __future__ import annotations

from ..common import lazy_registry

REGISTRY: dict[str, str] = {
    "next_token": "runner.objectives.next_token",
    "mdlm": "runner.objectives.mdlm",
    "fill": "runner.objectives.fill",
}


names, get = lazy_registry(REGISTRY, "objective.name={name!r} is not a known objective; allowed: {allowed}")
