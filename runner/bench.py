"""Bench stage: cost versus context length n.

For each n of ``bench.lengths`` (a geometric ladder): one training step (forward + backward + AdamW) at length n,
its time and peak memory; inference prefill of n tokens, its tokens/s and peak memory; per-token decode time
after a prefix of n (through the mixers' state, with ``HybridLM.decode_step``); and the cache/state bytes after
n tokens, both analytic (``state_bytes``) and measured (the tensors actually held). A length that runs out of
memory, over the time budget (``bench.time_budget_s`` for one measurement, ``bench.memory_budget_gb`` for the
training step's peak, predicted from the two previous lengths before it is tried) or into an error is recorded
with its status (``over_budget``, ``oom``, ``error``) and reason, and ends the ladder; the run goes on.

Then generation (:func:`bench_generation`, runner/generate.py): ``bench.generate_tokens`` new tokens after a
16-token prompt, as tokens/s: one decode step per token for an autoregressive model; for a masked-diffusion model
one row per number of denoising steps S in ``bench.diffusion_steps`` (S forwards of the whole sequence, fewer
with ancestral sampling's skipped steps), so the cost of quality (more steps) reads off next to decoding; and
the quality of samples after validation prompts: unigram entropy, and perplexity under ``bench.judge`` (an
autoregressive run of the same data, runner/checkpoint.py load_judge).
"""
from __future__ import annotations

import statistics
import time
import traceback

import torch
from rich.console import Console

from .accel import autocast
from .mixers.base import state_nbytes
from .peakmem import measure
from .progress import bar


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(e).lower()


class OverBudget(Exception):
    pass


def _spread(times: list[float]) -> list[float]:
    """[fastest, slowest] of the timed runs: the timing noise beside their median (``<key>_range`` in a row; the
    report's crossovers use it to say over which n two configurations are within noise of each other)."""
    return [min(times), max(times)]


def _timed(fn, cfg_bench, device):
    """One warm-up (checked against the time budget), one run measuring peak memory (bench.memory), then
    ``repeats`` timing-only runs. Returns (median seconds, peak bytes, value of the last run, [min, max] seconds)."""
    first = measure(fn, device, memory="none")
    if first.seconds > cfg_bench.time_budget_s:
        raise OverBudget(f"one run took {first.seconds:.1f} s > bench.time_budget_s={cfg_bench.time_budget_s}")
    peak = measure(fn, device, memory=cfg_bench.memory).peak_bytes
    runs = [measure(fn, device, memory="none") for _ in range(cfg_bench.repeats)]
    times = [r.seconds for r in runs]
    return statistics.median(times), peak, runs[-1].value, _spread(times)


def bench_length(model, n: int, cfg, device) -> dict:
    bc = cfg.bench
    B = bc.batch_size
    gen = torch.Generator().manual_seed(cfg.seed + n)
    idx = torch.randint(0, model.vocab_size, (B, n + 1), generator=gen).to(device)
    from . import objectives

    x, y = objectives.get(model.objective).prepare(idx[:, :-1], idx[:, 1:], gen, vocab_size=model.vocab_size,
                                                   settings=model.objective_settings)
    row = {"n": n, "batch": B}

    # Training step. lr = 0 and no weight decay: the real optimiser work without changing the trained weights.
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0, fused=True)  # as train.py
    model.train()

    def train_step():
        with autocast(cfg.precision, device):  # forward under autocast (precision=bf16), backward outside it
            loss, _ = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)

    row["train_step_s"], row["train_peak_bytes"], _, row["train_step_s_range"] = _timed(train_step, bc, device)
    row["train_tokens_per_s"] = B * n / row["train_step_s"]
    opt.zero_grad(set_to_none=True)
    del opt

    model.eval()
    with torch.no_grad(), autocast(cfg.precision, device):
        def prefill():  # a non-causal model keeps no state: its "prefill" is one forward (one denoising step)
            _, state = model(x, need_state=model.causal)
            _sync(device)
            return state

        t, row["prefill_peak_bytes"], state, row["prefill_s_range"] = _timed(prefill, bc, device)
        row["prefill_s"] = t
        row["prefill_tokens_per_s"] = B * n / t
        if not model.causal:  # no token-by-token decoding to time
            row["flops_per_token"], row["status"] = model.flops_per_token(n), "ok"
            return row
        row["state_bytes"] = model.state_bytes(B, n, next(model.parameters()).dtype)
        row["state_bytes_measured"] = state_nbytes(state)

        # decoding through the mixers' fast step (HybridLM.decode_step), one token at a time; the warm-up step
        # also builds the step's cached tensors, and continuing from the prefill's state again is safe
        nxt = torch.randint(0, model.vocab_size, (B, bc.decode_tokens), generator=gen).to(device)
        model.decode_step(nxt[:, :1], state)  # warm-up step
        times = []
        s = state
        for i in range(bc.decode_tokens):
            _sync(device)
            t0 = time.perf_counter()
            _, s = model.decode_step(nxt[:, i:i + 1], s)
            _sync(device)
            times.append(time.perf_counter() - t0)
        row["decode_s_per_token"] = statistics.median(times)
        row["decode_s_per_token_range"] = _spread(times)
    row["flops_per_token"] = model.flops_per_token(n)
    row["status"] = "ok"
    return row


