"""Checkpoints, and which weights a run's stages measure.

``checkpoints/last.pt`` (written atomically) holds the model, the optimizer, the step, the data sampler's and torch's
RNG states, the running statistics and the *identity*: the settings that made these weights (model, mixers, layout,
seq_len, seed, data, train, precision).

It is read with ``torch.load(weights_only=True)``: tensors and plain values only, so opening a checkpoint from a shared
run folder never runs code from it (a file holding other objects is refused with what to do).

:func:`plan` decides, before any work, what an attempt's stages run on:

* with ``train`` in the stages: the folder's checkpoint is resumed when its identity matches the command (else the
  command is refused, naming each differing setting), a finished one is not trained again, and a folder without one
  trains from step 0;
* without ``train``: the folder's checkpoint is loaded and its settings are *adopted* (so ``stages=[eval]
  eval.tasks=[positions]`` in a trained run's folder re-evaluates that run, whatever the defaults say); a setting
  given on the command line that contradicts the checkpoint is refused; a folder without a checkpoint is refused,
  since the stages would measure an untrained model, unless ``weights=random`` asks for exactly that.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf

from .errors import ActionableError
from .run_folder import changes

IDENTITY_KEYS = ("model", "attention", "full", "objective", "ratio", "pattern", "seq_len", "seed", "train", "data",
                 "precision")
# what a checkpoint written before a setting existed held for it (dotted keys)
IDENTITY_DEFAULTS = {"objective": {"name": "next_token"}, "data.options": {}, "model.recursion": {"name": "none"},
                     "train.ema": 0.0}
# settings that do not change the weights: they may differ between the attempts on one checkpoint
FREE_KEYS = ("train.log_every", "train.eval_every", "train.eval_batches", "train.ckpt_every", "data.cache_dir",
             "data.hub_timeout_s")
NOT_ADOPTED = ("precision",)  # an evaluation or benchmark may run in another precision than the training did


class CorruptCheckpoint(ActionableError):
    pass


class FolderConflict(ActionableError):
    """What the command asks for does not fit what the run folder holds."""

    exit_code = 2


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", "last.pt")


def save(path: str, payload: dict) -> None:
    """Atomic: a reader (or a resumed run) sees the previous checkpoint or the new one, never half of one."""
    import torch

    from .common import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def identity(cfg) -> dict:
    """The settings a checkpoint's weights come from."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in IDENTITY_KEYS}


def load(path: str, map_location="cpu") -> dict:
    """The checkpoint at ``path``; a damaged or foreign file is an error that says what to do."""
    import torch

    try:
        # weights_only: tensors and plain values only; a file that needs other Python objects is refused unread,
        # since unpickling them would run code from a folder someone may have shared
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a checkpoint's dict")
        missing = [k for k in ("model", "optimizer", "step", "identity") if k not in state]
        if missing:
            raise KeyError(f"no {', '.join(missing)} in it")
        for key, v in IDENTITY_DEFAULTS.items():
            *path, last = key.split(".")
            node = state["identity"]
            for p in path:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.setdefault(last, copy.deepcopy(v))
        return state
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError, AttributeError,
            pickle.UnpicklingError, zipfile.BadZipFile) as e:
        from .errors import explain

        if isinstance(e, OSError) and explain(e) is not None:
            raise explain(e) from None
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise CorruptCheckpoint(
                f"the checkpoint {path} holds Python objects other than tensors and plain values, so it is not a "
                f"checkpoint of this runner and it was not loaded (unpickling such objects could run code from it). "
                f"Use the run's own checkpoint; to train this run again from step 0, move it away (mv {path} "
                f"{path}.foreign) and rerun; or choose another run folder (hydra.run.dir=...)") from None
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise CorruptCheckpoint(
            f"the checkpoint {path} cannot be read ({type(e).__name__}: {first}): it is damaged (a disk that filled "
            f"up or a copy cut short) or not a checkpoint of this runner. To train this run again from step 0, move "
            f"it away (mv {path} {path}.damaged) and rerun; or choose another run folder (hydra.run.dir=...)") from None


