"""``data=multihop``: multi-hop associative recall. The context lists the edges of a few chains
n_0 -> n_1 -> ... -> n_H as (source, target) token pairs in random order; at the end each chain is queried once
as [HOP_k] n_0, and the answer (at the n_0 position) is n_k, the node k hops down the chain. One hop is MQAR's
recall (Zoology, Arora et al. 2023); k hops need k recalls in sequence, a composition a fixed-size state or an
attention layer has to carry out within the model's depth.

Layout of an example of length L with C chains of H edges (H = the largest of ``hops``)::

    s1 t1 s2 t2 ... s_E t_E   0 0 0 ... 0   HOP_k1 n0(chain1) HOP_k2 n0(chain2) ...
    \\___ 2E = 2CH tokens __/  \\_ filler _/  \\________ 2C query tokens _________/

Nodes are distinct within an example (tokens 1..``nodes``); token 0 fills (and pads); HOP_k = nodes + k. Each
query's k is drawn uniformly from ``hops``. Tag ``hops`` (the k of each answer). Longer examples put more filler
between the context and the queries.
"""
from __future__ import annotations

import torch

from . import synthetic
from ..common import whole
from ..scoring import IGNORE
from .synthetic import Examples, Task, as_examples


class MultiHop(Task):
    name = "multihop"
    TAGS = {"hops": "value"}
    OPTIONS = {"hops": [1, 2, 3], "chains": 4, "nodes": 256, "test_lengths": None}

    @property
    def max_hop(self) -> int:
        return max(self.options["hops"])

    @property
    def vocab_size(self) -> int:
        return int(self.options["nodes"]) + self.max_hop + 1

    def min_length(self) -> int:
        C, H = int(self.options["chains"]), self.max_hop
        return 2 * C * H + 2 * C

    def problems(self) -> list[str]:
        o, out = self.options, []
        hops = o["hops"]
        if not (isinstance(hops, (list, tuple)) and hops and all(isinstance(k, int) and not isinstance(k, bool)
                                                                 and 1 <= k <= 64 for k in hops)):
            return [f"data.options.hops={hops!r} must be a non-empty list of hop counts in [1, 64], e.g. [1, 2, 3]"]
        if whole(out, "data.options.chains", o["chains"], 1, 4096, "4", " (chains per example, each queried once)"):
            need = int(o["chains"]) * (self.max_hop + 1)
            whole(out, "data.options.nodes", o["nodes"], need, 1 << 20, max(256, need),
                  f" (distinct node tokens; {o['chains']} chains of {self.max_hop + 1} nodes need at least {need})")
        return out

    def describe(self) -> str:
        o = self.options
        return f"multi-hop recall ({o['chains']} chains, hops {list(o['hops'])}, {o['nodes']} node tokens)"

    def generate(self, n: int, length: int, g: torch.Generator, split: str) -> Examples:
        C, H, V = int(self.options["chains"]), self.max_hop, int(self.options["nodes"])
        hops = torch.tensor(list(self.options["hops"]))
        E = C * H
        nodes = torch.rand(n, V, generator=g).argsort(1)[:, :C * (H + 1)] + 1  # distinct within each example
        chain = nodes.view(n, C, H + 1)
        src, dst = chain[:, :, :-1].reshape(n, E), chain[:, :, 1:].reshape(n, E)
        order = torch.rand(n, E, generator=g).argsort(1)
        x = torch.zeros(n, length, dtype=torch.long)
        x[:, 0:2 * E:2] = src.gather(1, order)
        x[:, 1:2 * E:2] = dst.gather(1, order)
        k = hops[torch.randint(0, len(hops), (n, C), generator=g)]  # (n, C) hops of each chain's query
        q0 = length - 2 * C
        x[:, q0::2] = V + k
        x[:, q0 + 1::2] = chain[:, :, 0]
        y = torch.full((n, length), IGNORE, dtype=torch.long)
        y[:, q0 + 1::2] = chain.gather(2, k.unsqueeze(-1)).squeeze(-1)
        tag = torch.zeros(n, length, dtype=torch.long)
        tag[:, q0 + 1::2] = k
        return as_examples(x, y, hops=tag)


TASK = MultiHop
PROVIDES, TOKENIZERS = synthetic.PROVIDES, synthetic.TOKENIZERS

source_problems, load, vocab_size, notes = synthetic.registry_functions(TASK)