SCALED = ("train_step_s", "train_peak_bytes", "prefill_s", "prefill_peak_bytes", "decode_s_per_token",
          "state_bytes", "state_bytes_measured")


def scaling(rows: list[dict]) -> dict:
    """Exponent of each cost in n: slope on log-log over the upper half of the ladder (runner/report.py)."""
    from .common import scaling_exponent

    ok = [r for r in rows if r.get("status") == "ok"]
    return {k: scaling_exponent([r["n"] for r in ok], [r.get(k) for r in ok]) for k in SCALED}


def _predicted_peak(rows: list[dict], n: int):
    """The next length's training-step peak, extrapolated on log-log from the last two measured lengths."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("train_peak_bytes")]
    if len(ok) < 2:
        return None
    (n0, m0), (n1, m1) = [(r["n"], r["train_peak_bytes"]) for r in ok[-2:]]
    import math

    slope = math.log(m1 / m0) / math.log(n1 / n0) if m0 > 0 and m1 > 0 else 1.0
    return m1 * (n / n1) ** max(slope, 0.0)


def bench_generation(model, cfg, device, console=None, corpus=None, judge=None) -> list[dict]:
    """Generated tokens/s (module docstring): one row for an autoregressive model, one per S and sampler for
    diffusion. With the ``corpus``, each row also has the quality of ``bench.judge_samples`` samples after
    prompts from the validation text: their unigram entropy (bits) and, with a ``judge`` model (bench.judge),
    their perplexity under it; a ``data`` row gives the same for the validation text's own continuations."""
    from . import generate, objectives
    from .scoring import sample_quality

    if not getattr(objectives.get(getattr(model, "objective", "next_token")), "GENERATES", True):
        if console is not None:
            console.print(f"  generate: none (objective={model.objective} fills answers, it does not generate)")
        return []
    bc, L = cfg.bench, cfg.bench.generate_tokens
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(0, model.vocab_size, (bc.batch_size, 16), generator=gen).to(device)
    if model.causal:
        cases = [("autoregressive", L, lambda p: generate.autoregressive(model, p, L, generator=gen))]
    else:
        cases = [(remasking, S, lambda p, S=S, r=remasking: generate.diffusion(model, p, L, S, r, generator=gen))
                 for S in bc.diffusion_steps for remasking in ("ancestral", "low_confidence")]
    texts = None
    if corpus is not None:
        try:
            texts = corpus.val_windows(16 + L, (16 + L) * bc.judge_samples)[0][:bc.judge_samples].to(device)
        except ValueError as e:
            if console is not None:
                console.print(f"  generate: no sample quality ({e})")
    rows = []
    if texts is not None:
        rows.append({"sampler": "data", "steps": None, "tokens": L, "samples": texts.shape[0], "status": "ok",
                     **sample_quality(texts[:, 16:], texts[:, :16], judge)})
    for how, steps, fn in cases:
        row = {"sampler": how, "steps": steps, "tokens": L, "batch": bc.batch_size}
        try:
            with autocast(cfg.precision, device):
                row["s"], row["peak_bytes"], _, row["s_range"] = _timed(lambda: fn(prompt), bc, device)
                row["tokens_per_s"] = bc.batch_size * L / row["s"]
                if texts is not None:
                    row.update(samples=texts.shape[0], **sample_quality(fn(texts[:, :16]), texts[:, :16], judge))
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - recorded; the run goes on
            row.update(status="oom" if _is_oom(e) else "error", reason=f"{type(e).__name__}: {e}")
        rows.append(row)
    if console is not None:
        for row in rows:
            if row["status"] != "ok":
                what = f"[yellow]{row['status']}[/]: {row['reason']}"
            else:
                what = ", ".join(([f"{row['tokens_per_s']:,.0f} tokens/s"] if "tokens_per_s" in row else [])
                                 + ([f"judge ppl {row['judge_ppl']:.2f}"] if "judge_ppl" in row else [])
                                 + ([f"entropy {row['entropy_bits']:.2f} bits"] if "entropy_bits" in row else []))
            steps = f", {row['steps']} steps" if row["steps"] is not None else " (the validation text)"
            console.print(f"  generate {L} tokens, {row['sampler']}{steps}: {what}")
    model.train()
    return rows


