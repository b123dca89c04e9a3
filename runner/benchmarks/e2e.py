"""End-to-end benchmark: training tokens/s of our Gated DeltaNet hybrid next to transformers' Qwen3-Next.

    python -m runner.benchmarks.e2e                              # small model, LLLF, T=2048, fp32, 2 threads
    python -m runner.benchmarks.e2e --model-size base --batch 1 --steps 5
    python -m runner.benchmarks.e2e --compile both               # also torch.compile'd steps of both models
    python -m runner.benchmarks.e2e --precision bf16             # both models under bf16 autocast
    python -m runner.benchmarks.e2e --decode                     # decode ms/token after n = 256 .. 16384

Training mode builds two models of the same shape with random weights: ours (runner.model.HybridLM with the
conf/attention/gated_deltanet.yaml linear layers and conf/full/gated_attention.yaml full layers, laid out by
--ratio) and ``transformers.Qwen3NextForCausalLM`` configured to match: the same width, depth, layer types,
q/k and value heads and head sizes of the linear layers, query/kv heads and head size of the full layers,
partial RoPE fraction and base, a dense SwiGLU MLP of the same hidden size in every layer (``num_experts=0``
and every layer in ``mlp_only_layers``, so no MoE block is built), the same tying of the embeddings and a
256-token vocabulary. One training step is forward + cross-entropy + backward + AdamW step on the same batch
in float32; the two models' steps are interleaved (the order alternating each round), each timed after warm-up,
and the medians are compared. Without flash-linear-attention (not installed here) transformers runs its
pure-PyTorch fallback of the gated delta rule (``torch_chunk_gated_delta_rule``), which is what we compare
against; its full-attention layers run torch SDPA as ours do.

Decode mode (``--decode``) prefills our all-linear (1:0) model and our all-full (0:1) model to each prefix
length n in pieces (the state carried between pieces, never recomputed), then times single-token decoding
steps through the mixers' state (``HybridLM.decode_step``, the mixers' fast step), the two models taking turns of
a few steps (the first of each turn untimed: it refills the caches the other model's step emptied): constant per
token for the linear model, growing with n for softmax attention, together with the state bytes of each.

Runtime: idle OpenMP threads spin briefly, then sleep, and glibc malloc keeps freed memory for reuse (both set by
runner/cpu_runtime.py when the package is imported, unless the user set the variables). Sleeping at once
(OMP_WAIT_POLICY=PASSIVE) halved the speed of both models on a quiet machine; unlimited spinning turned every
parallel region into a wait for a descheduled thread on a busy one. Both models run under the same settings; the
header prints them together with the load average.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from typing import Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from ..accel import autocast
from ..cpu_runtime import describe as runtime_settings
from ..paths import CONF_DIR

VOCAB = 256
DECODE_BLOCK = 4  # decode steps per turn of one model, the first untimed (see _decode_times)


def _sizes() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "model")) if f.endswith(".yaml"))


def model_spec(size: str, d_model: Optional[int] = None, layers: Optional[int] = None,
               heads: Optional[int] = None, full: str = "gated_attention"):
    """The configuration ``python -m runner model=<size> full=<full>`` composes (gated_deltanet as the linear
    mixer), with the command line's width, depth and heads."""
    from ..config import compose_config

    if size not in _sizes():
        raise SystemExit(f"--model-size {size!r} has no conf/model/{size}.yaml; sizes: {', '.join(_sizes())}")
    overrides = [f"model={size}", "attention=gated_deltanet", f"full={full}"]
    for key, val in (("d_model", d_model), ("n_layers", layers), ("n_heads", heads)):
        if val is not None:
            overrides.append(f"model.{key}={val}")
    return compose_config(overrides)


def build_ours(cfg, layer_types: list[str]):
    """Our model of configuration ``cfg`` (from :func:`model_spec`) with the given layer types."""
    from ..model import build_model

    return build_model(cfg, VOCAB, layer_types)


def first_mixer(model, kind: str):
    """The mixer of the first layer of ``kind`` ("L" linear, "F" full) in our model, or None."""
    return next((b.mixer for b, t in zip(model.blocks, model.layer_types) if t == kind), None)


