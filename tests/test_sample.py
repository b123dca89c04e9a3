"""python -m runner.sample and the sample stage: what a trained run writes, for both objectives, through the run's
own checkpoint and tokenizer; greedy sampling equals the generator's greedy decoding, the stage writes what the CLI
writes; bad folders and settings get a clear error."""
import glob
import json
import os

import pytest
import torch

from runner import generate
from runner.checkpoint import run_model, trained_run
from runner.sample import main

from test_end_to_end import TINY, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for objective in ("next_token", "mdlm"):
        d = tmp_path_factory.mktemp("sample") / objective
        p = run_cli(*TINY, f"objective={objective}", "stages=[train]", f"hydra.run.dir={d}")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        out[objective] = str(d)
    return out


def test_greedy_sampling_writes_the_generators_greedy_continuation(runs, capsys):
    assert main([runs["next_token"], "--prompt", "def f(x):", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    res, ckpt = trained_run(runs["next_token"])
    model = run_model(res, ckpt, 256, torch.device("cpu"))
    ids = generate.autoregressive(model, torch.tensor([list(b"def f(x):")]), 12, temperature=0)[0].tolist()
    assert text == "def f(x):" + bytes(ids).decode("utf-8", errors="replace") + "\n"


def test_sampling_is_repeatable_by_seed(runs, capsys):
    outs = []
    for seed in (3, 3, 4):
        assert main([runs["next_token"], "--max-new-tokens", "40", "--temperature", "1", "--seed", str(seed)]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_a_diffusion_run_writes_a_block_in_steps(runs, capsys):
    assert main([runs["mdlm"], "--prompt", "import ", "--max-new-tokens", "16", "--steps", "4",
                 "--remasking", "low_confidence"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("import ") and text.endswith("\n") and len(text.encode()) >= len("import ") + 1


@pytest.mark.parametrize("args,says", [
    (["{tmp}"], "no results.json there; give the folder of a run that trained"),
    (["{tmp}/broken"], "its results.json cannot be read (JSONDecodeError"),
    (["{run}", "--top-p", "0"], "--top-p=0.0 must be in (0, 1]"),
    (["{run}", "--max-new-tokens", "0"], "--max-new-tokens=0 must be >= 1"),
    (["{run}", "--prompt", ""], "needs a prompt of at least one token"),
    pytest.param(["{run}", "--device", "cuda"], "has no usable CUDA GPU; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_folders_and_settings_say_what_is_wrong(runs, tmp_path, capsys, args, says):
    argv = [a.format(tmp=tmp_path, run=runs["next_token"]) for a in args]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{broken")
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2 and says in capsys.readouterr().err
    assert (tmp_path / "broken" / "results.json").read_text() == "{broken"  # someone's folder is left as it was


def test_the_codec_round_trips_bytes_and_bpe_and_streams_whole_characters(tmp_path):
    from runner.bpe import train_bpe
    from runner.codec import Codec

    text = "héllo wörld, déjà vu " * 50
    tok = train_bpe(text, 300)
    path = str(tmp_path / "tok.json")
    tok.save(path)
    for data in ({"tokenizer": "bytes"}, {"tokenizer": "bpe", "tokenizer_path": path}):
        codec = Codec(data)
        ids = codec.encode("déjà vu")
        assert codec.decode(ids) == "déjà vu"
        assert "".join(codec.stream(i) for i in ids) == "déjà vu"  # no half characters on the way
    assert len(Codec({"tokenizer": "bpe", "tokenizer_path": path}).encode("déjà vu")) < len("déjà vu".encode())


def test_the_sample_stage_writes_what_the_cli_writes_into_the_folder_and_a_wandb_table(runs, tmp_path, capsys):
    from wandb_reader import read_offline_run

    d = tmp_path / "stage"
    p = run_cli(*TINY, "stages=[train,sample]", "sample.temperature=0", "sample.max_new_tokens=24",
                "sample.prompts=['def ','x = ']", "logger=wandb", f"hydra.run.dir={d}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((d / "results.json").read_text())
    rows = res["sample"]["samples"]
    assert [r["prompt"] for r in rows] == ["def ", "x = "] and res["sample"]["settings"]["temperature"] == 0
    md = (d / "samples.md").read_text()
    for r in rows:
        assert main([str(d), "--prompt", r["prompt"], "--max-new-tokens", "24", "--temperature", "0"]) == 0
        assert capsys.readouterr().out == r["prompt"] + r["text"] + "\n"  # the CLI's greedy text, token for token
        assert f"{r['prompt']}{r['text']}\n" in md
    logged = [h for h in read_offline_run(str(d))["history"] if "samples/_type" in h]
    assert logged and logged[0]["samples/_type"] == "table-file" and logged[0]["samples/nrows"] == 2
    table = json.loads(open(glob.glob(os.path.join(str(d), "**", "media", "table", "samples*.json"),
                                      recursive=True)[0]).read())
    assert table["columns"] == ["prompt", "text"] and table["data"] == [[r["prompt"], r["text"]] for r in rows]


def test_the_sample_stage_alone_adds_its_section_to_a_trained_run(runs, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(runs["mdlm"], d)
    before = json.loads((d / "results.json").read_text())
    p = run_cli("stages=[sample]", "sample.max_new_tokens=8", "sample.steps=2", f"hydra.run.dir={d}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    after = json.loads((d / "results.json").read_text())
    assert after["train"] == before["train"] and after["produced_by"] == {"train": 1, "sample": 2}
    assert after["sample"]["settings"]["steps"] == 2 and len(after["sample"]["samples"]) == 3
    assert after["config"]["stages"] == ["train", "sample"] and after["config"]["objective"]["name"] == "mdlm"
    step = before["train"]["steps"]
    assert f"attempt 2, the weights after training step {step}: " in (d / "samples.md").read_text()
