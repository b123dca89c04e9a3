"""The token-mixer contract and the small pieces every mixer shares.

Every mixer, quadratic or linear, has the same face so the model, the benchmark and the tests never branch on
its kind:

* ``forward(x, state=None, *, need_state=True) -> (y, new_state)`` with ``x`` of shape (B, T, d_model).
  ``state=None`` runs the parallel (training) form over the whole sequence; passing the state returned by an
  earlier call continues the sequence (prefill then decode, one token or many). Continuing from a state gives
  the same outputs as one forward over the whole sequence. The input state is never modified in place.
  ``need_state=False`` lets training skip building the state (``new_state`` is then ``None``).
* A state is a ``dict[str, Tensor]``: its memory is the sum of the tensors' ``nbytes``, which the benchmark
  compares with the analytic ``state_bytes``.
* ``state_bytes(batch, n, dtype)``: analytic size of the state after ``n`` tokens.
* ``flops_per_token(n)``: forward FLOPs of one token at context length ``n`` (matmul FLOPs, 2 per MAC).
* ``self.d_model`` is set by every mixer.
* ``residual_out``: the names of the projections into the residual stream (for the scaled initialisation);
  ``aux_loss``: an extra loss from the last forward, or None.
* Causal or not: a mixer runs causally (position t sees positions <= t) unless it was built with ``causal=False``
  for a non-causal objective (runner/objectives, e.g. masked diffusion), where every position sees the whole
  sequence. ``bidirectional`` says whether it can; ``native_noncausal`` whether it does so itself (the quadratic
  mixers drop their causal mask: ``self.causal``) or is run as a forward and a reversed causal pass by
  :class:`runner.mixers.bidirectional.Bidirectional` (the linear mixers). A non-causal mixer has no decode state.

The decode step, ``step(x, state) -> (y, new_state)``: continues ``state`` by a few tokens x (B, T, d_model) for
inference (the model's ``decode_step``, the benchmark's decode loop). It guarantees:

* the same outputs and the same state as ``forward(x, state, need_state=True)``, up to float rounding (the
  arithmetic may be rearranged: fused projections, folded constants), with the same keys, shapes and dtypes, so
  either can continue from the other's state;
* the input state is never modified in place (new tensors are returned; the KV caches append into spare room
  after the cache, which :mod:`runner.mixers.kv_cache` keeps safe when one state is continued twice);
* it follows the current parameters: the tensors it derives from them (concatenated projection weights, folded
  gains) are cached by :meth:`Mixer.step_tensors` and rebuilt when any parameter changed in place (its version
  counter: optimizer steps, ``load_state_dict``, in-place edits under ``no_grad``), after ``to()`` / ``double()``
  / ``cuda()`` and after ``train()`` / ``eval()``. A parameter replaced by a new object, or written through
  ``.data`` (which bypasses the version counter), needs ``train()`` / ``eval()`` or
  :meth:`Mixer.clear_step_cache`.

The base class's ``step`` is ``forward``, so every mixer is correct by default; mixers override it with a path
that has no per-token shape checks, dtype promotions or module calls. Those paths run only for inference (no
autograd recording, no autocast, the parameters' dtype float32 or float64, a given state, at most a few tokens)
and fall back to ``forward`` otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.ops.backends import chunk_op
from runner.ops.norms import gated_rms_norm, rms_norm
from runner.ops.short_conv import causal_conv1d

State = dict  # dict[str, torch.Tensor]


@dataclass
class MixerConfig:
    """Fields every mixer understands. ``None`` means: derive from the model (num_heads = model.n_heads,
    head_dim = d_model // num_heads). Subclasses add their own fields; unknown keys are config errors."""

    name: str = "?"
    num_heads: Optional[int] = None
    head_dim: Optional[int] = None


class Mixer(nn.Module):
    """Base class of all token mixers. ``quadratic`` is True when cost and state grow with context."""

    quadratic: bool = False
    kernels: str = "torch"  # backend of the linear mixers' chunked ops (runner/ops/backends.py): torch | fla
    # names of the nn.Linear submodules that write into the residual stream: the model scales their initialisation
    # by 1/sqrt(2 n_layers) (GPT-2); every mixer declares its own (tested), none is found by its name's spelling
    residual_out: tuple = ()
    # a loss the mixer adds to the model's from its last forward (the sparse-attention indexer's KL), or None
    aux_loss: Optional[torch.Tensor] = None
    # True when the mixer can also run without its causal mask (every position sees the whole sequence), as a
    # non-causal objective needs (runner/objectives); native_noncausal: it does so itself, reading self.causal
    # (quadratic mixers: no mask), else it runs as two causal passes, forward and reversed (bidirectional.py)
    bidirectional: bool = True
    native_noncausal: bool = False
    causal: bool = True

    def forward(self, x: torch.Tensor, state: Optional[State] = None, *, need_state: bool = True):
        raise NotImplementedError

    def refuse_state_when_noncausal(self, state: Optional[State]) -> None:
        """A non-causal mixer has no state to continue: every call mixes the whole sequence."""
        if state is not None and not self.causal:
            raise ValueError(f"{type(self).__name__} runs non-causally: it has no state to continue; run the "
                             f"whole sequence")

    # -- the decode step (module docstring) ----------------------------------------------------------------------
    step_max_tokens: int = 8  # longer calls of ``step`` run ``forward`` (its chunked/parallel form)
    _step_cache = None  # (parameters, their version counters, the tensors build_step_tensors derived from them)

    def step(self, x: torch.Tensor, state: Optional[State]):
        """Continue ``state`` by the tokens x (B, T, d_model) for inference: the results of
        ``forward(x, state, need_state=True)`` (module docstring). Mixers with a fast path define
        :meth:`step_token` (one token) and :meth:`build_step_tensors`; a few tokens run it once per token."""
        if self.step_token is None:
            return self.forward(x, state, need_state=True)
        tensors, T = self.step_tensors(), x.shape[1]
        if (state is None or not 0 < T <= self.step_max_tokens or torch.is_grad_enabled()
                or x.dtype != tensors[0].dtype or torch.is_autocast_enabled(x.device.type) or not self.step_ready()):
            return self.forward(x, state, need_state=True)
        if T == 1:
            return self.step_token(x, state, tensors)
        ys = []
        for t in range(T):
            y, state = self.step_token(x[:, t:t + 1], state, tensors)
            ys.append(y)
        return torch.cat(ys, 1), state

    # step_token(x (B, 1, d_model), state, tensors) -> (y (B, 1, d_model), new_state): the fast path of one token,
    # with tensors = step_tensors() (whose first element is in the parameters' dtype); None = no fast path
    step_token = None

    def step_ready(self) -> bool:
        """False where the fast path does not apply to this mixer's mode (e.g. training-only work)."""
        return True

    def build_step_tensors(self):
        """The tensors a fast ``step`` derives from the parameters (called without autograd)."""
        raise NotImplementedError

    def step_tensors(self):
        """:meth:`build_step_tensors`, cached until a parameter changes in place (its version counter), the
        module moves or changes dtype (``_apply``: ``to``, ``double``, ``cuda``...) or ``train()`` runs."""
        cache = self._step_cache
        if cache is not None:
            params, versions, value = cache
            if versions == [p._version for p in params]:
                return value
        params = list(self.parameters())
        with torch.no_grad():
            value = self.build_step_tensors()
        self._step_cache = (params, [p._version for p in params], value)
        return value

    def clear_step_cache(self) -> None:
        self._step_cache = None

    def train(self, mode: bool = True):
        self._step_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._step_cache = None
        return super()._apply(fn, *args, **kwargs)

    def chunk_op(self, name: str):
        """The chunked op ``name`` of this mixer's kernel backend (``kernels=``)."""
        return chunk_op(name, self.kernels)

    def state_bytes(self, batch: int, n: int, dtype: torch.dtype = torch.float32) -> int:
        raise NotImplementedError

    def flops_per_token(self, n: int) -> int:
        raise NotImplementedError

    def proj_flops(self) -> int:
        """FLOPs per token of every nn.Linear inside the mixer (2 per weight)."""
        return 2 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))


