"""DeltaNet (Schlag, Irie & Schmidhuber, "Linear Transformers Are Secretly Fast Weight Programmers", 2021; Yang et
al., "Parallelizing Linear Transformers with the Delta Rule over Sequence Length", NeurIPS 2024), in the layout of
flash-linear-attention's ``DeltaNet`` layer:

    q, k, v = SiLU(ShortConv(W_q x, W_k x, W_v x))          causal depthwise conv, kernel conv_size (4)
    q, k    = l2norm(q), l2norm(k)                         scale head_dim**-0.5 on q (inside the op)
    beta    = sigmoid(W_b x)                               per head
    S_t     = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t
    y       = W_o RMSNorm(o)                               (use_gate: RMSNorm(o) * SiLU(W_z x))

It is Gated DeltaNet without the decay (g = 0), so it shares :class:`runner.mixers.gated_deltanet.GatedDeltaNet`'s
code with no a/A_log/dt_bias parameters. Departures from the 2021 paper: the 2024 recipe (short conv, SiLU, L2-norm
q/k, sigmoid beta, output norm) rather than the 2021 feature map and sum normalisation. Options as Gated
DeltaNet's (``allow_neg_eigval``: beta in (0, 2), for state tracking); ``num_v_heads`` (a multiple of num_heads,
q/k heads shared by consecutive value heads) and ``expand_v`` are kept for the shared vocabulary.

State: ``{"conv": (B, 2*H*K + HV*Vh, conv_size - 1) in the input dtype (absent without short conv),
"S": (B, HV, K, Vh) in float32 (float64 for float64 inputs)}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from runner.mixers.gated_deltanet import GatedDeltaNet, _validate_common
from runner.mixers.base import MixerConfig


@dataclass
class DeltaNetConfig(MixerConfig):
    name: str = "deltanet"
    num_v_heads: Optional[int] = None  # value heads; None = num_heads; must be a multiple of num_heads
    expand_v: float = 1.0  # head_v_dim = head_dim * expand_v
    use_short_conv: bool = True
    conv_size: int = 4
    chunk_size: int = 64
    use_gate: bool = False  # output gate: RMSNorm(o) * SiLU(W_z x); False: RMSNorm(o)
    mode: str = "chunk"  # 'chunk' | 'recurrent'
    norm_eps: float = 1e-6
    keep_factors: bool = False  # chunked op keeps its intra-chunk factors for the backward (faster, ~3x memory)
    allow_neg_eigval: bool = False  # beta = 2 sigmoid(W_b x) in (0, 2): I - beta k k^T may have eigenvalue < 0

    def validate(self):
        _validate_common(self)


class DeltaNet(GatedDeltaNet):
    gated_decay = False

    def __init__(self, d_model: int, cfg: DeltaNetConfig, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, cfg, layer_idx=layer_idx, n_layers=n_layers)
