"""The generated tasks (runner/tasks: state_tracking, multihop, selective_copy, niah) and the accuracy evaluation:
every answer recomputed by an independent checker from the example's own tokens, lengths and depths as configured,
only answers scored, train and test disjoint, the accuracy breakdown with oracle and blind models, bad settings
refused, and a tiny run through the CLI for each task."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from runner.config import ConfigError, validate
from runner.scoring import IGNORE
from runner.tasks import accuracy, multihop, niah, selective_copy, state_tracking, synthetic
from test_end_to_end import run_cli


def _data_cfg(**over):
    base = dict(n_train=400, n_test=60, seed=0, mix_lengths=True, options={}, val_fraction=0.1, max_bytes=2_000_000,
                path=None, tokenizer="bytes", name="?", cache_dir=None)
    base.update(over)
    return OmegaConf.create(base)


def _answers(e: synthetic.Examples, i: int) -> list:
    return [(p, int(e.y[i, p])) for p in (e.y[i] != IGNORE).nonzero().flatten().tolist()]


# ---- state tracking --------------------------------------------------------------------------------------------

def _compose(a: tuple, p: tuple) -> tuple:
    return tuple(a[p[i]] for i in range(len(a)))


@pytest.mark.parametrize("group,order", [("parity", 2), ("s3", 6), ("s5", 120)])
def test_state_tracking_answers_are_the_running_products(group, order):
    els = state_tracking.elements(group)
    assert len(els) == len(set(els)) == order and els[0] == tuple(range(len(els[0])))
    t = state_tracking.StateTracking({"group": group}, 24)
    assert t.vocab_size == order + 1 and t.pad == order
    e = t.generate(50, 24, torch.Generator().manual_seed(1), "train")
    for i in range(50):
        p = els[0]
        for pos in range(24):
            p = _compose(els[int(e.x[i, pos])], p)  # (a . p)(i) = a(p(i)), from the tuples, not the table
            assert els[int(e.y[i, pos])] == p
        assert e.tags["position"][i].tolist() == list(range(1, 25))
    if group == "parity":
        assert torch.equal(e.y.long(), e.x.long().cumsum(1) % 2)  # parity of the bits so far
    if group == "s5":  # S5 is not abelian: the order of composition matters
        a, b = els[1], els[2]  # the transpositions (3 4) and (2 3)
        assert _compose(a, b) != _compose(b, a)


def test_state_tracking_test_lengths_extrapolate_and_padding_is_not_scored():
    t = state_tracking.StateTracking({"group": "s3"}, 16)
    data = synthetic.TaskData(t, _data_cfg(), 16)
    assert list(data.tests) == [16, 32, 64]  # 1x, 2x, 4x
    assert all(s.x.shape[1] == L for L, s in data.tests.items())
    assert data.train.x.shape[1] == 16 and set(data.train.length.tolist()) == {16, 8, 4}
    for i in range(len(data.train)):
        n = int(data.train.length[i])
        assert (data.train.y[i, n:] == IGNORE).all() and (data.train.x[i, n:] == t.pad).all()
        assert (data.train.y[i, :n] != IGNORE).all()  # every position of the word is an answer
    fixed = synthetic.TaskData(state_tracking.StateTracking({"test_lengths": [16, 48]}, 16),
                               _data_cfg(mix_lengths=False), 16)
    assert list(fixed.tests) == [16, 48] and set(fixed.train.length.tolist()) == {16}


def test_train_and_test_are_disjoint_even_where_words_repeat():
    """Parity words of 4 bits: only 16 exist, so the training set holds them all and every test word must be
    dropped (counted); at length 24 none collides, so none is dropped."""
    data = synthetic.TaskData(state_tracking.StateTracking({"test_lengths": [4, 24]}, 4), _data_cfg(), 4)
    assert len(data.tests[4]) == 0 and data.dropped[4] == 60
    assert len(data.tests[24]) == 60 and data.dropped[24] == 0
    info = data.info()
    assert info["test_dropped_as_in_training"] == {"4": 60, "24": 0} and info["test_examples"]["24"] == 60


@pytest.mark.parametrize("cls,opts,T", [(multihop.MultiHop, {}, 64), (selective_copy.SelectiveCopy, {}, 64),
                                        (niah.NeedleInAHaystack, {"haystack": "noise"}, 96),
                                        (state_tracking.StateTracking, {"group": "s5"}, 32)])
def test_no_test_example_is_a_training_example_and_data_is_deterministic(cls, opts, T):
    d = _data_cfg(n_train=300, n_test=40)
    a, b = synthetic.TaskData(cls(opts, T), d, T), synthetic.TaskData(cls(opts, T), d, T)
    assert a.fingerprint == b.fingerprint and torch.equal(a.train.x, b.train.x)
    other = synthetic.TaskData(cls(opts, T), _data_cfg(n_train=300, n_test=40, seed=1), T)
    assert other.fingerprint != a.fingerprint
    train = {tuple(a.train.x[i, :int(a.train.length[i])].tolist()) for i in range(len(a.train))}
    for s in a.tests.values():
        assert not train & {tuple(r) for r in s.x.tolist()}
    counts = a.unigram_counts()
    assert int(counts.sum()) == int((a.train.y != IGNORE).sum()) and counts.shape == (a.vocab_size,)


# ---- multi-hop recall ------------------------------------------------------------------------------------------

def test_multihop_answers_follow_the_chains_in_context():
    t = multihop.MultiHop({"hops": [1, 2, 4], "chains": 3, "nodes": 64}, 48)
    assert t.min_length() == 2 * 3 * 4 + 2 * 3 and t.vocab_size == 64 + 4 + 1
    e = t.generate(200, 48, torch.Generator().manual_seed(2), "train")
    seen_hops = set()
    for i in range(200):
        x = e.x[i].tolist()
        edges = {x[j]: x[j + 1] for j in range(0, 2 * 3 * 4, 2)}
        assert len(edges) == 12 and not set(edges) & {0} and len(set(edges.values())) == 12
        answers = _answers(e, i)
        assert len(answers) == 3 and all(p >= 48 - 6 for p, _ in answers)
        for p, ans in answers:
            k = x[p - 1] - 64
            node = x[p]
            for _ in range(k):  # follow k edges from the queried start
                node = edges[node]
            assert ans == node and int(e.tags["hops"][i, p]) == k and k in (1, 2, 4)
            seen_hops.add(k)
        assert all(v == 0 for v in x[24:48 - 6])  # filler between the context and the queries
    assert seen_hops == {1, 2, 4}


# ---- selective copying -----------------------------------------------------------------------------------------

def test_selective_copy_answers_are_the_scattered_tokens_in_order():
    t = selective_copy.SelectiveCopy({"tokens": 5, "vocab": 7}, 30)
    e = t.generate(200, 30, torch.Generator().manual_seed(3), "train")
    for i in range(200):
        x = e.x[i].tolist()
        region, delim = x[:25], x[25]
        data = [v for v in region if v != 0]
        assert delim == 8 and len(data) == 5 and all(1 <= v <= 7 for v in data)
        assert [a for _, a in _answers(e, i)] == data  # copied in order
        assert [p for p, _ in _answers(e, i)] == list(range(25, 30))
        assert x[26:] == data[:-1]  # teacher forcing: each answer sees the true ones before it
        assert e.tags["index"][i, 25:].tolist() == [1, 2, 3, 4, 5]


# ---- needle in a haystack --------------------------------------------------------------------------------------

def _niah_parts(x: list, K: int, V: int):
    """The needles (key -> (start, value)) in the context and the queried key, read from the tokens."""
    q0 = len(x) - (K + V + 1)
    assert x[q0] == niah.QUERY and x[q0 + 1 + K] == niah.ANSWER
    needles = {}
    for p in range(q0):
        if x[p] == niah.NEEDLE:
            assert x[p + 1 + K] == niah.ANSWER
            needles[tuple(x[p + 1:p + 1 + K])] = (p, x[p + 2 + K:p + 2 + K + V])
    return needles, tuple(x[q0 + 1:q0 + 1 + K]), q0


@pytest.mark.parametrize("needles", [1, 3])
def test_niah_answer_is_the_queried_needle_s_value_at_its_depth(needles):
    K, V, L = 4, 3, 160
    t = niah.NeedleInAHaystack({"haystack": "repeat", "needles": needles, "value_length": V,
                                "test_depths": [0.0, 0.5, 1.0]}, L)
    e = t.generate(90, L, torch.Generator().manual_seed(4), "test")
    nl = K + V + 2
    H = L - needles * nl - (nl - 1)
    for i in range(90):
        x = e.x[i].tolist()
        found, key, q0 = _niah_parts(x, K, V)
        assert len(found) == needles and key in found  # distinct keys, the queried one among them
        start, value = found[key]
        assert [a for _, a in _answers(e, i)] == value and all(ord("0") <= v <= ord("9") for v in value)
        assert [p for p, _ in _answers(e, i)] == list(range(q0 + 1 + K, L))
        depth = [0.0, 0.5, 1.0][i % 3]
        assert int(e.tags["depth"][i, L - 1]) == round(100 * depth)
        before = sum(1 for k, (s, _) in found.items() if s < start)  # needles placed before it
        assert start - before * nl == round(depth * H)  # its offset in the haystack is depth x haystack
        assert not any(v >= 256 for j, v in enumerate(x[:q0]) if not _in_needle(j, found, nl))


def _in_needle(j: int, found: dict, nl: int) -> bool:
    return any(s <= j < s + nl for s, _ in found.values())


def test_niah_haystack_comes_from_the_corpus_splits():
    from runner.sources.stdlib import load_stdlib

    corpus = load_stdlib(0.1, 2_000_000)
    t = niah.NeedleInAHaystack({}, 128)
    t.text = {"train": corpus.train, "test": corpus.val}
    for split, text in (("train", corpus.train), ("test", corpus.val)):
        e = t.generate(5, 128, torch.Generator().manual_seed(5), split)
        blob = bytes(text.tolist())
        for i in range(5):
            first = e.x[i].tolist()
            run = bytes(first[:next(j for j, v in enumerate(first) if v >= 256)])
            if len(run) >= 20:
                assert run in blob  # a real stretch of that split's text
    short = niah.NeedleInAHaystack({}, 128)
    short.text = {"train": corpus.train, "test": corpus.val[:40]}  # a test haystack at 128 needs 128 - 19 bytes
    assert "validation split has 40 bytes, fewer than the 109 of one haystack at length 128" in short.text_problem(True)
    assert t.text_problem(True) is None
    data = niah.load(_data_cfg(name="niah", n_train=50, n_test=10), 128)
    assert list(data.tests) == [32, 64, 128] and data.vocab_size == 259


# ---- the accuracy evaluation -----------------------------------------------------------------------------------

class Oracle(nn.Module):
    """Knows the answers of the examples it was given (looked up by their tokens); right only where ``right``
    says so."""

    def __init__(self, data: synthetic.TaskData, vocab: int, right=lambda tags, p: True):
        super().__init__()
        self.vocab, self.table = vocab, {}
        for s in data.tests.values():
            for i in range(len(s)):
                self.table[tuple(s.x[i].tolist())] = (s.y[i].long(), {k: v[i] for k, v in s.tags.items()})
        self.right = right
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(*x.shape, self.vocab)
        for i in range(x.shape[0]):
            y, tags = self.table[tuple(x[i].tolist())]
            for p in (y != IGNORE).nonzero().flatten().tolist():
                out[i, p, int(y[p]) if self.right(tags, p) else (int(y[p]) + 1) % self.vocab] = 10.0
        return out, None


def test_accuracy_by_length_and_tag_with_oracle_models():
    data = synthetic.TaskData(multihop.MultiHop({"test_lengths": [32, 64]}, 32), _data_cfg(n_test=30), 32)
    good = synthetic.evaluate_task(Oracle(data, data.vocab_size), data, 8, torch.device("cpu"))
    assert good["accuracy"] == good["exact"] == good["accuracy_longest"] == 1.0
    assert [r["length"] for r in good["by_length"]] == [32, 64]
    assert [r["beyond_training"] for r in good["by_length"]] == [False, True]
    half = synthetic.evaluate_task(Oracle(data, data.vocab_size, lambda tags, p: int(tags["hops"][p]) == 1), data,
                                   8, torch.device("cpu"))
    for r in half["by_length"]:
        by = {b["value"]: b for b in r["by"]["hops"]}
        assert by[1]["accuracy"] == 1.0 and by[2]["accuracy"] == by[3]["accuracy"] == 0.0
        assert sum(b["answers"] for b in by.values()) == r["answers"] == r["examples"] * 4
        ones = by[1]["answers"] / r["answers"]
        assert math.isclose(r["accuracy"], ones)
        assert r["exact"] < 0.05  # an example is exact only when all four of its queries had one hop

    class Blind(nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, data.vocab_size), None

    assert synthetic.evaluate_task(Blind(), data, 8, torch.device("cpu"))["accuracy"] == 0.0  # token 0 never answers


def test_log2_buckets_and_the_report_section():
    data = synthetic.TaskData(state_tracking.StateTracking({}, 8), _data_cfg(n_test=20), 8)
    ev = synthetic.evaluate_task(Oracle(data, data.vocab_size, lambda tags, p: int(tags["position"][p]) < 4), data,
                                 4, torch.device("cpu"))
    r = ev["by_length"][0]
    assert [(b["min"], b["max"]) for b in r["by"]["position"]] == [(1, 1), (2, 3), (4, 7), (8, 15)]
    assert [b["accuracy"] for b in r["by"]["position"]] == [1.0, 1.0, 0.0, 0.0]
    jobs = [{"config": "gdn", "label": f"gdn seed{s}", "layer_types": "LLLL", "results": {"eval": {"accuracy": ev}}}
            for s in range(3)] + [{"config": "sm", "label": "sm", "layer_types": "FFFF", "results": {"eval": {}}}]
    table = lambda h, rows: ["|".join(h)] + ["|".join(map(str, row)) for row in rows]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    lines = accuracy.report_lines(jobs, table, fmt)
    assert lines[0] == "## Task accuracy (state_tracking)"
    assert "config|layers|8|16*|32*" in lines
    assert "config|length|position 1|position 2-3|position 4-7|position 8-15|position 16-31|position 32-63" in lines
    row = next(line for line in lines if line.startswith("gdn|LLLL|"))
    assert row.startswith("gdn|LLLL|0.375 ± 0.000 (3)")  # three identical seeds: a zero-width interval
    exact = lines[lines.index("Per example (every answer of the example right):"):]
    assert next(line for line in exact if line.startswith("gdn|LLLL|")).startswith("gdn|LLLL|0.000 ± 0.000 (3)")
    assert not any(line.startswith("sm|") for line in lines)  # a job without the task has no row
    assert accuracy.describe({"accuracy": ev})[0].startswith("  state_tracking: answer accuracy by length 8 0.375")


# ---- settings and the CLI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,fragment", [
    (["data=state_tracking", "data.options.group=s7"], "data.options.group='s7' is not a group"),
    (["data=state_tracking", "+data.options.groups=s5"], "['groups'] are not options of data=state_tracking"),
    (["data=state_tracking", "data.options.test_lengths=[0]"], "needs examples of at least 1 tokens"),
    (["data=state_tracking", "data.n_test=0"], "data.n_test=0 must be a whole number"),
    (["data=multihop", "seq_len=16"], "seq_len=16: data=multihop with these settings needs examples of at least 32"),
    (["data=multihop", "data.options.hops=[0,2]"], "data.options.hops=[0, 2] must be a non-empty list"),
    (["data=multihop", "data.options.nodes=8"], "need at least 16"),
    (["data=multihop", "data.options.hops=[]", "data.options.test_lengths=[64]"], "must be a non-empty list"),
    (["data=selective_copy", "seq_len=20"], "needs examples of at least 32"),
    (["data=niah", "data.options.haystack=poems"], "data.options.haystack='poems' is not a haystack"),
    (["data=niah", "data.options.test_depths=[1.5]"], "depths in [0, 1]"),
    (["data=niah", "data.options.haystack=text"], "the haystack's source, data.options.haystack=text"),
    (["data=state_tracking", "data.tokenizer=bpe"], "does not apply to data=state_tracking"),
    (["data=state_tracking", "eval.tasks=[ppl,mqar]"], "mqar"),
    (["eval.tasks=[ppl,accuracy]"], "accuracy"),
])
def test_bad_task_settings_are_reported(compose, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(compose(*overrides))
    assert fragment in str(e.value), str(e.value)


def test_vocabulary_is_known_before_loading(compose):
    from runner.fit import vocab_size

    assert vocab_size(compose("data=state_tracking", "data.options.group=s5")) == 121
    assert vocab_size(compose("data=niah")) == 259
    assert vocab_size(compose("data=multihop", "data.options.nodes=100")) == 100 + 3 + 1
    assert vocab_size(compose("data=mqar", "data.vocab_size=512")) == 512
    assert vocab_size(compose()) == 256


@pytest.mark.parametrize("task,extra,seq_len", [
    ("state_tracking", ["data.options.group=s3"], 16),
    ("multihop", [], 64),
    ("selective_copy", ["data.options.tokens=4"], 32),
    ("niah", ["data.max_bytes=1000000"], 64),
])
def test_tiny_task_run_through_the_cli(tmp_path, capsys, task, extra, seq_len):
    out = tmp_path / task
    p = run_cli(f"data={task}", *extra, "model=tiny", "attention=gated_deltanet", "ratio=1:0", f"seq_len={seq_len}",
                "data.n_train=200", "data.n_test=10", "train.steps=3", "train.batch_size=4", "train.eval_every=2",
                "stages=[train,eval]", "eval.tasks=[ppl,accuracy]", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    a = r["eval"]["accuracy"]
    assert r["status"] == "completed" and a["task"] == task and a["train_length"] == seq_len
    assert all(0 <= row["accuracy"] <= 1 and row["examples"] == 10 for row in a["by_length"])
    assert f"{task}: answer accuracy by length" in p.stdout
    assert r["data"]["tokenizer"] == task
    from runner.sample import main as sample

    assert sample([str(out), "--max-new-tokens", "4"]) == 2  # synthetic ids are not text: refused, not a traceback
    assert "trained on a synthetic task" in capsys.readouterr().err


def test_wandb_job_type_tells_the_task_and_negative_eigenvalues_apart():
    """W&B groups a configuration's seeds by its job type: the group of a word problem and the eigenvalue range
    must be part of it, or the state-tracking study's charts would merge different models."""
    from runner.track import config_label

    base = {"attention": {"name": "gated_deltanet"}, "full": {"name": "softmax"}, "ratio": "1:0",
            "model": {"name": "tiny"}, "seq_len": 32, "data": {"name": "state_tracking",
                                                              "options": {"group": "parity", "test_lengths": None}}}
    neg = {**base, "attention": {"name": "gated_deltanet", "allow_neg_eigval": True}}
    s5 = {**base, "data": {"name": "state_tracking", "options": {"group": "s5"}}}
    labels = {config_label(c) for c in (base, neg, s5)}
    assert len(labels) == 3 and all(len(x) <= 64 for x in labels)
    assert config_label(base) == "gated_deltanet+softmax 1:0 tiny T=32 state_tracking:parity"
    assert config_label({**base, "data": {"name": "stdlib"}}) == "gated_deltanet+softmax 1:0 tiny T=32"
