"""Checks of the mixer contract shared by the per-mixer tests (DESIGN.md, "The mixer contract")."""
from __future__ import annotations

import torch

from runner.mixers import build_mixer, state_nbytes


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error ||a - b|| / ||b||, the tolerance style of flash-linear-attention's tests."""
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make(spec: dict, d_model: int = 64, n_heads: int = 4, layer_idx: int = 0, n_layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return build_mixer(spec, d_model, n_heads, layer_idx, n_layers).double().eval()


def check_decode_equals_forward(mixer, T: int = 37, pieces=(1, 5, 1, 13), batch: int = 2, tol: float = 1e-9):
    """One forward over T tokens == prefill of the first part then decoding the rest in uneven pieces and
    one token at a time. Returns the max relative error."""
    d = mixer.d_model
    torch.manual_seed(1)
    x = torch.randn(batch, T, d, dtype=torch.float64)
    with torch.no_grad():
        y_full, _ = mixer(x, None)
        outs, state, t = [], None, 0
        sizes = list(pieces)
        while t < T:
            step = sizes.pop(0) if sizes else 1
            step = min(step, T - t)
            y, state = mixer(x[:, t:t + step], state)
            outs.append(y)
            t += step
        y_inc = torch.cat(outs, 1)
    err = rel_rms(y_inc, y_full)
    assert err < tol, f"decode from state differs from full forward: rel rms {err:.3e}"
    return err, state


def check_state_bytes(mixer, ns=(1, 7, 64), batch: int = 2):
    """The analytic state_bytes equals the bytes of the tensors the mixer actually holds after n tokens."""
    d = mixer.d_model
    for n in ns:
        x = torch.randn(batch, n, d, dtype=torch.float64)
        with torch.no_grad():
            _, state = mixer(x, None)
        measured = state_nbytes(state)
        analytic = mixer.state_bytes(batch, n, torch.float64)
        assert measured == analytic, f"n={n}: measured state {measured} B != analytic {analytic} B"
