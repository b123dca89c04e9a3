"""Data sources and tokenizers: BPE trained on the training split and cached (the second run says "cache hit" and
does not tokenize), lossless byte counts for bits per byte, the Hugging Face loader on a local dataset folder, and a
dataset that cannot be had without network failing within seconds with what to do."""
import json
import os
import random
import time
from types import SimpleNamespace

import pytest
import torch

from runner import data as D
from runner.config import ConfigError, DataConfig, validate
from test_end_to_end import run_cli

WORDS = ["the", "king", "queen", "über", "naïve", "日本語", "castle", "speaks", "to", "and", "thee", "thou", "hath",
         "€uro", "knight", "ROMEO:", "JULIET:", "\n", ",", "."]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(30000))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _cfg(**kw):
    return DataConfig(**{"name": "text", "max_bytes": 0, **kw})


def test_byte_corpus_split_and_counts(text_file):
    c = D.load_corpus(_cfg(path=str(text_file)))
    raw = text_file.read_bytes()
    assert c.vocab_size == 256 and c.tokenizer == "bytes" and c.token_bytes is None
    assert c.train.numel() + c.val.numel() == len(raw)
    assert abs(c.val.numel() - 0.1 * len(raw)) < 8  # the tail, moved to a character boundary
    c.train.numpy().tobytes().decode("utf-8")
    c.val.numpy().tobytes().decode("utf-8")
    assert c.info()["train_bytes"] == c.train.numel()


def test_bpe_second_load_is_a_cache_hit_and_skips_tokenization(text_file, tmp_path, monkeypatch):
    cfg = _cfg(path=str(text_file), tokenizer="bpe", vocab_size=300, cache_dir=str(tmp_path / "cache"))
    log1, log2 = [], []
    a = D.load_corpus(cfg, log=log1.append)
    assert any("cache miss" in m for m in log1) and any("trained BPE" in m for m in log1)
    assert a.tokenizer == "bpe" and a.vocab_size == 300 and a.train.numel() < 0.7 * a.info()["train_bytes"]

    def boom(*args, **kw):
        raise AssertionError("tokenized again")

    import runner.bpe

    monkeypatch.setattr(runner.bpe, "train_bpe", boom)
    monkeypatch.setattr(runner.bpe, "bpe_encode", boom)
    b = D.load_corpus(cfg, log=log2.append)
    assert any("cache hit" in m and "tokenization skipped" in m for m in log2), log2
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and torch.equal(a.token_bytes, b.token_bytes)
    assert b.info()["cache_hit"] == {"tokenizer": True, "tokens": True}


def test_bpe_is_lossless_and_counts_every_byte(text_file, tmp_path):
    import tokenizers

    c = D.load_corpus(_cfg(path=str(text_file), tokenizer="bpe", vocab_size=400, cache_dir=str(tmp_path)))
    raw = D.load_corpus(_cfg(path=str(text_file)))
    for tokens, data in ((c.train, raw.train), (c.val, raw.val)):
        assert int(c.bytes_of(tokens).sum()) == data.numel()  # bits per byte divide by exactly these bytes
    tok = tokenizers.Tokenizer.from_file(c.info()["tokenizer_path"])
    assert tok.decode(c.val.tolist()) == raw.val.numpy().tobytes().decode("utf-8")
    # another vocabulary size is another cache entry
    assert c.info()["tokens_path"] != D.load_corpus(_cfg(path=str(text_file), tokenizer="bpe", vocab_size=300,
                                                         cache_dir=str(tmp_path))).info()["tokens_path"]


def test_second_cli_run_says_cache_hit(text_file, tmp_path):
    """The first run (here: the same loader, in this process) trains and tokenizes; the run after it, through the
    CLI, says so in its log and tokenizes nothing."""
    cache = tmp_path / "cache"
    first = []
    D.load_corpus(_cfg(path=str(text_file), tokenizer="bpe", vocab_size=300, cache_dir=str(cache)), log=first.append)
    assert any("cache miss" in m for m in first) and not any("cache hit" in m for m in first)
    p = run_cli("data=text", f"data.path={text_file}", "data.tokenizer=bpe", "data.vocab_size=300",
                f"data.cache_dir={cache}", "model=tiny", "attention=softmax", "seq_len=32", "stages=[eval]",
                "weights=random", "eval.max_tokens=256", f"hydra.run.dir={tmp_path / 'b'}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "cache hit" in p.stdout and "tokenization skipped" in p.stdout and "trained BPE" not in p.stdout
    r = json.loads((tmp_path / "b" / "results.json").read_text())
    assert r["data"]["tokenizer"] == "bpe" and r["data"]["cache_hit"]["tokens"] is True
    assert r["eval"]["bytes"] > r["eval"]["tokens"]  # bpb counts the bytes of the scored text


@pytest.fixture
def local_dataset(tmp_path):
    """A dataset folder as the Hub would serve it: one jsonl file per split, text in column 'content'."""
    folder = tmp_path / "ds"
    folder.mkdir()
    rng = random.Random(1)
    for split, n in (("train", 400), ("validation", 40)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"content": " ".join(rng.choice(WORDS) for _ in range(30)), "id": i}) + "\n")
    return folder