def _differences(theirs: dict, mine: dict) -> dict:
    return {k: v for k, v in changes(theirs, mine).items()
            if not any(k == f or k.startswith(f + ".") for f in FREE_KEYS)}


def _show(diff: dict, limit: int = 8) -> str:
    items = [f"{k}: checkpoint {a!r}, this command {b!r}" for k, (a, b) in list(diff.items())[:limit]]
    more = len(diff) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def explicit_keys() -> Optional[set]:
    """The config keys the command line set (``seq_len``, ``model.d_model``, a group such as ``model``), from
    Hydra's record of the overrides; with ``experiment=NAME`` or ``arch=NAME``, the keys that study or preset sets.
    None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError, AttributeError):
        return None
    keys = set()
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if key in ("experiment", "arch"):
            keys |= _preset_keys(key, o.split("=", 1)[1] if "=" in o else "")
        elif key and not key.startswith("hydra"):
            keys.add(key)
    return keys


def _preset_keys(group: str, name: str) -> set:
    from .paths import CONF_DIR, EXPERIMENTS_DIR

    path = os.path.join(EXPERIMENTS_DIR if group == "experiment" else os.path.join(CONF_DIR, group), f"{name}.yaml")
    if not os.path.exists(path):
        return set()
    node = OmegaConf.to_container(OmegaConf.load(path))
    keys = set()
    for d in node.get("defaults") or []:
        if isinstance(d, dict):
            keys |= {k.split("/")[-1].strip() for k in d}
    for k, v in node.items():
        if k in ("defaults", "hydra"):
            continue
        keys |= {f"{k}.{sub}" for sub in v} if isinstance(v, dict) else {k}
    return keys


def _adopt(cfg, key: str, value) -> None:
    """cfg[key] = value: field by field into a schema section (model, train, data), whole for a free mapping (the
    mixers' options differ from mixer to mixer) or a plain value."""
    import dataclasses

    if isinstance(value, dict) and dataclasses.is_dataclass(OmegaConf.get_type(cfg, key)):
        for sub, v in value.items():
            cfg[key][sub] = v
    else:
        cfg[key] = value


@dataclass
class Plan:
    """What the stages of one attempt run on."""

    cfg: object  # the config to run: the command's, with a loaded checkpoint's weight settings adopted
    source: str  # train (trained or resumed in this attempt) | checkpoint (loaded) | random (weights=random)
    state: Optional[dict] = None  # the loaded checkpoint
    path: Optional[str] = None
    same_weights: bool = True  # the previous record's sections were measured on these weights
    train_done: bool = False  # the checkpoint holds the whole training: nothing left to train
    adopted: dict = field(default_factory=dict)  # {key: [checkpoint, this command]}: settings taken from the checkpoint

    def describe(self) -> dict:
        out: dict = {"source": self.source}
        if self.state is not None:
            out.update(checkpoint=self.path, step=int(self.state["step"]),
                       steps=int(self.state["identity"].get("train", {}).get("steps", self.state["step"])))
        return out


def plan(cfg, run_dir: str, previous: Optional[dict], log=print) -> Plan:
    """Decide (before any work) which weights the stages of this attempt use; refuse what cannot be right."""
    stages = list(cfg.stages)
    path = checkpoint_path(run_dir)
    have = os.path.exists(path)
    prev_status = (previous or {}).get("status")
    if "train" in stages:
        if not have:
            if prev_status == "completed":
                raise FolderConflict(
                    f"{run_dir} holds a completed run but no checkpoint ({path}), so training here would start from "
                    f"step 0 and replace it: choose another run folder (hydra.run.dir=...)")
            return Plan(cfg, "train", same_weights=False)
        state = load(path)
        diff = _differences(state["identity"], identity(cfg))
        if diff:
            raise FolderConflict(
                f"{path} was written by a run with other settings ({_show(diff)}). To continue that run, rerun it with "
                f"its own settings (they are under config in {os.path.join(run_dir, 'results.json')}); to evaluate "
                f"or benchmark it, leave train out of the stages (e.g. stages=[eval]: its settings are then taken "
                f"from the checkpoint); to train anew, choose another run folder (hydra.run.dir=...)")
        done = int(state["step"]) >= int(cfg.train.steps)
        return Plan(cfg, "train", state, path, same_weights=True, train_done=done)

    if cfg.weights == "random":
        if have:
            raise FolderConflict(
                f"weights=random measures an untrained model, but {run_dir} holds a trained checkpoint ({path}): "
                f"choose another run folder (hydra.run.dir=...), or drop weights=random to measure the trained one")
        same = ((previous or {}).get("weights") or {}).get("source") == "random" and not _differences(
            {k: (previous.get("config") or {}).get(k) for k in IDENTITY_KEYS if k not in NOT_ADOPTED},
            {k: v for k, v in identity(cfg).items() if k not in NOT_ADOPTED})
        return Plan(cfg, "random", same_weights=same)
    if not have:
        raise FolderConflict(
            f"stages={stages} without train would measure an untrained model: {run_dir} holds no checkpoint "
            f"({path}). Add train to the stages (stages=[train,{','.join(stages)}]), point resume= (or "
            f"hydra.run.dir=) at the folder of a trained run, or set weights=random to measure an untrained model "
            f"on purpose")
    state = load(path)
    theirs, mine = state["identity"], identity(cfg)
    diff = {k: v for k, v in _differences(theirs, mine).items() if k.split(".")[0] not in NOT_ADOPTED}
    told = explicit_keys() or set()
    contradicted = {k: v for k, v in diff.items() if any(k == e or k.startswith(e + ".") for e in told)}
    if contradicted:
        raise FolderConflict(
            f"the checkpoint {path} fixes the model's settings, and this command sets some of them otherwise "
            f"({_show(contradicted)}). Leave those settings out (the checkpoint's are used), or train a model with "
            f"them in another run folder (hydra.run.dir=...). To score windows longer than the training length, use "
            f"eval.tasks=[extrapolation]")
    cfg = copy.deepcopy(cfg)
    for k in IDENTITY_KEYS:
        if k not in NOT_ADOPTED and any(d == k or d.startswith(k + ".") for d in diff):
            _adopt(cfg, k, theirs[k])
    if diff:
        log(f"weights: using the settings of the checkpoint {path}: " + "; ".join(
            f"{k}={a!r} (this command's default: {b!r})" for k, (a, b) in list(diff.items())[:8]))
    return Plan(cfg, "checkpoint", state, path, same_weights=True, adopted=diff)


# -- another run's weights: the judge of generated text (bench.judge) ---------------------------------------------
# An autoregressive run of the same data scores the samples of the bench stage by their perplexity under it, as
# MDLM judges its samples with GPT-2 (the scores: runner/scoring.py sample_quality). It must have seen the same
# data in the same tokenization (fingerprint, tokenizer and vocabulary are compared); else it is refused with the
# reason, before any work where that can be known then.

class JudgeUnusable(ActionableError, ValueError):
    exit_code = 2


class NoTrainedRun(ActionableError, ValueError):
    exit_code = 2


def judge_problems(folder: str) -> tuple[dict, str]:
    """(the judge run's results, its checkpoint path) after checking it can judge at all."""
    try:
        res, ckpt = trained_run(folder)
    except NoTrainedRun as e:
        raise JudgeUnusable(f"bench.judge={e}; the judge is a completed autoregressive run (objective=next_token) "
                            f"of the same data") from None
    objective = ((res.get("config") or {}).get("objective") or {}).get("name", "next_token")
    if res.get("status") != "completed" or objective != "next_token":
        raise JudgeUnusable(f"bench.judge={folder}: the judge must be a completed autoregressive run "
                            f"(objective=next_token); that one is {res.get('status')!r} with objective={objective}")
    return res, ckpt


def weights(state: dict) -> dict:
    """The weights a checkpoint's stages measure: the moving average where the run kept one (train.ema), else the
    trained weights."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def check_fits(model, state: dict, path: str) -> None:
    """The checkpoint's weights, and their moving average where it kept one, have the names and shapes of the
    parameters of ``model``, which the checkpoint's settings build; else (a file edited by hand, or written by a
    version of the runner whose layers differ) an error that says what to do, before any stage runs."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for entry in ("model", "ema"):
        sd = state.get(entry)
        if sd is None and entry == "ema":
            continue
        if not isinstance(sd, dict):
            wrong = [f"it is a {type(sd).__name__}, not weights by name"]
        else:
            have = {k: tuple(v.shape) if hasattr(v, "shape") else type(v).__name__ for k, v in sd.items()}
            wrong = [f"{k} is missing" for k in want if k not in have]
            wrong += [f"{k} has shape {list(have[k])} where the model has {list(want[k])}"
                      if isinstance(have[k], tuple) else f"{k} is a {have[k]}, not a tensor"
                      for k in want if k in have and have[k] != want[k]]
            wrong += [f"{k} is not a weight of the model" for k in have if k not in want]
        if wrong:
            more = f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            raise CorruptCheckpoint(
                f"the checkpoint {path} does not fit the model its settings build: in its {entry!r} weights, "
                f"{'; '.join(wrong[:3])}{more}. It was edited, or written by a version of the runner whose layers "
                f"differ. To train this run again from step 0, move it away (mv {path} {path}.foreign) and rerun; "
                f"or choose another run folder (hydra.run.dir=...)")


