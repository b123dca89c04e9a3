"""What a training step keeps for its backward, module by module: the activation memory behind the bench stage's
training-step peak, per token and per layer, so that a difference between two layouts can be traced to the
piece that makes it (the chunked op, the projections, the short convolution, the gates, the norms, the MLP).

    python -m runner.benchmarks.saved                                   # small model, n 4096, 0:1 vs 1:0
    python -m runner.benchmarks.saved --n 16384 --layouts attention=gated_deltanet,ratio=1:0 attention=kda,ratio=1:0

Each layout is built like a run (``runner.model.build_model`` from the composed configuration, overrides as on
the command line), one forward + loss is run at length n under a saved-tensors hook, and every storage an
autograd node keeps is charged once, to the innermost module whose forward was running when it was first saved
(a storage shared by several nodes, such as a layer's input kept by three projections, counts once, for the
first). The table gives bytes per token, summed over the layers of each kind ('L' the efficient mixer, 'F' the
full one), by the module's path inside its block. The total is what the step keeps between its forward and its
backward; the training-step peak adds the weights, gradients, optimizer state and the backward's transients.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from rich.console import Console
from rich.table import Table


def saved_by_module(model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> dict:
    """{module path: bytes} of the storages autograd keeps for the backward of ``model.loss(idx, targets)``.
    The loss is run, not backpropagated; the graph is freed on return."""
    stack: list[str] = []
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def enter(mod, _args):
        stack.append(names[mod])

    def leave(mod, _args, _out):
        stack.pop()

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    owner: dict[int, tuple[str, int]] = {}

    def pack(t):
        st = t.untyped_storage()
        owner.setdefault(st.data_ptr(), (stack[-1] if stack else "(outside modules)", st.nbytes()))
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = model.loss(idx, targets)
        del loss
    finally:
        for h in handles:
            h.remove()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out: dict[str, int] = defaultdict(int)
    for ptr, (name, nbytes) in owner.items():
        if ptr not in params:  # the weights are kept anyway; this counts activations
            out[name] += nbytes
    return dict(out)


def by_kind(saved: dict, kinds: list[str]) -> dict:
    """Folds 'blocks.<i>.<path>' into ('L' or 'F', '<path>') summed over the layers of that kind."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for name, nbytes in saved.items():
        parts = name.split(".")
        if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
            out[(kinds[int(parts[1])], ".".join(parts[2:]) or "(block)")] += nbytes
        else:
            out[("-", name or "(model)")] += nbytes
    return dict(out)


def _build(overrides: list[str]):
    from ..config import compose_config
    from ..layout import layer_types
    from ..model import build_model

    cfg = compose_config(overrides)
    kinds = layer_types(cfg.model.n_layers, cfg.ratio, cfg.pattern)
    return build_model(cfg, vocab_size=256), kinds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="sequence length")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layouts", nargs="+", default=["attention=gated_deltanet,ratio=0:1",
                                                    "attention=gated_deltanet,ratio=1:0"],
                   help="one configuration per item: comma-separated overrides, as on the runner's command line")
    args = p.parse_args(argv)
    console = Console()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (args.batch, args.n + 1), generator=gen)
    tokens = args.batch * args.n
    results = {}
    for layout in args.layouts:
        model, kinds = _build([o for o in layout.split(",") if o])
        model.train()
        results[layout] = (by_kind(saved_by_module(model, idx[:, :-1], idx[:, 1:]), kinds), "".join(kinds))
    rows = sorted({key for r, _ in results.values() for key in r}, key=lambda k: (k[0] != "-", k))
    t = Table(title=f"kept for the backward, bytes per token (n {args.n}, batch {args.batch}, summed over the layers "
                    f"of each kind)")
    t.add_column("layer kind")
    t.add_column("module")
    for layout, (_, kinds) in results.items():
        t.add_column(f"{layout} ({kinds})", justify="right")
    for key in rows:
        cells = (f"{r[key] / tokens:,.0f}" if r.get(key) else "" for r, _ in results.values())
        t.add_row(key[0], key[1], *cells)
    t.add_row("", "[b]total[/]", *(f"[b]{sum(r.values()) / tokens:,.0f}[/]" for r, _ in results.values()))
    t.add_row("", "[b]total MB[/]", *(f"[b]{sum(r.values()) / 1e6:,.1f}[/]" for r, _ in results.values()))
    console.print(t)


if __name__ == "__main__":
    main()