def qwen3_next_config(ours):
    """A Qwen3NextConfig with the shapes of our model ``ours`` (a HybridLM of gated_deltanet + gated_attention)."""
    from transformers import Qwen3NextConfig

    lin, att = first_mixer(ours, "L"), first_mixer(ours, "F")
    n = len(ours.layer_types)
    kw = dict(vocab_size=ours.vocab_size, hidden_size=ours.d_model,
              intermediate_size=ours.blocks[0].mlp.down.in_features, num_hidden_layers=n,
              layer_types=["linear_attention" if t == "L" else "full_attention" for t in ours.layer_types],
              num_experts=0, mlp_only_layers=list(range(n)), decoder_sparse_step=1,
              tie_word_embeddings=ours.head.weight is ours.embed.weight, rms_norm_eps=ours.norm.eps,
              hidden_act="silu", attention_bias=False, attention_dropout=0.0, use_cache=False)
    if lin is not None:
        if lin.cfg.name != "gated_deltanet" or lin.conv is None or not lin.cfg.use_gate:
            raise SystemExit("the comparison needs gated_deltanet linear layers with short conv and output gate")
        kw.update(linear_num_key_heads=lin.num_heads, linear_num_value_heads=lin.num_v_heads,
                  linear_key_head_dim=lin.head_dim, linear_value_head_dim=lin.head_v_dim,
                  linear_conv_kernel_dim=lin.cfg.conv_size)
    if att is not None:
        if att.cfg.name != "gated_attention" or not att.cfg.qk_norm or att.window is not None or att.cfg.bias:
            raise SystemExit("the comparison needs gated_attention full layers (QK-norm, no window, no bias)")
        kw.update(num_attention_heads=att.num_heads, num_key_value_heads=att.num_kv_heads, head_dim=att.head_dim,
                  rope_parameters={"rope_type": "default", "rope_theta": float(att.cfg.rope_theta),
                                   "partial_rotary_factor": att.rotary_dim / att.head_dim})
    else:  # all-linear: the attention fields are unused but must be consistent
        kw.update(num_attention_heads=lin.num_heads, num_key_value_heads=lin.num_heads, head_dim=lin.head_dim)
    return Qwen3NextConfig(**kw)


def build_transformers(ours):
    from transformers import Qwen3NextForCausalLM

    cfg = qwen3_next_config(ours)
    try:
        model = Qwen3NextForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    except TypeError:  # older signatures
        model = Qwen3NextForCausalLM._from_config(cfg, attn_implementation="sdpa")
    return model.float()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def linear_backend() -> str:
    from transformers.models.qwen3_next import modeling_qwen3_next as mq

    if importlib.util.find_spec("fla") is not None or not hasattr(mq, "torch_chunk_gated_delta_rule"):
        return "flash-linear-attention is installed: transformers may run its kernels, not the PyTorch fallback"
    return ("transformers' pure-PyTorch fallback torch_chunk_gated_delta_rule "
            "(flash-linear-attention and causal-conv1d are not installed)")


def param_breakdown(ours, theirs) -> list[tuple[str, int, int]]:
    """(group, ours, theirs) parameter counts: embeddings/head, linear mixers, full mixers, MLPs, norms."""
    def count(mods):
        seen, total = set(), 0
        for mod in mods:
            for p in mod.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    lt = ours.layer_types
    o_lin = count(b.mixer for b, t in zip(ours.blocks, lt) if t == "L")
    o_full = count(b.mixer for b, t in zip(ours.blocks, lt) if t == "F")
    o_mlp = count(b.mlp for b in ours.blocks)
    o_norm = count([*(b.norm1 for b in ours.blocks), *(b.norm2 for b in ours.blocks), ours.norm])
    o_emb = count([ours.embed, ours.head])
    layers = theirs.model.layers
    t_lin = count(l.linear_attn for l in layers if hasattr(l, "linear_attn"))
    t_full = count(l.self_attn for l in layers if hasattr(l, "self_attn"))
    t_mlp = count(l.mlp for l in layers)
    t_norm = count([*(l.input_layernorm for l in layers), *(l.post_attention_layernorm for l in layers),
                    theirs.model.norm])
    t_emb = count([theirs.model.embed_tokens, theirs.lm_head])
    return [("embedding + head", o_emb, t_emb), ("linear mixers", o_lin, t_lin), ("full mixers", o_full, t_full),
            ("MLPs", o_mlp, t_mlp), ("block norms", o_norm, t_norm)]