def _hf(folder, **kw):
    base = dict(name="hf", dataset=str(folder), config=None, text_field="content", max_bytes=0)
    return DataConfig(**{**base, **kw})


def test_hf_loader_reads_a_local_dataset(local_dataset):
    c = D.load_corpus(_hf(local_dataset))
    assert c.files == {"train": 400, "val": 40} and c.vocab_size == 256
    rows = [json.loads(line)["content"] for line in open(local_dataset / "validation.jsonl")]
    rows = [r if r.endswith("\n") else r + "\n" for r in rows]
    assert c.val.numpy().tobytes().decode() == "".join(rows)  # rows as lines, in order
    again = D.load_corpus(_hf(local_dataset))
    assert again.fingerprint == c.fingerprint


def test_hf_streaming_respects_the_byte_cap(local_dataset):
    c = D.load_corpus(_hf(local_dataset, streaming=True, max_bytes=5000))
    assert 5000 <= c.train.numel() < 5000 + 400  # stops at the row that crosses the cap
    carved = D.load_corpus(_hf(local_dataset, val_split=None, val_fraction=0.2))
    assert carved.files["train"] + carved.files["val"] == 400 and 40 < carved.files["val"] < 120


def test_hf_wrong_column_names_the_columns(local_dataset):
    with pytest.raises(D.DataSettingError, match=r"data.text_field='text'.*\['content', 'id'\]"):
        D.load_corpus(_hf(local_dataset, text_field="text"))


@pytest.mark.parametrize("override,says", [
    ("data.text_field=text", ["data.text_field='text'", "'content'"]),
    ("data.config=wikitext-103-raw-v1", ["data.config='wikitext-103-raw-v1' does not fit", "default"]),
    ("data.train_split=training", ["data.train_split='training' does not fit", "existing split"]),
])
def test_cli_data_setting_errors_say_what_to_change_without_a_stack_trace(local_dataset, tmp_path, override, says):
    config = [] if "data.config" in override else ["data.config=null"]
    p = run_cli("data=hf", f"data.dataset={local_dataset}", *config, override, "stages=[train]",
                f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert all(s in out for s in says), out[-3000:]
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["status"] == "failed" and "DataSettingError" in r["error"]


@pytest.mark.parametrize("how", ["probe fails", "HF_HUB_OFFLINE"])
def test_hf_unreachable_hub_fails_fast_in_process(monkeypatch, how):
    import datasets.config

    if how == "probe fails":
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # whatever the environment says
        monkeypatch.setattr(D, "hub_unreachable", lambda timeout=3.0: "test: no network")
    else:
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(D, "hub_unreachable", lambda timeout=3.0: pytest.fail("probed although offline"))
    t0 = time.time()
    with pytest.raises(D.DataUnavailable) as e:
        D.load_corpus(DataConfig(name="hf", dataset="no-such-owner/no-such-dataset-here", config=None))
    assert time.time() - t0 < 20
    msg = str(e.value)
    assert "not reachable" in msg and "What to do" in msg and "data=text" in msg and "HF_HOME" in msg
    assert ("HF_HUB_OFFLINE is set" in msg) == (how == "HF_HUB_OFFLINE")


def test_hub_probe_gives_up_quickly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.time()
    assert "did not answer" in D.hub_unreachable(timeout=1.0)
    assert time.time() - t0 < 3


def test_cli_without_network_fails_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a Hub that cannot be reached, network or not
    for var in ("HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.time()
    p = run_cli("data=hf", "data.dataset=wikitext", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    elapsed = time.time() - t0
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "not reachable" in out and "What to do" in out and "data.dataset=/path/to/folder" in out, out[-3000:]
    assert elapsed < 45, elapsed  # interpreter start-up and imports included
    assert p.returncode == 1 and "Traceback" not in out, out[-3000:]  # the message, not a stack trace
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["status"] == "failed" and "DataUnavailable" in r["error"]


@pytest.mark.parametrize("overrides,fragment", [
    (["data.tokenizer=wordpiece"], "allowed: ['bytes', 'bpe']"),
    (["data.tokenizer=bpe", "data.vocab_size=100"], "data.vocab_size=100 must be in [257"),
    (["data=hf", "data.dataset=null"], "data=hf needs data.dataset"),
    (["data=hf", "data.streaming=true", "data.max_bytes=0"], "give data.max_bytes"),
    (["data.name=nope"], "not a known source"),
])
def test_bad_data_settings_are_reported(compose, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(compose(*overrides))
    assert fragment in str(e.value), str(e.value)


def test_group_files_compose(compose):
    for group in ("stdlib", "text", "hf", "mqar"):
        cfg = compose(f"data={group}", "data.path=/tmp") if group == "text" else compose(f"data={group}")
        assert cfg.data.name == group
    cfg = compose("data=hf")
    assert cfg.data.dataset == "wikitext" and cfg.data.config == "wikitext-103-raw-v1" and not cfg.data.streaming
