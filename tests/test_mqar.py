"""Multi-query associative recall: the generator's layout and statistics, disjoint train/test data, scoring only
the answers, the accuracy breakdown, validation, and one tiny run through the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner.config import ConfigError, validate
from runner.tasks import mqar
from test_end_to_end import run_cli


def _pair_lookup(x_row, kv):
    return {int(x_row[2 * j]): int(x_row[2 * j + 1]) for j in range(kv)}


def test_layout_keys_values_and_answers():
    V, L, kv = 128, 64, 8
    s = mqar.generate(300, L, kv, V, generator=torch.Generator().manual_seed(1))
    assert s.x.shape == s.y.shape == (300, L)
    for i in range(300):
        x, y, dist = s.x[i], s.y[i], s.distance[i]
        keys, values = x[0:2 * kv:2], x[1:2 * kv:2]
        assert keys.min() >= 1 and keys.max() < V // 2 and len(set(keys.tolist())) == kv
        assert values.min() >= V // 2 and values.max() < V and len(set(values.tolist())) == kv
        pairs = _pair_lookup(x, kv)
        q = (y != mqar.IGNORE).nonzero().flatten()
        assert len(q) == kv and (q >= 2 * kv).all()  # every key queried once, after the context
        assert sorted(int(x[p]) for p in q) == sorted(pairs)
        for p in q.tolist():
            k = int(x[p])
            assert int(y[p]) == pairs[k]  # the answer is the value paired with the queried key
            assert int(dist[p]) == p - 2 * keys.tolist().index(k)
        assert (dist[y == mqar.IGNORE] == 0).all()
        filler = torch.ones(L, dtype=torch.bool)
        filler[:2 * kv] = False
        filler[q] = False
        assert not torch.isin(x[filler], keys).any()  # a key occurs only in its pair and its query


def test_query_slots_follow_the_power_law():
    L, n = 64, 40000
    s = mqar.generate(n, L, 1, 64, alpha=0.01, generator=torch.Generator().manual_seed(0))
    space = (L - 2) // 2
    slot = (s.y != mqar.IGNORE).nonzero()[:, 1]
    slot = (slot - 2) // 2  # 0-based slot index
    freq = torch.bincount(slot, minlength=space).double() / n
    p = mqar.slot_probabilities(space, 0.01)
    assert torch.allclose(p[0] / p[-1], torch.tensor(space ** 0.99, dtype=torch.float64))
    assert (freq - p).abs().max() < 0.01, (freq[:5], p[:5])
    assert freq[:4].sum() > freq[-4:].sum() * 4  # near queries far more often than far ones


def test_only_answers_are_scored_by_the_model_loss():
    s = mqar.generate(16, 32, 4, 64, generator=torch.Generator().manual_seed(2))
    logits = torch.randn(16, 32, 64, dtype=torch.float64)
    y = s.y.long()
    loss = F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))  # as HybridLM.loss does
    m = y != -100
    manual = -torch.log_softmax(logits, -1)[m].gather(-1, y[m][:, None]).mean()
    assert torch.allclose(loss, manual) and int(m.sum()) == 16 * 4


def test_train_and_test_are_disjoint_and_deterministic():
    tr = mqar.make_train_set(600, 64, [2, 4, 8], 128, seed=3)
    te = mqar.make_test_set(100, 64, [2, 4, 8], 128, seed=3)
    assert torch.equal(tr.x, mqar.make_train_set(600, 64, [2, 4, 8], 128, seed=3).x)
    assert not torch.equal(tr.x[:10], mqar.make_train_set(600, 64, [2, 4, 8], 128, seed=4).x[:10])
    full = tr.length == 64  # compare the examples of the same shape
    train_rows = {tuple(r) for r in tr.x[full].tolist()}
    assert not train_rows & {tuple(r) for r in te.x.tolist()}
    # no test example's context (its set of pairs) was seen in training
    ctx = lambda s, k: {tuple(r[:2 * k]) for r, n in zip(s.x.tolist(), s.num_kv.tolist()) if n == k}  # noqa: E731
    for k in (2, 4, 8):
        assert not ctx(tr, k) & ctx(te, k)


def test_training_mixes_pairs_and_lengths_with_padding():
    tr = mqar.make_train_set(1200, 64, [2, 4, 8], 128, mix_lengths=True, seed=0)
    counts = torch.bincount(tr.num_kv.long())
    assert counts[2] == counts[4] == counts[8] == 400
    assert set(tr.length[tr.num_kv == 2].tolist()) == {64, 32, 16}
    assert set(tr.length[tr.num_kv == 8].tolist()) == {64, 32}  # 16 < 4 * 8 does not fit
    for i in torch.nonzero(tr.length < 64).flatten()[:50].tolist():
        n = int(tr.length[i])
        assert (tr.y[i, n:] == mqar.IGNORE).all() and (tr.x[i, n:] == 0).all()
        assert int((tr.y[i, :n] != mqar.IGNORE).sum()) == int(tr.num_kv[i])
    fixed = mqar.make_train_set(300, 64, [2, 4, 8], 128, mix_lengths=False, seed=0)
    assert set(fixed.length.tolist()) == {64}
    te = mqar.make_test_set(50, 64, [2, 4, 8], 128, seed=0)
    assert set(te.length.tolist()) == {64} and set(te.num_kv[:30].tolist()) == {2, 4, 8}  # shuffled groups


class Induction(nn.Module):
    """Predicts, at every position, the token that followed the earliest earlier occurrence of the current token:
    a perfect MQAR solver here (keys occur only in their pair and their query)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, T = x.shape
        eq = (x[:, :, None] == x[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril(-1)
        first = torch.where(eq.any(-1), eq.float().argmax(-1), torch.zeros_like(x))
        nxt = x.gather(1, (first + 1).clamp(max=T - 1))
        return F.one_hot(nxt, self.vocab).float() * 10, None


def test_accuracy_breakdown_with_a_perfect_and_a_blind_model():
    te = mqar.make_test_set(40, 64, [2, 4, 8], 128, seed=1)
    good = mqar.evaluate_mqar(Induction(128), te, 16, torch.device("cpu"))
    assert good["accuracy"] == 1.0 and good["queries"] == 40 * (2 + 4 + 8)
    assert [r["num_kv_pairs"] for r in good["by_num_kv_pairs"]] == [2, 4, 8]
    assert [r["queries"] for r in good["by_num_kv_pairs"]] == [80, 160, 320]
    assert sum(r["queries"] for r in good["by_distance"]) == good["queries"]
    assert all(r["min"] <= r["max"] for r in good["by_distance"])

    class Blind(nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 128), None

    bad = mqar.evaluate_mqar(Blind(), te, 16, torch.device("cpu"))
    assert bad["accuracy"] == 0.0  # arg-max 0 is never a value


@pytest.mark.parametrize("overrides,fragment", [
    (["data=mqar", "seq_len=32", "data.num_kv_pairs=[4,16]"], "needs length >= 4 * 16"),
    (["data=mqar", "data.vocab_size=16", "data.num_kv_pairs=[8]"], "use vocab_size >= 18"),
    (["data=mqar", "eval.tasks=[positions]"], "with data=mqar use eval.tasks=[ppl,mqar]"),
    (["eval.tasks=[mqar]"], "needs a model trained on data=mqar"),
    (["data=mqar", "data.tokenizer=bpe"], "does not apply to data=mqar"),
])
def test_bad_mqar_settings_are_reported(compose, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(compose(*overrides))
    assert fragment in str(e.value), str(e.value)


def test_tiny_mqar_run_through_the_cli(tmp_path):
    out = tmp_path / "mqar"
    p = run_cli("data=mqar", "model=tiny", "attention=softmax", "seq_len=32", "data.vocab_size=64",
                "data.num_kv_pairs=[2,4]", "data.n_train=500", "data.n_test=20", "train.steps=4",
                "train.batch_size=4", "train.eval_every=2", "stages=[train,eval]", "eval.tasks=[ppl,mqar]",
                f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "completed" and r["data"]["tokenizer"] == "mqar"
    ev = r["eval"]
    assert ev["tokens"] == 20 * (2 + 4) and 0 <= ev["mqar"]["accuracy"] <= 1
    assert [row["num_kv_pairs"] for row in ev["mqar"]["by_num_kv_pairs"]] == [2, 4]
    assert "mqar: accuracy" in p.stdout
