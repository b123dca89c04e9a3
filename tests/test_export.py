"""python -m runner.export: a trained run in the Hub's model format (safetensors + config.json), offline.
from_pretrained of the exported folder rebuilds the exact layout and gives the run checkpoint's logits; bad
folders are refused without writing anything, and a failed export leaves nothing behind."""
import json
import os

import pytest
import torch

from runner import export as export_mod
from runner.checkpoint import run_model, trained_run
from runner.model import HybridLM

from test_end_to_end import TINY, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for objective, extra in (("next_token", ["ratio=3:1"]), ("mdlm", ["ratio=1:1", "attention=kda"])):
        d = tmp_path_factory.mktemp("export") / objective
        p = run_cli(*TINY, f"objective={objective}", *extra, "stages=[train]", f"hydra.run.dir={d}")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        out[objective] = str(d)
    return out


@pytest.mark.parametrize("objective", ["next_token", "mdlm"])
def test_from_pretrained_of_an_export_gives_the_checkpoints_logits(runs, tmp_path, capsys, objective):
    out = tmp_path / "hub"
    assert export_mod.main([runs[objective], str(out)]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "README.md", "runner.json"} <= set(os.listdir(out))
    res, ckpt = trained_run(runs[objective])
    ref = run_model(res, ckpt, 256, torch.device("cpu"))
    model = HybridLM.from_pretrained(str(out)).eval()
    assert model.layer_types == ref.layer_types and model.objective == objective and model.causal == ref.causal
    assert [type(b.mixer).__name__ for b in model.blocks] == [type(b.mixer).__name__ for b in ref.blocks]
    assert model.head.weight is model.embed.weight  # tied as trained
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], ref(idx)[0])
    meta = json.loads((out / "runner.json").read_text())
    assert meta["step"] == res["train"]["steps"] and meta["data"]["vocab_size"] == 256
    assert json.loads((out / "config.json").read_text())["layer_types"] == ref.layer_types
    card = (out / "README.md").read_text()
    assert f"# {res['config']['attention']['name']} + " in card and "".join(ref.layer_types) in card
    assert "HybridLM.from_pretrained(" in card


def test_from_pretrained_refuses_weights_that_do_not_fit_the_layout(runs, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "hub"
    assert export_mod.main([runs["next_token"], str(out)]) == 0
    HybridLM.from_pretrained(str(out))
    assert "Loading weights" not in capsys.readouterr().out  # the mixin's print for a local folder is not ours
    weights = load_file(str(out / "model.safetensors"))
    dropped = next(k for k in weights if k.startswith("blocks.0."))
    save_file({k: v for k, v in weights.items() if k != dropped}, str(out / "model.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):  # not a model left partly at its initialisation
        HybridLM.from_pretrained(str(out))


def test_a_bpe_runs_tokenizer_travels_with_the_export(tmp_path):
    import tokenizers

    text = tmp_path / "words.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(3000)))
    run = tmp_path / "run"
    p = run_cli(*TINY, "data=text", f"data.path={text}", "data.tokenizer=bpe", "data.vocab_size=300",
                f"data.cache_dir={tmp_path / 'cache'}", "attention=softmax", "stages=[train]", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = tmp_path / "hub"
    export_mod.export(str(run), str(out))
    meta = json.loads((out / "runner.json").read_text())
    assert meta["data"]["tokenizer"] == "bpe" and meta["data"]["tokenizer_path"] == "tokenizer.json"
    mine = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    theirs = tokenizers.Tokenizer.from_file(trained_run(str(run))[0]["data"]["tokenizer_path"])
    assert mine.encode("def f7(x):").ids == theirs.encode("def f7(x):").ids
    assert HybridLM.from_pretrained(str(out)).vocab_size == 300 == meta["data"]["vocab_size"]


def test_bad_folders_are_refused_and_nothing_is_written(runs, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert export_mod.main([runs["next_token"], str(busy)]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert os.listdir(busy) == ["keep.txt"]
    assert export_mod.main([str(tmp_path / "nowhere"), str(tmp_path / "a")]) == 2
    assert "no results.json there" in capsys.readouterr().err and not (tmp_path / "a").exists()
    import shutil

    nodata = tmp_path / "nodata"
    shutil.copytree(runs["next_token"], nodata)
    r = json.loads((nodata / "results.json").read_text())
    del r["data"]
    (nodata / "results.json").write_text(json.dumps(r))
    assert export_mod.main([str(nodata), str(tmp_path / "b")]) == 2
    assert "records no data section (vocab_size)" in capsys.readouterr().err and not (tmp_path / "b").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_mod.main([runs["next_token"], str(empty)]) == 0  # an empty folder is filled
    assert "model.safetensors" in os.listdir(empty)


def test_a_failed_export_leaves_nothing_behind(runs, tmp_path, monkeypatch):
    def broken(self, path):
        open(os.path.join(path, "model.safetensors"), "w").write("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(HybridLM, "save_pretrained", broken)
    with pytest.raises(OSError):
        export_mod.export(runs["next_token"], str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_an_export_killed_midway_is_cleaned_up_by_the_next(runs, tmp_path, capsys):
    """kill -9 leaves the temporary folder beside the target: the next export to that place removes it, and only
    the leftovers of processes that are gone (not a live export's, not another target's)."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f".out.export-{host}-{gone.pid}-x1"
    live = tmp_path / f".out.export-{host}-{os.getpid()}-x2"
    other = tmp_path / f".else.export-{host}-{gone.pid}-x3"
    for d in (dead, live, other):
        d.mkdir()
        (d / "model.safetensors").write_text("half")
    export_mod.export(runs["next_token"], str(tmp_path / "out"))
    assert not dead.exists() and live.exists() and other.exists()
    assert f"removed {dead}: the unfinished export of a process that ended" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "out"])


def test_the_cli_runs_as_a_module(runs, tmp_path):
    import subprocess
    import sys

    from test_end_to_end import ROOT

    p = subprocess.run([sys.executable, "-m", "runner.export", runs["next_token"], str(tmp_path / "m")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith(f"exported {runs['next_token']} to {tmp_path / 'm'}: README.md, config.json")
