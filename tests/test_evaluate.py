"""Eval tasks: loss/ppl/bpb on exactly the scored tokens and bytes (byte-level and BPE alike), the extrapolation and
per-position tables, the loss_by_position.png plot, and headline numbers present whatever tasks are chosen."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from runner.config import ConfigError, validate
from runner.data import Corpus
from runner.evaluate import evaluate, mean_loss, token_nll
from runner.model import HybridLM


class Uniform(nn.Module):
    """Equal logits everywhere: loss = ln(vocab) at every scored token."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab), None


class Drift(nn.Module):
    """Its confidence in token 0 grows with the position, so the loss on other targets grows with it."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab)
        logits[..., 0] = torch.arange(x.shape[1], dtype=torch.float32) / 2
        return logits, None


def _cfg(seq_len=16, **eval_kw):
    ev = {"max_tokens": 512, "batch_size": 4, "tasks": ["ppl"], "extrapolation_factors": [2, 4],
          "position_buckets": 4, **eval_kw}
    return OmegaConf.create({"seq_len": seq_len, "eval": ev, "attention": {"name": "x"}, "full": {"name": "y"},
                             "pattern": None, "ratio": "3:1", "model": {"name": "m"}})


def _byte_corpus(n=4000):
    g = torch.Generator().manual_seed(0)
    return Corpus(torch.randint(0, 256, (n,), generator=g, dtype=torch.int64).to(torch.uint8),
                  torch.randint(0, 256, (n,), generator=g, dtype=torch.int64).to(torch.uint8), 256, "f", "bytes")


def test_mean_loss_counts_only_scored_targets():
    x = torch.zeros(2, 8, dtype=torch.long)
    y = torch.full((2, 8), -100)
    y[0, 3], y[1, 5] = 1, 2
    assert mean_loss(Uniform(10), x, y, 1) == pytest.approx(math.log(10))
    nll = token_nll(Uniform(10), x, y, 1)
    assert nll.shape == (2, 8) and int((nll > 0).sum()) == 2


def test_bits_per_byte_counts_the_bytes_of_the_scored_text():
    cfg = _cfg()
    ev = evaluate(Uniform(256), _byte_corpus(), cfg, torch.device("cpu"))
    assert ev["loss"] == pytest.approx(math.log(256)) and ev["bpb"] == pytest.approx(8.0)
    assert ev["tokens"] == ev["bytes"] == 512 and ev["ppl"] == pytest.approx(256)
    assert 7.5 < ev["unigram_bpb"] < 8.5
    # a "BPE" corpus: token t stands for 1 + t % 3 bytes; same loss per token, bpb divides by the true bytes
    V = 300
    g = torch.Generator().manual_seed(1)
    tb = 1 + torch.arange(V) % 3
    c = Corpus(torch.randint(0, V, (3000,), generator=g).int(), torch.randint(0, V, (3000,), generator=g).int(), V,
               "f", "bpe", tokenizer="bpe", token_bytes=tb)
    ev = evaluate(Uniform(V), c, cfg, torch.device("cpu"))
    y = c.val[1:513].long()
    assert ev["bytes"] == int(tb[y].sum())
    assert ev["bpb"] == pytest.approx(math.log(V) * 512 / math.log(2) / ev["bytes"])


def test_extrapolation_positions_and_plot(tmp_path):
    cfg = _cfg(tasks=["ppl", "extrapolation", "positions"])
    ev = evaluate(Drift(256), _byte_corpus(), cfg, torch.device("cpu"), run_dir=str(tmp_path))
    rows = ev["extrapolation"]
    assert [(r["factor"], r["seq_len"], r["status"]) for r in rows] == [(1, 16, "ok"), (2, 32, "ok"), (4, 64, "ok")]
    assert rows[0]["loss"] == pytest.approx(ev["loss"])
    assert all(r["tokens"] == 512 for r in rows)  # the same token budget at every length
    assert rows[2]["loss_beyond"] != rows[2]["loss"]
    pos = ev["positions"]
    assert pos["bucket_width"] == 4 and [c["seq_len"] for c in pos["curves"]] == [16, 32, 64]
    first = pos["curves"][0]
    assert first["start"] == [0, 4, 8, 12] and sum(first["tokens"]) == 512
    assert first["loss"] == sorted(first["loss"])  # Drift: more weight on token 0 later, higher loss on the rest
    assert sum(l * n for l, n in zip(first["loss"], first["tokens"])) / 512 == pytest.approx(ev["loss"])
    png = tmp_path / "loss_by_position.png"
    assert pos["plot"] == "loss_by_position.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_numbers_without_the_ppl_task(tmp_path):
    base = evaluate(Drift(256), _byte_corpus(), _cfg(), torch.device("cpu"))
    for tasks in (["positions"], ["extrapolation"]):
        ev = evaluate(Drift(256), _byte_corpus(), _cfg(tasks=tasks), torch.device("cpu"))
        for k in ("loss", "ppl", "bpb", "unigram_bpb", "tokens"):
            assert ev[k] == pytest.approx(base[k]), (tasks, k)


def test_short_validation_skips_long_windows():
    c = _byte_corpus(n=40)
    ev = evaluate(Uniform(256), c, _cfg(tasks=["ppl", "extrapolation"]), torch.device("cpu"))
    assert [r["status"] for r in ev["extrapolation"]] == ["ok", "ok", "skipped"]
    assert "too few" in ev["extrapolation"][2]["reason"]


def test_a_real_model_through_every_text_task(tmp_path):
    torch.manual_seed(0)
    model = HybridLM(256, 32, 2, ["L", "F"], {"name": "softmax"}, {"name": "softmax"})
    ev = evaluate(model, _byte_corpus(), _cfg(tasks=["ppl", "extrapolation", "positions"], max_tokens=128),
                  torch.device("cpu"), run_dir=str(tmp_path))
    assert math.isfinite(ev["loss"]) and ev["extrapolation"][-1]["status"] == "ok"
    assert (tmp_path / "loss_by_position.png").exists()


@pytest.mark.parametrize("overrides,fragment", [
    (["eval.tasks=[ppl,nope]"], "unknown task(s) ['nope']"),
    (["eval.tasks=[]"], "eval.tasks is empty"),
    (["eval.extrapolation_factors=[1]"], "whole numbers in [2, 1024]"),
    (["eval.position_buckets=0"], "eval.position_buckets=0"),
])
def test_bad_eval_settings_are_reported(compose, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(compose(*overrides))
    assert fragment in str(e.value), str(e.value)


def test_default_tasks_are_ppl(compose):
    assert list(compose().eval.tasks) == ["ppl"]
