"""The hybrid language model: embedding -> blocks (RMSNorm -> mixer -> RMSNorm -> SwiGLU MLP) -> RMSNorm -> head.

Each block's mixer is the efficient mixer (`attention=`, 'L') or the full one (`full=`, 'F') as the layout says,
the way Qwen3-Next, Kimi Linear and MiniMax-M1 interleave them. Pre-norm residual blocks as in Llama.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from . import objectives, recursion as recursive
from .mixers import build_mixer
from .mixers.base import RMSNorm


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)

    def step(self, x):
        """:meth:`forward` without the module calls (the decode step; float32/float64, no autocast)."""
        g, u = F.linear(x, self.gate_up.weight).chunk(2, dim=-1)
        return F.linear(F.silu(g).mul_(u), self.down.weight)


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: nn.Module, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(d_model, eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model, eps)
        self.mlp = SwiGLU(d_model, mlp_hidden)

    def forward(self, x, state=None, need_state=True):
        y, new_state = self.mixer(self.norm1(x), state, need_state=need_state)
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x, new_state

    def step(self, x, state):
        """:meth:`forward` through the mixer's decode step (runner/mixers/base.py, ``Mixer.step``)."""
        y, new_state = self.mixer.step(self.norm1.step(x), state)
        x = x + y
        return x + self.mlp.step(self.norm2.step(x)), new_state


def default_mlp_hidden(d_model: int) -> int:
    return 16 * math.ceil(8 * d_model / 3 / 16)


