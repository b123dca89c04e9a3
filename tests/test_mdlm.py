"""Masked diffusion (runner/objectives/mdlm.py): the masking rate is t, the NELBO of uniform logits is log V per
token, the validation scores are deterministic, the mixers run non-causally (runner/mixers/bidirectional.py) and
a trained tiny model's NELBO falls below the unigram bound."""
import json
import math

import pytest
import torch

from runner import objectives
from runner.config import ConfigError, validate
from runner.mixers import REGISTRY, build_mixer, mixer_names
from runner.mixers.bidirectional import Bidirectional
from runner.mixers.softmax import attend
from runner.objectives import mdlm
from runner.scoring import token_nll

V = 50
NONCAUSAL = mixer_names(fixed_length=False)  # any length (position_mlp: tests/test_position_mlp.py)


def test_each_token_is_masked_with_probability_t():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, V, (64, 2048), generator=g)
    inputs, targets = mdlm.prepare(y, y, g, vocab_size=V, settings={"sampler": "uniform"})
    t = targets[:, -1].double() / mdlm.T_UNITS
    masked = inputs == V
    assert torch.equal(masked, targets[:, :-1] != mdlm.IGNORE)  # the scored positions are the masked ones
    assert torch.equal(torch.where(masked, targets[:, :-1], inputs), y)  # targets hold the clean tokens
    rate = masked.double().mean(1)
    sd = (t * (1 - t) / y.shape[1]).sqrt()
    assert ((rate - t).abs() <= 5 * sd + 1e-9).all(), (rate - t).abs().max()
    assert t.min() >= 1e-3 - 1e-7 and t.max() <= 1


def test_low_discrepancy_times_are_stratified():
    g = torch.Generator().manual_seed(1)
    q = mdlm.draw_times(8, g, "low_discrepancy", 0.0).double() / mdlm.T_UNITS
    strata = sorted(int(v * 8) for v in q)
    assert strata == list(range(8)), q  # one time in each eighth of [0, 1)


def test_the_nelbo_of_uniform_logits_is_log_v_per_token():
    g = torch.Generator().manual_seed(2)
    B, T = 4096, 32
    y = torch.randint(0, V, (B, T), generator=g)
    _, targets = mdlm.prepare(y, y, g, vocab_size=V)
    logits = torch.zeros(B, T, V + mdlm.EXTRA_TOKENS)
    logits[..., V] = 50.0  # the [MASK] logit is never a prediction: it must not change the loss
    per_seq = mdlm.token_scores(logits, targets).sum(1) / T
    mean, se = float(per_seq.mean()), float(per_seq.std() / math.sqrt(B))
    assert abs(mean - math.log(V)) < 4 * se, (mean, math.log(V), se)
    assert float(mdlm.loss(logits, targets)) == pytest.approx(mean, rel=1e-6)


def _tiny(compose, *over):
    from runner.model import build_model

    cfg = compose("model=tiny", "objective=mdlm", *over)
    torch.manual_seed(0)
    return build_model(cfg, V)


def test_validation_scores_are_deterministic_and_do_not_depend_on_the_batch_size(compose):
    model = _tiny(compose)
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, V, (6, 24), generator=g)
    a = token_nll(model, y, y, 2)
    b = token_nll(model, y, y, 6)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6) and a.shape == y.shape and a.sum() > 0
    model.objective_settings["eval_seed"] = 1
    assert not torch.allclose(token_nll(model, y, y, 2), a)  # another seed, other masks


def test_the_model_gains_a_mask_token_and_runs_every_mixer_non_causally(compose):
    model = _tiny(compose)
    assert model.vocab_size == V and model.embed.weight.shape[0] == V + 1 and not model.causal
    assert all(not m.causal for m in model.mixers)
    assert isinstance(model.mixers[0], Bidirectional) and not isinstance(model.mixers[-1], Bidirectional)
    causal = _tiny(compose, "objective=next_token")
    assert causal.n_params() == model.n_params() - model.d_model  # the same model, plus one embedding row