def state_nbytes(state) -> int:
    """Bytes actually held by a state: the sum of its tensors (nested dicts, lists and tuples allowed)."""
    if state is None:
        return 0
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class RMSNorm(nn.Module):
    """RMSNorm. ``zero_centered=True`` stores the gain as w with scale (1 + w), w initialised at 0
    (Qwen3-Next's QK-norm and layer norms)."""

    def __init__(self, dim: int, eps: float = 1e-6, zero_centered: bool = False):
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centered else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.zero_centered)  # keeps only x and 1/rms for the backward

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` as one fused call, for inputs in the weight's dtype (the decode step)."""
        if x.dtype != self.weight.dtype or self.zero_centered:
            return self(x)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """Output norm of the gated linear mixers: RMSNorm(o) * act(z) (Gated DeltaNet / Qwen3-Next use SiLU,
    Kimi Delta Attention and lightning attention a sigmoid)."""

    def __init__(self, dim: int, eps: float = 1e-6, activation: str = "silu"):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if activation not in ("silu", "sigmoid"):
            raise ValueError(f"GatedRMSNorm activation must be 'silu' or 'sigmoid', got {activation!r}")
        self.activation = activation

    def forward(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(o, z, self.weight, self.eps, self.activation)  # keeps only o, z and 1/rms


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps), the convention of flash-linear-attention and Qwen3-Next."""
    return x * torch.rsqrt(x.pow(2).sum(dim=dim, keepdim=True) + eps)


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time (kernel ``size``), optional SiLU, as in Mamba2, Gated DeltaNet
    and KDA. The state is the last ``size - 1`` inputs, (B, channels, size - 1)."""

    def __init__(self, channels: int, size: int = 4, activation: Optional[str] = "silu", bias: bool = False):
        super().__init__()
        if size < 1:
            raise ValueError(f"conv_size must be >= 1, got {size}")
        self.channels, self.size, self.activation = channels, size, activation
        self.weight = nn.Parameter(torch.empty(channels, 1, size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor, tail: Optional[torch.Tensor] = None):
        """x: (B, T, C). Returns (y (B, T, C), new_tail (B, C, size - 1))."""
        y, new_tail = causal_conv1d(x, self.weight, self.bias, None if tail is None else tail.transpose(1, 2),
                                    self.activation)
        return y, new_tail.transpose(1, 2)

    def state_bytes(self, batch: int, dtype: torch.dtype = torch.float32) -> int:
        return batch * self.channels * (self.size - 1) * dtype_bytes(dtype)

    def flops_per_token(self) -> int:
        return 2 * self.channels * self.size

    def taps(self) -> torch.Tensor:
        """The kernel as (size, channels), for :func:`conv_step`."""
        return self.weight.detach().reshape(self.channels, self.size).t().contiguous()


def conv_step(x: torch.Tensor, tail: torch.Tensor, taps: torch.Tensor, bias: Optional[torch.Tensor] = None):
    """:class:`ShortConv` with SiLU of one new input x (B, C) after ``tail`` (B, C, K - 1), the inputs just before
    it: the dot of each channel's taps (K, C) with its window. Returns y (B, C) and the new tail (B, C, K - 1), a
    view of the window, which is kept time-major (B, K, C) as ShortConv's own tail is (the input tail is not
    modified)."""
    window = torch.cat([tail.transpose(1, 2), x.unsqueeze(1)], 1)  # (B, K, C)
    y = torch.linalg.vecdot(window, taps, dim=1)
    return F.silu(y if bias is None else y.add_(bias)), window[:, 1:].transpose(1, 2)


def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, base: float = 10000.0, dtype=torch.float32):
    """cos, sin of shape (T, rotary_dim // 2) for integer positions (T,)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim))
    ang = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of x (B, T, H, D) in the rotate-half convention
    (GPT-NeoX, Llama, Qwen); the remaining channels pass through (partial RoPE)."""
    r = 2 * cos.shape[-1]
    xr, xp = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return torch.cat([out, xp], dim=-1) if xp.shape[-1] else out


# (rotary_dim, width, offset, base, dtype, device) -> (cos, sin, perm) of rope_tables, the longest built so far
_ROPE_TABLES: dict = {}


def rope_tables(length: int, rotary_dim: int, width: int, offset: int = 0, base: float = 10000.0,
                dtype=torch.float32, device=None):
    """RoPE of the decode step as ``x * cos + x[..., perm] * sin`` (:func:`rope_step`): cos and sin (L, 1, width)
    for positions 0 .. L - 1 (L >= length), rotating channels offset .. offset + rotary_dim of ``width`` in the
    rotate-half convention of :func:`apply_rope` (cos 1 and sin 0 on the others), and perm (width,), the channel
    that meets each sin. Values are those of :func:`rope_cos_sin`; tables are shared by the layers and grown by
    doubling."""
    key = (rotary_dim, width, offset, base, dtype, device)
    have = _ROPE_TABLES.get(key)
    if have is not None and have[0].shape[0] >= length:
        return have
    L = max(1024, 2 * length, 0 if have is None else 2 * have[0].shape[0])
    c, s = rope_cos_sin(torch.arange(L, device=device), rotary_dim, base, dtype)  # (L, r / 2)
    h, after = rotary_dim // 2, width - offset - rotary_dim
    ones, zeros = c.new_ones(L, offset), c.new_zeros(L, offset)
    cos = torch.cat([ones, c, c, c.new_ones(L, after)], -1)[:, None]
    sin = torch.cat([zeros, -s, s, c.new_zeros(L, after)], -1)[:, None]
    idx = torch.arange(width, device=device)
    perm = torch.cat([idx[:offset], idx[offset + h:offset + 2 * h], idx[offset:offset + h], idx[offset + 2 * h:]])
    _ROPE_TABLES[key] = (cos, sin, perm)
    return cos, sin, perm


def rope_step(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` of x (B, T, heads, width) with rows of :func:`rope_tables` (T, 1, width)."""
    return torch.addcmul(x * cos, x.index_select(-1, perm), sin)
