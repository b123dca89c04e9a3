"""python -m runner.sample: what a trained run writes, for both objectives, through the run's own checkpoint and
tokenizer; greedy sampling equals the generator's greedy decoding; bad folders and settings get a clear error."""
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
    from runner.sample import Codec

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