def _mixer(name, causal):
    torch.manual_seed(0)
    return build_mixer({"name": name}, 32, 2, causal=causal).double()


@pytest.mark.parametrize("name", NONCAUSAL)
def test_non_causal_mixers_see_the_future_and_causal_ones_do_not(name):
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    later = x.clone()
    later[:, -1] += 1.0
    for causal in (True, False):
        m = _mixer(name, causal)
        first = m(x, need_state=False)[0][:, 0]
        changed = m(later, need_state=False)[0][:, 0]
        assert torch.allclose(first, changed, atol=1e-12) == causal, (name, causal)


@pytest.mark.parametrize("name", [n for n in NONCAUSAL if not REGISTRY[n][3]])
def test_a_linear_mixer_runs_as_its_causal_pass_and_its_reversed_causal_pass(name):
    bi, fwd = _mixer(name, False), _mixer(name, True)
    assert isinstance(bi, Bidirectional) and sum(p.numel() for p in bi.parameters()) == sum(
        p.numel() for p in fwd.parameters())  # the two directions share every parameter
    x = torch.randn(2, 10, 32, dtype=torch.float64, requires_grad=True)
    y = bi(x)[0]
    ref = 0.5 * (fwd(x, need_state=False)[0] + fwd(x.flip(1), need_state=False)[0].flip(1))
    assert torch.allclose(y, ref, atol=1e-12)
    w = torch.randn_like(y)
    gx, *gp = torch.autograd.grad((y * w).sum(), [x, *bi.parameters()])
    rx, *rp = torch.autograd.grad((ref * w).sum(), [x, *fwd.parameters()])
    assert torch.allclose(gx, rx, atol=1e-10) and all(torch.allclose(a, b, atol=1e-10) for a, b in zip(gp, rp))
    with pytest.raises(ValueError, match="Bidirectional runs non-causally: it has no state to continue"):
        bi(x, {"S": x})


def test_sparse_attention_without_its_mask_selects_later_keys_and_trains_its_indexer():
    torch.manual_seed(0)
    m = build_mixer({"name": "dsa", "index_topk": 4}, 32, 2, causal=False).double().train()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    _, _, q_lat, rope = m.project(x, 0)
    scores = m.indexer.scores(x, x if q_lat is None else q_lat, m.indexer.keys(x, rope), rope)
    chosen = m.select(scores, torch.ones(2, 12, 12, dtype=torch.bool))
    assert (chosen.sum(-1) == 4).all() and chosen[:, 0, 1:].any()  # the first query picks among later keys too
    y, _ = m(x, need_state=False)
    assert y.shape == x.shape and torch.isfinite(m.aux_loss) and m.aux_loss >= 0


@pytest.mark.parametrize("name", ["softmax", "gated_attention", "mla", "dsa"])
def test_a_non_causal_attention_refuses_to_continue_a_cache(name):
    m = _mixer(name, False)
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    state = _mixer(name, True)(x)[1]
    with pytest.raises(ValueError, match="runs non-causally: it has no state to continue"):
        m(x, state)


def test_non_causal_attention_is_softmax_over_every_key():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 7, 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    o = attend(q, k, v, causal=False)
    w = torch.softmax(torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(8), -1)
    assert torch.allclose(o, torch.einsum("bhts,bshd->bthd", w, v), atol=1e-12)


@pytest.mark.parametrize("override,fragment", [
    ("full=dsa", None),
    ("attention=softmax", None),
    ("+attention.window=16", "is a causal sliding window; set window=null"),
    ("data=mqar", "objective=mdlm needs data that provides 'text', and data=mqar provides ['mqar']"),
    ("objective.sampler=sobol", "objective.sampler='sobol' is not known; allowed: ['low_discrepancy', 'uniform']"),
    ("objective.eps=0", "objective.eps=0 must be in (0, 0.5]"),
    ("objective.eval_samples=0", "objective.eval_samples=0 must be a whole number in [1, 1000]"),
    ("+objective.schedule=cosine", "objective.schedule is not a setting of objective=mdlm"),
    ("bench.diffusion_steps=[0,8]", "bench.diffusion_steps=[0, 8] must be a non-empty list of step counts"),
    ("bench.generate_tokens=0", "bench.generate_tokens=0 must be"),
])
def test_bad_diffusion_settings_are_refused_before_any_work(compose, override, fragment):
    over = ["model=tiny", "objective=mdlm", override]
    if override.startswith("+attention.window"):
        over = ["model=tiny", "objective=mdlm", "attention=softmax", "+attention.window=16"]
    cfg = compose(*over)
    if fragment is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert fragment in str(e.value), str(e.value)