def run_model(res: dict, ckpt: str, vocab_size: int, device, state: Optional[dict] = None):
    """The trained model of a run (its results.json ``res`` and checkpoint path), in eval mode on ``device``;
    ``state``: the checkpoint already loaded from ``ckpt``, if the caller has it."""
    from .model import build_model

    model = build_model(OmegaConf.create(res["config"]), int(vocab_size))
    state = state if state is not None else load(ckpt)
    check_fits(model, state, ckpt)
    model.load_state_dict(weights(state))
    return model.to(device).eval()


def trained_run(folder: str) -> tuple[dict, str]:
    """(results, checkpoint path) of a run folder that holds a trained model; else what to do, as an error."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise NoTrainedRun(f"{folder}: no results.json there; give the folder of a run that trained (python -m "
                           f"runner ... hydra.run.dir=<folder>)")
    try:
        with open(path) as f:
            res = json.load(f)
        if not isinstance(res, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:  # read only: someone else's folder is never moved or rewritten
        raise NoTrainedRun(f"{folder}: its results.json cannot be read ({type(e).__name__}: {e}); give the folder "
                           f"of a run that trained") from None
    ckpt = checkpoint_path(folder)
    if not os.path.isfile(ckpt) or not isinstance(res.get("config"), dict):
        raise NoTrainedRun(f"{folder}: it holds no trained model ({ckpt} is missing); rerun it with the train stage")
    if "vocab_size" not in (res.get("data") or {}):
        raise NoTrainedRun(f"{folder}: its results.json records no data section (vocab_size); rerun it")
    return res, ckpt


def load_judge(folder: str, data_info: dict, device):
    """The judge's trained model in eval mode, after checking it saw the data this run sees (``data_info``: the
    run's results.json data section)."""
    res, ckpt = judge_problems(folder)
    theirs = res.get("data") or {}
    for key in ("fingerprint", "tokenizer", "vocab_size"):
        if theirs.get(key) != data_info.get(key):
            raise JudgeUnusable(f"bench.judge={folder}: it was trained on other data ({key} {theirs.get(key)!r}, "
                                f"this run's {data_info.get(key)!r}); a judge must share the data and tokenizer")
    return run_model(res, ckpt, data_info["vocab_size"], device)
