"""Analytic cache / state memory versus context length, for published architectures and for this repo's models.

``python -m runner.memory`` prints, for each chosen preset, a table of the bytes a model keeps per sequence to
continue decoding after n tokens (rows: context lengths 4K .. 1M; columns: configurations) and the ratio of
each configuration to the preset's all-full-attention counterpart; ``--plot`` draws it (log-log), ``--csv``
writes it in long form.

What is counted, per layer kind (elements per sequence, times the dtype's bytes, times the batch):

* softmax attention (MHA / GQA): K and V for every cached token, ``2 * n * kv_heads * head_dim``
  (with a sliding window, ``n`` is capped at the window);
* MLA: the KV latent and the shared decoupled key for every token, ``n * (kv_lora_rank + qk_rope_head_dim)``;
* linear layers (Gated DeltaNet, KDA, lightning attention, ...): the matrix state ``heads * k_dim * v_dim``,
  constant in n, plus the short-convolution tails ``channels * (conv_size - 1)`` where the layer has a short
  convolution, plus a normaliser ``heads * k_dim`` where the layer keeps one (none of the presets does).

Everything is in one dtype (``--dtype``, default bf16). Not counted: weights, activations, the position counter,
allocator slack and paging granularity. Serving stacks often keep linear layers' recurrent state in fp32
(transformers does for Qwen3-Next and Kimi Linear), which doubles the (small) linear share; run with
``--dtype fp32`` to see the upper end. Bytes are shown in decimal units (1 GB = 10^9 B).

"Our" models (``--ours``) are built from conf/ with :class:`runner.model.HybridLM` on the ``meta`` device (no
memory is allocated) and their figure is the sum of the mixers' own ``state_bytes(batch, n, dtype)``.

API: :func:`cache_bytes` (one configuration, one length) and :func:`presets` (name -> :class:`Preset`).
"""
from .arch import (DTYPES, PART_NAMES, PARTS, Arch, Layer, ModelArch, Preset, attention_layer, dtype_name,
                   dtype_of, itemsize, linear_layer, mla_layer)
from .calculator import (cache_bytes, context_lengths, human_bytes, human_tokens, plot, print_tables,
                         resolve, rows, write_csv)
from .cli import main, parser
from .ours import available_mixers, build_ours, ours, parse_ours
from .presets import KIMI_MLA_LAYERS, find_preset, presets

__all__ = ["DTYPES", "PART_NAMES", "PARTS", "Arch", "Layer", "ModelArch", "Preset", "attention_layer", "dtype_name",
           "dtype_of", "itemsize", "linear_layer", "mla_layer", "cache_bytes", "context_lengths", "human_bytes",
           "human_tokens", "plot", "print_tables", "resolve", "rows", "write_csv", "main", "parser",
           "available_mixers", "build_ours", "ours", "parse_ours", "KIMI_MLA_LAYERS", "find_preset", "presets"]
