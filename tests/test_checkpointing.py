"""model.checkpoint=true (activation checkpointing per block): the same loss and gradients as without, for less
memory kept between the forward and the backward (measured with runner.benchmarks.saved's accounting)."""
from __future__ import annotations

import pytest
import torch

from runner.benchmarks.saved import saved_by_module
from runner.config import compose_config
from runner.model import build_model


@pytest.mark.parametrize("overrides", [["attention=gated_deltanet", "ratio=3:1"], ["attention=kda", "full=mla",
                                                                                   "ratio=1:1"]])
def test_checkpointing_keeps_the_math_and_saves_memory(overrides):
    idx = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(0))
    x, y = idx[:, :-1], idx[:, 1:]
    results = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(compose_config(overrides + [f"model.checkpoint={ckpt}"]), vocab_size=256)
        assert model.checkpoint is ckpt
        model.train()
        saved = sum(saved_by_module(model, x, y).values())
        loss, _ = model.loss(x, y)
        loss.backward()
        results[ckpt] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, saved)
    (l0, g0, s0), (l1, g1, s1) = results[False], results[True]
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-7, msg=name)
    assert s1 < 0.5 * s0, f"checkpointing kept {s1} bytes for the backward, without it {s0}"


def test_checkpointing_is_off_outside_training_and_with_state():
    model = build_model(compose_config(["model.checkpoint=true"]), vocab_size=256)
    model.eval()
    idx = torch.randint(0, 256, (1, 16))
    logits, state = model(idx, need_state=True)  # inference with a state: the ordinary forward
    assert state is not None and len(state) == len(model.blocks)
