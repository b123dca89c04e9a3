"""Data sources: ``data.name`` -> the module that loads it. One module per source, registered here by one line.

A source module defines:

* ``PROVIDES``: what its data offers the evaluation tasks, e.g. ``{"text"}`` (running text: windows of any length
  can be cut from it, so longer-context tasks apply) or ``{"mqar"}`` (the MQAR test set);
* ``TOKENIZERS``: the ``data.tokenizer`` values that apply to it;
* ``source_problems(c) -> list[str]``: the problems of its own settings in the validated config ``c`` (runner/config.py),
  each naming the key, the value and what would be right (a source registered beyond the built-in ones keeps its
  settings under ``data.options``, set in its conf/data/<name>.yaml);
* ``load(d, seq_len, log)``: the data (``d`` = the ``data`` section), which hands the stages what
  :class:`runner.corpus.Corpus` does: ``vocab_size``, ``token_bytes`` (UTF-8 bytes per token id, or None for one
  byte / one scored token each), ``fingerprint``, ``description``, ``batches(batch, seq_len, generator)`` (endless
  (x, y) training batches drawn from ``generator`` alone, so a saved generator state resumes them),
  ``val_windows(seq_len, max_tokens)`` (deterministic validation (x, y); y = -100 where not scored),
  ``unigram_counts()``, ``info()`` (the ``data`` section of results.json) and ``summary()`` (one console line);
* optionally ``notes(c) -> list[str]``: advice printed before the run (not errors), and ``vocab_size(c) -> int``:
  the vocabulary known before loading (a synthetic task's; otherwise 256 bytes or ``data.vocab_size`` for BPE).

The generated tasks (runner/tasks/synthetic.py) are sources built from a task class by four one-line functions.
"""
from __future__ import annotations

from ..common import lazy_registry

REGISTRY: dict[str, str] = {
    "stdlib": "runner.sources.stdlib",
    "text": "runner.sources.text",
    "hf": "runner.sources.hf",
    "mqar": "runner.tasks.mqar",
    "state_tracking": "runner.tasks.state_tracking",
    "multihop": "runner.tasks.multihop",
    "selective_copy": "runner.tasks.selective_copy",
    "niah": "runner.tasks.niah",
    "sudoku": "runner.tasks.sudoku",
}


names, get = lazy_registry(REGISTRY, "data.name={name!r} is not a known source; allowed: {allowed}")
