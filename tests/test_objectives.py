"""The objective seam: the model's loss, the validation scores and the batches go through the configured objective
(runner/objectives); next-token prediction is the cross-entropy of each token given the ones before; an objective
that is not causal is refused for mixers that only run causally."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from runner import objectives
from runner.config import ConfigError, validate
from runner.objectives import next_token
from runner.scoring import token_nll


def test_next_token_is_the_cross_entropy_of_the_shifted_pairs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (2, 5), generator=g)
    y[0, 1] = -100
    x = torch.randint(0, 11, (2, 5), generator=g)
    assert next_token.prepare(x, y) == (x, y)
    per = next_token.token_scores(logits, y)
    ref = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), reduction="none", ignore_index=-100).reshape(2, 5)
    assert torch.equal(per, ref) and per[0, 1] == 0
    assert torch.allclose(next_token.loss(logits, y), per.sum() / 9)


@pytest.fixture
def doubled(monkeypatch):
    """An objective that is next-token prediction with twice the loss, registered as 'doubled'."""
    mod = types.ModuleType("tests_doubled_objective")
    mod.CAUSAL, mod.BOUND = True, False
    mod.prepare = next_token.prepare
    mod.loss = lambda logits, t: 2 * next_token.loss(logits, t)
    mod.token_scores = lambda logits, t: 2 * next_token.token_scores(logits, t)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(objectives.REGISTRY, "doubled", mod.__name__)
    return mod


def test_the_model_and_the_scores_use_the_configured_objective(compose, doubled):
    from runner.model import build_model

    cfg = compose("model=tiny")
    torch.manual_seed(0)
    plain = build_model(cfg, 256)
    cfg.objective.name = "doubled"
    torch.manual_seed(0)
    twice = build_model(cfg, 256)
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    a, b = plain.loss(x, y)[1], twice.loss(x, y)[1]
    assert torch.allclose(b, 2 * a)
    assert torch.allclose(token_nll(twice, x, y, 2), 2 * token_nll(plain, x, y, 2))


def test_a_non_causal_objective_needs_mixers_that_see_the_whole_sequence(compose, monkeypatch, doubled):
    from runner.mixers.dsa import DeepSeekSparseAttention

    monkeypatch.setattr(doubled, "CAUSAL", False)
    monkeypatch.setattr(DeepSeekSparseAttention, "bidirectional", False)  # a mixer that cannot drop its mask
    cfg = compose("model=tiny", "attention=dsa")
    cfg.objective.name = "doubled"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "attention='dsa' runs only with its causal mask" in str(e.value)
    assert "full=" not in str(e.value)  # gated attention drops its mask


def test_an_unknown_objective_is_refused(compose):
    cfg = compose("model=tiny")
    cfg.objective.name = "nope"
    with pytest.raises(ConfigError,
                       match=r"objective.name='nope' is not a known objective; allowed: \['next_token', 'mdlm', 'fill'\]"):
        validate(cfg)
