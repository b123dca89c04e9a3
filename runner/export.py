"""``python -m runner.export <run folder> <out dir>``: a trained run in the Hub's model format.

The folder it writes holds ``model.safetensors`` (the weights), ``config.json`` (the model's constructor
arguments: ``HybridLM.from_pretrained(<out dir>)`` rebuilds the exact layout from it), ``README.md`` (the model
card), ``runner.json`` (the run's settings, data and tokenizer, its step) and, for a BPE run, ``tokenizer.json``.
``--push-to-hub <user>/<name>`` then uploads it (a machine that can reach the Hub, logged in). The folder is
written beside its final place and renamed into it, so it is whole or absent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile

from .checkpoint import load, run_model, trained_run
from .errors import ActionableError


class ExportRefused(ActionableError, ValueError):
    exit_code = 2


def model_card(res: dict, model, step: int) -> str:
    """The exported folder's README.md: what the model is, what it was trained on, what it scored, how to load."""
    c = res.get("config") or {}
    data, ev, tr = res.get("data") or {}, res.get("eval") or {}, res.get("train") or {}
    mixers = f"{c.get('attention', {}).get('name')} + {c.get('full', {}).get('name')}"
    lines = ["---", "library_name: hybrid-attention-runner", "tags:", "- hybrid-attention", "- linear-attention",
             "---", "", f"# {mixers}, {''.join(model.layer_types)} ({c.get('model', {}).get('name')})", "",
             f"- layout: {''.join(model.layer_types)} (L = {c.get('attention', {}).get('name')}, F = "
             f"{c.get('full', {}).get('name')}), ratio {c.get('ratio')}; d_model {model.d_model}; "
             f"{model.n_params():,} parameters",
             f"- objective: {model.objective}; trained {step} steps at seq_len {c.get('seq_len')}, seed "
             f"{c.get('seed')}, on {data.get('source', c.get('data', {}).get('name'))} ({data.get('tokenizer')} "
             f"tokens, vocabulary {data.get('vocab_size')})"]
    if tr.get("tokens"):
        lines.append(f"- training: {tr['tokens']:,} tokens, final loss {tr.get('final_loss', float('nan')):.4f}")
    if ev.get("bpb") is not None:
        lines.append(f"- held-out: {ev['bpb']:.4f} bits per byte, loss {ev.get('loss', float('nan')):.4f} "
                     f"nats/token")
    lines += ["", "Load it (the runner installed: `pip install -e .` in its repository):", "", "```python",
              "from runner.model import HybridLM", "", "model = HybridLM.from_pretrained(\"<this folder or repo id>\")",
              "```", "", "`runner.json` holds the run's full settings and data record.", ""]
    return "\n".join(lines)


def export(run_dir: str, out_dir: str) -> str:
    """Write the run's trained model to ``out_dir`` (which must not exist yet, or be empty); its path."""
    res, ckpt = trained_run(run_dir)
    data = res["data"]  # trained_run checked it records the vocabulary
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ExportRefused(f"{out_dir} already exists and is not an empty folder: give a new one (nothing was "
                            f"written)")
    state = load(ckpt)
    model = run_model(res, ckpt, data["vocab_size"], "cpu", state=state)  # the checkpoint is read once
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(os.path.abspath(out_dir))}.export-{socket.gethostname()}-"
    removed = _remove_leftovers(parent, prefix)
    tmp = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    try:
        model.save_pretrained(tmp)
        meta = {"run_dir": os.path.abspath(run_dir), "step": int(state["step"]), "identity": state["identity"],
                "data": data, "status": res.get("status")}
        if data.get("tokenizer") == "bpe":
            shutil.copyfile(data["tokenizer_path"], os.path.join(tmp, "tokenizer.json"))
            meta["data"] = {**data, "tokenizer_path": "tokenizer.json"}
        with open(os.path.join(tmp, "README.md"), "w") as f:  # our card in place of the mixin's generic one
            f.write(model_card(res, model, int(state["step"])))
        with open(os.path.join(tmp, "runner.json"), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in removed:
        print(f"removed {path}: the unfinished export of a process that ended without cleaning up (killed?)")
    return out_dir


def _remove_leftovers(parent: str, prefix: str) -> list[str]:
    """The temporary folders that exports to the same place, by processes of this machine that are gone (killed
    with SIGKILL, say), left beside it: removed, their paths returned."""
    removed = []
    for name in os.listdir(parent):
        pid = name[len(prefix):].split("-", 1)[0]
        if not name.startswith(prefix) or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(os.path.join(parent, name))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the folder of a run that trained (its results.json and checkpoints/last.pt)")
    p.add_argument("out_dir", help="the folder to write (new, or empty)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="then upload the folder to this Hub repository (needs the network and a login)")
    a = p.parse_args(argv)
    try:
        out = export(a.run_dir, a.out_dir)
    except (ActionableError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = sorted(os.listdir(out))
    print(f"exported {a.run_dir} to {out}: {', '.join(files)}")
    print(f"load it with: from runner.model import HybridLM; model = HybridLM.from_pretrained({out!r})")
    if a.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        create_repo(a.push_to_hub, repo_type="model", exist_ok=True)
        url = upload_folder(repo_id=a.push_to_hub, folder_path=out, repo_type="model")
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