def train_step_fn(model, x, y, transformers_model: bool, compiled: bool = False, precision: str = "fp32"):
    """One training step; with ``compiled`` the forward and the loss (and so their backward) go through
    torch.compile, as the runner's compile=true does; ``precision=bf16`` runs the forward under bf16 autocast
    (the backward outside it), as the runner's precision=bf16 does."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    model.train()

    def forward_loss(x, y):
        if transformers_model:
            logits = model(input_ids=x, use_cache=False).logits
        else:
            logits, _ = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    fwd = torch.compile(forward_loss) if compiled else forward_loss

    def step():
        with autocast(precision, x.device):
            loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, steps: int, warmup: int = 1) -> tuple[dict, dict]:
    """Median seconds of each callable, run in rounds (warm-up rounds first), the order alternating per round.
    Returns (medians, all times) by name."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(steps):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(fns[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}, times


def profile_step(step, con: Console, rows: int = 20):
    """torch.profiler table of one training step (self CPU time, top ops)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        step()
    con.file.flush()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=45),
          flush=True)


def environment(precision: str = "fp32") -> str:
    try:
        load = "load average {:.1f} on {} cores".format(os.getloadavg()[0], os.cpu_count())
    except OSError:
        load = f"{os.cpu_count()} cores"
    return f"{precision}, {torch.get_num_threads()} threads, {runtime_settings()}, {load}"


def _fwd_bwd_layer(fn, x):
    leaf = x.detach().clone().requires_grad_(True)

    def run():
        leaf.grad = None
        out = fn(leaf)
        out.backward(torch.ones_like(out))

    return run


def components(ours, theirs, B: int, T: int, steps: int, warmup: int):
    """Forward + backward of each kind of layer of both models on (B, T, d_model) inputs, and of the linear
    layers' chunked op alone, interleaved. Returns rows (name, layers per step, ours s, transformers s)."""
    from .ops import _fwd_bwd, _inputs, ours as our_op, reference

    kinds = ours.layer_types
    iL = kinds.index("L") if "L" in kinds else None
    iF = kinds.index("F") if "F" in kinds else None
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, ours.d_model, generator=gen)
    layers = theirs.model.layers
    pos = torch.arange(T)[None]
    rope = theirs.model.rotary_emb(x, pos)
    fns, rows = {}, []
    if iL is not None:
        lin = ours.blocks[iL].mixer
        kw = _inputs("gated_delta_rule", B, T, lin.num_v_heads, lin.head_dim)
        ref = reference("gated_delta_rule")
        fns["op"] = (_fwd_bwd(our_op("gated_delta_rule"), kw), _fwd_bwd(ref, kw))
        fns["L"] = (_fwd_bwd_layer(lambda h: lin(h, need_state=False)[0], x),
                    _fwd_bwd_layer(lambda h: layers[iL].linear_attn(h), x))
    if iF is not None:
        att = ours.blocks[iF].mixer
        fns["F"] = (_fwd_bwd_layer(lambda h: att(h, need_state=False)[0], x),
                    _fwd_bwd_layer(lambda h: layers[iF].self_attn(h, rope, None)[0], x))
    fns["mlp"] = (_fwd_bwd_layer(ours.blocks[0].mlp, x), _fwd_bwd_layer(layers[0].mlp, x))
    flat = {f"{k}/{i}": f[i] for k, f in fns.items() for i in (0, 1)}
    med, _ = interleaved(flat, steps, warmup)
    names = {"op": ("  its chunked op alone", kinds.count("L")),
             "L": ("linear layer", kinds.count("L")),
             "F": ("full layer", kinds.count("F")),
             "mlp": ("SwiGLU MLP", len(kinds))}
    for k in ("L", "op", "F", "mlp"):
        if k in fns:
            rows.append((names[k][0], names[k][1], med[f"{k}/0"], med[f"{k}/1"]))
    return rows