class HybridLM(nn.Module, PyTorchModelHubMixin, library_name="hybrid-attention-runner",
               tags=["hybrid-attention", "linear-attention"]):
    """The language model: embedding, a stack of blocks (efficient 'L' and full 'F' mixers in ``layer_types``'s
    order), final norm and head. The Hub's model format comes with huggingface_hub's mixin: ``save_pretrained``
    writes model.safetensors and a config.json of this constructor's arguments, which ``from_pretrained`` rebuilds
    the exact layout from (``python -m runner.export`` writes a trained run's), strictly: every weight or none."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, layer_types: Sequence[str], attention: dict,
                 full: dict, mlp_hidden: Optional[int] = None, norm_eps: float = 1e-6, tie_embeddings: bool = True,
                 init_std: float = 0.02, kernels: str = "torch", objective: str = "next_token",
                 checkpoint: bool = False, objective_settings: Optional[dict] = None,
                 recursion: Optional[dict] = None):
        super().__init__()
        # activation checkpointing per block: training keeps each block's input only and recomputes the block
        # in the backward (the usual remedy for activation memory; about one more forward of time)
        self.checkpoint = checkpoint
        self.objective = objective  # the training objective's name (runner/objectives): its loss is this model's
        self.objective_settings = dict(objective_settings or {})  # its other settings (conf/objective/<name>.yaml)
        obj = objectives.get(objective)
        self.causal = obj.CAUSAL  # False: every mixer sees the whole sequence (runner/mixers/bidirectional.py)
        self.layer_types = list(layer_types)
        # vocab_size: the data's tokens; the objective may add its own after them (masked diffusion's [MASK] =
        # vocab_size), which the embedding and the head have rows for
        self.vocab_size, self.d_model = vocab_size, d_model
        self.n_tokens = vocab_size + getattr(obj, "EXTRA_TOKENS", 0)
        n = len(self.layer_types)
        hidden = mlp_hidden or default_mlp_hidden(d_model)
        self.embed = nn.Embedding(self.n_tokens, d_model)
        blocks = []
        for i, kind in enumerate(self.layer_types):
            spec = attention if kind == "L" else full
            mixer = build_mixer(spec, d_model, n_heads, layer_idx=i, n_layers=n, kernels=kernels, causal=self.causal)
            blocks.append(Block(d_model, mixer, hidden, norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, norm_eps)
        self.head = nn.Linear(d_model, self.n_tokens, bias=False)
        self._init(init_std, n)
        trm = recursive.settings(recursion)  # recursion=trm: the stack is one tiny network run many times
        self.recursion = recursive.Recursion(d_model, trm) if trm is not None else None
        if trm is not None:
            recursive.lecun_init(self.blocks)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def _init(self, std: float, n_layers: int):
        """GPT-2 style: N(0, std) for projections and embeddings, output projections of each residual branch (the
        mixers' ``residual_out`` and the MLP's ``down``) scaled by 1/sqrt(2 n_layers). Mixer-specific parameters
        (decays, gates, norms, convs) keep the mixers' own initialisation."""
        nn.init.normal_(self.embed.weight, std=std)
        for block in self.blocks:
            last = {f"mixer.{n}" for n in block.mixer.residual_out} | {"mlp.down"}
            for name, mod in block.named_modules():
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=std / math.sqrt(2 * n_layers) if name in last else std)
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)

    @property
    def mixers(self):
        return [b.mixer for b in self.blocks]

    def forward(self, idx: torch.Tensor, state: Optional[list] = None, need_state: bool = False,
                targets: Optional[torch.Tensor] = None):
        """idx (B, T) -> logits (B, T, vocab), list of per-layer states (or None).
        With ``targets``: (total loss for backward, language-model loss in nats/token) instead, so that a
        DistributedDataParallel wrapper sees the whole training computation in its forward."""
        if targets is not None:
            return self.loss(idx, targets)
        if self.recursion is not None:
            if state is not None or need_state:
                raise ValueError("a recursive model (recursion=trm) answers a whole input at once; it keeps no state")
            return recursive.answer(self, idx), None
        x = self.embed(idx)
        new_states = []
        recompute = self.checkpoint and self.training and state is None and not need_state and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x, s = torch.utils.checkpoint.checkpoint(block, x, None, False, use_reentrant=False)
            else:
                x, s = block(x, None if state is None else state[i], need_state=need_state)
            new_states.append(s)
        logits = self.head(self.norm(x))
        return logits, (new_states if need_state else None)

    @torch.no_grad()
    def decode_step(self, idx: torch.Tensor, state: list):
        """Continue the per-layer ``state`` (from ``forward(..., need_state=True)`` or an earlier decode_step) by
        the tokens idx (B, T), T small (one when decoding): (logits (B, T, vocab), new states), the same as
        ``forward(idx, state, need_state=True)`` up to float rounding, through each mixer's fast step, without
        autograd. The input states are not modified, so one state can be continued more than once. Meant for
        inference (eval mode); the mixers fall back to ``forward`` where their fast step does not apply."""
        if (state is None or idx.shape[1] > 8 or torch.is_autocast_enabled(idx.device.type)
                or self.embed.weight.dtype not in (torch.float32, torch.float64)):
            return self(idx, state, need_state=True)  # prefill, autocast, half precision: the eager path
        x = F.embedding(idx, self.embed.weight)
        new_states = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_states.append(s)
        return F.linear(self.norm.step(x), self.head.weight), new_states

    def aux_loss(self) -> Optional[torch.Tensor]:
        """Sum of the mixers' auxiliary losses from the last forward (e.g. the sparse-attention indexer's KL)."""
        losses = [m.aux_loss for m in self.mixers if m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss for backward, language-model loss in nats/token)."""
        if self.recursion is not None:  # deep supervision (runner/recursion.py)
            return recursive.loss(self, idx, targets)
        logits, _ = self(idx)
        lm = objectives.get(self.objective).loss(logits, targets)
        aux = self.aux_loss()
        return (lm + aux if aux is not None else lm), lm.detach()

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs):
        """The mixin's loading, always strict (a weight file that does not fit the layout is an error, never a
        model left partly at its random initialisation), and for a local folder without the mixin's print."""
        if os.path.isdir(model_id):
            keys = ("revision", "cache_dir", "force_download", "local_files_only", "token")
            model = cls(**{k: v for k, v in kwargs.items() if k not in keys})
            return cls._load_as_safetensor(model, os.path.join(model_id, "model.safetensors"), map_location, True)
        return super()._from_pretrained(model_id=model_id, map_location=map_location, strict=True, **kwargs)

    def n_params(self, embeddings: bool = True) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if not embeddings:
            total -= self.embed.weight.numel()
        return total

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        return sum(m.state_bytes(batch, n, dtype) for m in self.mixers)

    def train_flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs of one token of a window of ``seq_len``: forward and backward, about three forwards
        (Kaplan et al. 2020), at the window's mean context (seq_len + 1) / 2 of a causal model (the whole window of
        a non-causal one). A recursive model: every pass forward, the last cycle of each supervision step backward
        too (at the most supervision steps: halting may stop a batch sooner)."""
        n = max(1, (seq_len + 1) // 2) if self.causal else seq_len
        if self.recursion is None:
            return 3 * self.flops_per_token(n)
        s = self.recursion.settings
        graded = 1 / s.cycles  # the share of the stack's runs with a backward: the last cycle of every step
        head = 2 * self.d_model * self.vocab_size * s.supervision_steps
        stack = self.flops_per_token(n) - head
        return int(stack * (1 + 2 * graded) + 3 * head)

    def flops_per_token(self, n: int) -> int:
        """Forward FLOPs of one token at context n: mixers + MLPs + head (a recursive model: the stack as often as
        all its supervision steps run it, the head once a step)."""
        mlp = sum(2 * sum(p.numel() for p in b.mlp.parameters()) for b in self.blocks)
        stack, head = sum(m.flops_per_token(n) for m in self.mixers) + mlp, 2 * self.d_model * self.vocab_size
        if self.recursion is None:
            return stack + head
        s = self.recursion.settings
        return s.supervision_steps * (s.passes_per_step * stack + head)


def build_model(cfg, vocab_size: int, layer_types: Optional[Sequence[str]] = None, device=None) -> HybridLM:
    """The model a composed configuration describes (``model``, ``attention``, ``full``, ``ratio`` / ``pattern``,
    ``kernels``, ``objective``): the one builder of every caller (runs, torchrun, the memory calculator, the benchmarks, the GPU
    check, the memory check before a run). ``layer_types`` defaults to the layout of ``ratio`` / ``pattern``;
    ``device="meta"`` builds it without memory (for counting)."""
    from omegaconf import OmegaConf

    from .layout import layer_types as layout

    m = cfg.model
    kinds = list(layer_types) if layer_types is not None else layout(m.n_layers, cfg.ratio, cfg.pattern)

    def spec(node) -> dict:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)

    def make():
        node = OmegaConf.select(cfg, "objective", default=None) if OmegaConf.is_config(cfg) else None
        settings = spec(node) if node is not None else {}
        objective = settings.pop("name", None) or "next_token"
        node = getattr(m, "recursion", None)
        recursion = spec(node) if node is not None else None
        return HybridLM(vocab_size, m.d_model, m.n_heads, kinds, spec(cfg.attention), spec(cfg.full), m.mlp_hidden,
                        m.norm_eps, m.tie_embeddings, m.init_std, kernels=cfg.kernels, objective=objective,
                        checkpoint=bool(getattr(m, "checkpoint", False)), objective_settings=settings,
                        recursion=recursion)

    if str(device) == "meta":
        with torch.device("meta"):
            return make()
    model = make()  # initialised on the CPU from torch's CPU generator, then moved: the same weights on any device
    return model.to(device) if device is not None else model