def test_a_trained_tiny_diffusion_model_beats_the_unigram_bound_and_is_judged(tmp_path):
    from test_end_to_end import run_cli

    data = ["data.max_bytes=400000", "seq_len=64", "train.batch_size=8", "bench.lengths=[32]", "bench.repeats=1",
            "bench.generate_tokens=16", "bench.judge_samples=4"]
    judge = tmp_path / "judge"
    p = run_cli("model=tiny", *data, "train.steps=20", "train.eval_every=0", "eval.max_tokens=2048",
                f"hydra.run.dir={judge}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "run"
    p = run_cli("model=tiny", "objective=mdlm", *data, "train.steps=150", "train.eval_every=75",
                "eval.max_tokens=8192", "bench.diffusion_steps=[4,16]", f"bench.judge={judge}",
                f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "completed" and r["eval"]["bound"] is True
    assert r["eval"]["bpb"] < r["eval"]["unigram_bpb"], r["eval"]
    assert "bpb <= " in p.stdout and "upper bound" in p.stdout
    row = r["bench"][0]
    assert row["status"] == "ok" and row["train_step_s"] > 0 and "decode_s_per_token" not in row
    data_row, *gen = r["bench_generation"]
    assert data_row["sampler"] == "data" and data_row["judge_ppl"] > 1 and data_row["entropy_bits"] > 0
    assert [(g["sampler"], g["steps"]) for g in gen] == [("ancestral", 4), ("low_confidence", 4), ("ancestral", 16),
                                                         ("low_confidence", 16)]
    for g in gen:
        assert g["status"] == "ok" and g["tokens_per_s"] > 0 and g["tokens"] == 16 and g["samples"] == 4
        assert 0 <= g["entropy_bits"] <= 4 and g["judge_ppl"] > 1  # 16 tokens: at most log2(16) bits
    # (a weak model's low-confidence remasking can write one token 16 times: entropy 0, a flattering judge ppl)
    assert all(g["entropy_bits"] > 0 for g in gen if g["sampler"] == "ancestral")
    assert "judge ppl" in p.stdout


def test_an_unusable_judge_is_refused_before_any_work(tmp_path, compose):
    cfg = compose("model=tiny", "objective=mdlm", f"bench.judge={tmp_path}")
    with pytest.raises(ConfigError, match="no results.json there; .* the judge is a completed autoregressive run"):
        validate(cfg)
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": {"objective": {
        "name": "mdlm"}}, "data": {"vocab_size": V}}))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="the judge must be a completed autoregressive run"):
        validate(cfg)


def test_sample_quality_scores():
    from runner.scoring import judge_nll, token_nll, unigram_entropy

    same = torch.full((1, 8), 3)
    spread = torch.arange(8)[None]
    assert unigram_entropy(same).item() == 0 and unigram_entropy(spread).item() == pytest.approx(3.0)
    from runner.model import HybridLM

    torch.manual_seed(0)
    judge = HybridLM(V, 32, 2, ["F", "F"], {"name": "softmax"}, {"name": "softmax"}).eval()
    seq = torch.randint(0, V, (2, 12))
    ref = token_nll(judge, seq[:, :-1], seq[:, 1:], 2)[:, 4:].mean(1)  # the tokens after a 5-token prompt
    assert torch.allclose(judge_nll(judge, seq[:, :5], seq[:, 5:]).double(), ref, atol=1e-5)