def print_components(rows, step_ours: float, step_theirs: float, con: Console,
                     linear_flops: float = 0.0, peak_gflops: float = 0.0):
    """The per-component table and two bounds on the ratio: with our chunked op free, and with each of our linear
    layers as fast as its FLOPs (``linear_flops``, forward + backward) at the matmul peak measured in this run
    while everything else keeps its measured time."""
    table = Table(title="where the step goes: forward + backward of one layer on the same input, medians")
    for col in ("component", "per step", "ours ms", "transf. ms", "ours/transf.", "% of our step",
                "% of theirs"):
        table.add_column(col, justify="right")
    acc_o = acc_t = 0.0
    for name, n, to, tt in rows:
        if not name.startswith("  "):
            acc_o, acc_t = acc_o + n * to, acc_t + n * tt
        table.add_row(name, str(n), f"{to * 1e3:.1f}", f"{tt * 1e3:.1f}", f"{to / tt:.2f}",
                      f"{100 * n * to / step_ours:.0f}%", f"{100 * n * tt / step_theirs:.0f}%")
    rest_o, rest_t = step_ours - acc_o, step_theirs - acc_t
    table.add_row("rest: step minus the rows above", "1", f"{rest_o * 1e3:.1f}", f"{rest_t * 1e3:.1f}",
                  f"{rest_o / rest_t:.2f}" if rest_t > 0 else "-", f"{100 * rest_o / step_ours:.0f}%",
                  f"{100 * rest_t / step_theirs:.0f}%")
    con.print(table)
    op = next(((n, to, tt) for name, n, to, tt in rows if "op alone" in name), None)
    if op is not None:
        n, to, tt = op
        free = step_ours - n * to
        con.print(f"Amdahl: the linear op alone is {100 * n * to / step_ours:.0f}% of our step "
                  f"({100 * n * tt / step_theirs:.0f}% of theirs)"
                  + (f"; if our op took no time at all the ratio would be at most {step_theirs / free:.2f}x"
                     if free > 0 else ""))
    lin = next(((n, to) for name, n, to, tt in rows if name == "linear layer"), None)
    if lin is not None and linear_flops > 0 and peak_gflops > 0:
        n, to = lin
        at_peak = linear_flops / (peak_gflops * 1e9)
        floor = step_ours - n * to + n * at_peak
        con.print(f"Floor: one linear layer does {linear_flops / 1e9:.2f} GFLOP forward + backward, "
                  f"{at_peak * 1e3:.1f} ms at the matmul peak measured now ({peak_gflops:.0f} GFLOP/s; it takes "
                  f"{to * 1e3:.1f} ms); with every linear layer at that speed and the rest of our step as measured, "
                  f"the ratio would be at most {step_theirs / floor:.2f}x")