def run_bench(model, cfg, device, console=None) -> list[dict]:
    """The ladder of ``bench.lengths``: one row per length, up to the first that does not measure (OOM, over the
    time or memory budget, an error); each is printed as it is done, under a progress bar."""
    rows = []
    with bar(console or Console(quiet=True), "bench", len(cfg.bench.lengths)) as advance:
        for n in cfg.bench.lengths:
            advance(0, what=f"n={n}")
            rows.append(_ladder_step(model, int(n), cfg, device, rows))
            if console is not None:
                console.print(_ladder_line(rows[-1]))
            advance()
            if rows[-1]["status"] != "ok":
                break
    model.train()
    return rows


def _ladder_step(model, n: int, cfg, device, rows: list[dict]) -> dict:
    """One length of the ladder, its failure recorded (OOM and any other error end the ladder, not the run)."""
    budget = cfg.bench.memory_budget_gb * 1e9
    predicted = _predicted_peak(rows, n) if budget > 0 else None
    try:
        if predicted is not None and predicted > budget:
            raise OverBudget(f"predicted training-step peak {predicted / 1e9:.2f} GB > "
                             f"bench.memory_budget_gb={cfg.bench.memory_budget_gb}")
        row = bench_length(model, n, cfg, device)
    except OverBudget as e:
        row = {"n": n, "status": "over_budget", "reason": str(e)}
    except Exception as e:
        status = "oom" if _is_oom(e) else "error"
        row = {"n": n, "status": status, "reason": f"{type(e).__name__}: {e}",
               **({"traceback": traceback.format_exc(limit=5)} if status == "error" else {})}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if row["status"] == "ok" and budget > 0 and (row.get("train_peak_bytes") or 0) > budget:
        row["status"], row["reason"] = "over_budget", (f"training-step peak {row['train_peak_bytes'] / 1e9:.2f} GB "
                                                      f"> bench.memory_budget_gb={cfg.bench.memory_budget_gb}")
    return row


def _ladder_line(row: dict) -> str:
    n = row["n"]
    if row["status"] != "ok":
        return f"  bench n={n:>6}: [yellow]{row['status']}[/]: {row['reason']}; ladder stops here"
    decode = f", decode {row['decode_s_per_token'] * 1e3:6.2f} ms/tok" if "decode_s_per_token" in row else ""
    return (f"  bench n={n:>6}: train step {row['train_step_s'] * 1e3:8.1f} ms, "
            f"prefill {row['prefill_tokens_per_s']:>10,.0f} tok/s{decode}")