def run_train(a, con: Console):
    from ..layout import layer_types

    m = model_spec(a.model_size, a.d_model, a.layers, a.heads)
    kinds = layer_types(m.model.n_layers, a.ratio, a.pattern)
    torch.manual_seed(a.seed)
    ours = build_ours(m, kinds)
    torch.manual_seed(a.seed)
    theirs = build_transformers(ours)
    po, pt = n_params(ours), n_params(theirs)
    gen = torch.Generator().manual_seed(a.seed)
    idx = torch.randint(0, VOCAB, (a.batch, a.seq_len + 1), generator=gen)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    lin, att = first_mixer(ours, "L"), first_mixer(ours, "F")
    con.print(f"training step (forward + cross-entropy + backward + AdamW), batch {a.batch} x seq_len {a.seq_len}, "
              f"vocab {VOCAB}; {environment(a.precision)}")
    con.print(f"model: {a.model_size} d_model={m.model.d_model} layers={''.join(kinds)} "
              f"MLP hidden={ours.blocks[0].mlp.down.in_features} tied embeddings={m.model.tie_embeddings}")
    if lin is not None:
        con.print(f"  linear (gated_deltanet): q/k heads {lin.num_heads} x {lin.head_dim}, value heads "
                  f"{lin.num_v_heads} x {lin.head_v_dim}, conv {lin.cfg.conv_size}, chunk {lin.cfg.chunk_size}")
    if att is not None:
        con.print(f"  full (gated_attention): heads {att.num_heads}, kv heads {att.num_kv_heads}, head_dim "
                  f"{att.head_dim}, RoPE on {att.rotary_dim} channels, base {att.cfg.rope_theta:g}")
    con.print(f"transformers Qwen3NextForCausalLM: dense MLP in every layer (num_experts=0), attention "
              f"{theirs.config._attn_implementation}; linear layers: {linear_backend()}")
    con.print(f"parameters: ours {po:,}, transformers {pt:,} (difference {po - pt:+,})")
    for name, o, t in param_breakdown(ours, theirs):
        if o or t:
            con.print(f"  {name:18s} ours {o:>12,}  transformers {t:>12,}  {'same' if o == t else f'{o - t:+,}'}")
    if po == pt:
        con.print("  same count: the same tensors, laid out differently (theirs fuses q/k/v/z and b/a into two "
                  "projections, ours has six; their block norms use gain 1 + w, ours w) and initialised differently")
    else:
        con.print("  the counts differ: the groups above say where")

    pr = a.precision
    steps = {"ours": train_step_fn(ours, x, y, False, precision=pr),
             "transformers": train_step_fn(theirs, x, y, True, precision=pr)}
    if a.compile in ("ours", "both"):
        steps["ours compiled"] = train_step_fn(ours, x, y, False, compiled=True, precision=pr)
    if a.compile == "both":
        steps["transformers compiled"] = train_step_fn(theirs, x, y, True, compiled=True, precision=pr)
    if pr == "bf16":
        con.print("precision: bf16 autocast for both models' forwards (ours keeps the gated delta rule's math in "
                  "float32; transformers' code runs as autocast casts it)")
    if a.compile != "none":
        con.print("torch.compile: the first (warm-up) step of each compiled model compiles it, untimed")
    med, all_times = interleaved(steps, a.steps, a.warmup)
    tok = a.batch * a.seq_len
    tps = {name: tok / t for name, t in med.items()}
    table = Table(title=f"training tokens/s, median of {a.steps} interleaved steps after {a.warmup} warm-up")
    for col in ("model", "median step s", "min step s", "tokens/s"):
        table.add_column(col, justify="right")
    labels = {"ours": "ours (HybridLM)", "transformers": "transformers Qwen3-Next"}
    for name in steps:
        label = labels.get(name) or labels[name.split()[0]] + " compiled"
        table.add_row(label, f"{med[name]:.3f}", f"{min(all_times[name]):.3f}", f"{tps[name]:,.0f}")
    con.print(table)
    to, tt = tps["ours"], tps["transformers"]
    ratio = to / tt
    con.print(f"ours tokens/s: {to:,.0f}")
    con.print(f"transformers tokens/s: {tt:,.0f}")
    con.print(f"ratio ours/transformers (both eager): {ratio:.2f}x (target >= {a.target:g}x: "
              f"{'met' if ratio >= a.target else 'NOT met'})")
    extra = {name.replace(" ", "_") + "_tokens_per_s": t for name, t in tps.items() if name.endswith(" compiled")}
    if "ours compiled" in tps:
        r = tps["ours compiled"] / tt
        con.print(f"ratio ours compiled / transformers eager: {r:.2f}x (target >= {a.target:g}x: "
                  f"{'met' if r >= a.target else 'NOT met'})")
    if "transformers compiled" in tps:
        r = tps["ours compiled"] / tps["transformers compiled"]
        con.print(f"ratio ours compiled / transformers compiled: {r:.2f}x")
    if a.profile or (a.profile_if_below and ratio < a.target):
        from .timing import matmul_peak_gflops

        rows = components(ours, theirs, a.batch, a.seq_len, a.steps, a.warmup)
        flops = 3.0 * lin.flops_per_token(a.seq_len) * a.batch * a.seq_len if lin is not None else 0.0
        print_components(rows, med["ours"], med["transformers"], con, flops, matmul_peak_gflops())
        con.print("one training step of ours under torch.profiler (top ops by self CPU time):")
        profile_step(steps["ours"], con)
    return {"ours_tokens_per_s": to, "transformers_tokens_per_s": tt, "ratio": ratio, "params_ours": po,
            "params_transformers": pt, **extra}


@torch.no_grad()
def _decode_times(models: list, lengths: list[int], decode_tokens: int, piece: int, batch: int, seed: int,
                  block: int = DECODE_BLOCK):
    """Per model and n: (median seconds of one decode step after a prefix of n, state bytes measured). The models
    take turns (the order alternating), so that a change in the machine's load falls on all of them alike and
    their ratio holds even when absolute times drift. A turn is ``block`` steps in a row of which the first is not
    timed: a model's step right after the other model's finds its weights and state pushed out of the CPU caches
    by the other's (at n = 16,384 softmax streams a 134 MB cache per token), which no model decoding on its own
    meets; one step after every switch, timed, had made the constant-state model look 17-34% slower at 16,384
    than at 256."""
    from ..mixers.base import state_nbytes

    for model in models:
        model.eval()
    gen = torch.Generator().manual_seed(seed)
    n_max = max(lengths)
    steps = decode_tokens + -(-decode_tokens // (block - 1))  # the timed steps plus one untimed per turn
    idx = torch.randint(0, VOCAB, (batch, n_max + steps), generator=gen)
    out = [{} for _ in models]
    states, pos = [None] * len(models), 0
    for n in sorted(lengths):
        while pos < n:  # extend the prefix in pieces, carrying the state
            end = min(n, pos + piece)
            states = [model(idx[:, pos:end], st, need_state=True)[1] for model, st in zip(models, states)]
            pos = end
        nxt = idx[:, n_max:]
        times, cur, used = [[] for _ in models], list(states), [0] * len(models)
        turn = 0
        while any(len(t) < decode_tokens for t in times):
            order = range(len(models)) if turn % 2 == 0 else reversed(range(len(models)))
            for m in order:
                if len(times[m]) >= decode_tokens:
                    continue
                for j in range(min(block, decode_tokens - len(times[m]) + 1)):
                    t0 = time.perf_counter()
                    _, cur[m] = models[m].decode_step(nxt[:, used[m]:used[m] + 1], cur[m])
                    if j:  # the turn's first step refills the caches
                        times[m].append(time.perf_counter() - t0)
                    used[m] += 1
            turn += 1
        for m, st in enumerate(states):
            out[m][n] = (statistics.median(times[m]), state_nbytes(st))
    return out


def run_decode(a, con: Console):
    m = model_spec(a.model_size, a.d_model, a.layers, a.heads, full=a.full)
    n_layers = m.model.n_layers
    torch.manual_seed(a.seed)
    lin = build_ours(m, ["L"] * n_layers)
    torch.manual_seed(a.seed)
    full = build_ours(m, ["F"] * n_layers)
    con.print(f"decode through the mixers' state, {environment()}, batch {a.batch}, "
              f"model {a.model_size} d_model={m.model.d_model} layers={n_layers}: gated_deltanet 1:0 "
              f"({n_params(lin):,} parameters) vs {a.full} 0:1 ({n_params(full):,} parameters); "
              f"prefix prefilled in pieces of {a.piece}, median of {a.decode_tokens} steps, the models taking turns "
              f"of {DECODE_BLOCK} steps (the first untimed)")
    res_l, res_f = _decode_times([lin, full], a.lengths, a.decode_tokens, a.piece, a.batch, a.seed)
    table = Table(title="decode: milliseconds per token after a prefix of n tokens; state bytes measured")
    for col in ("n", "gated_deltanet ms/tok", "state MB", f"{a.full} ms/tok", "KV cache MB", "full/linear"):
        table.add_column(col, justify="right")
    for n in sorted(a.lengths):
        (tl, bl), (tf, bf) = res_l[n], res_f[n]
        table.add_row(str(n), f"{tl * 1e3:.3f}", f"{bl / 1e6:.3f}", f"{tf * 1e3:.3f}", f"{bf / 1e6:.3f}",
                      f"{tf / tl:.2f}")
    con.print(table)
    lo, hi = min(a.lengths), max(a.lengths)
    if hi > lo:
        con.print(f"time per token n={hi} / n={lo}: gated_deltanet {res_l[hi][0] / res_l[lo][0]:.2f} "
                  f"(constant state), {a.full} {res_f[hi][0] / res_f[lo][0]:.2f} (cache grows x{hi / lo:.0f})")
    return {"linear": res_l, "full": res_f}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="small", help=f"conf/model/<name>.yaml ({', '.join(_sizes())})")
    p.add_argument("--d-model", type=int, default=None, help="override the size's d_model")
    p.add_argument("--layers", type=int, default=None, help="override the size's n_layers")
    p.add_argument("--heads", type=int, default=None, help="override the size's n_heads")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ratio", default="3:1", help="efficient:full layers, as the runner's ratio= (3:1 = LLLF)")
    p.add_argument("--pattern", default=None, help="explicit layout such as LLLF (overrides --ratio)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=2.0, help="ratio ours/transformers to report against")
    p.add_argument("--profile", action="store_true", help="always print torch.profiler tables of both steps")
    p.add_argument("--no-profile", dest="profile_if_below", action="store_false",
                   help="do not profile when the ratio is below --target")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: both models' forwards under bf16 autocast")
    p.add_argument("--compile", default="none", choices=["none", "ours", "both"],
                   help="also time torch.compile'd training steps: of ours, or of both models")
    p.add_argument("--decode", action="store_true", help="decode time per token vs prefix length instead")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384],
                   help="--decode: prefix lengths")
    p.add_argument("--decode-tokens", type=int, default=16, help="--decode: timed single-token steps per length")
    p.add_argument("--piece", type=int, default=1024, help="--decode: prefill piece length")
    p.add_argument("--full", default="gated_attention", help="--decode: the full mixer (conf/full/<name>.yaml)")
    a = p.parse_args(argv)
    for name in ("seq_len", "batch", "steps", "threads", "decode_tokens", "piece"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if any(n < 1 for n in a.lengths):
        p.error("--lengths must be positive")
    torch.set_num_threads(a.threads)
    con = Console(width=max(Console().width, 130))
    if a.decode:
        return run_decode(a, con)
    return run_train(a, con)


if __name__ == "__main__":
    main()
