"""The UT transform's inverse by blocks (runner/ops/triangular.py) against the batched triangular solve."""
import pytest
import torch

from runner.ops.triangular import unit_lower_inverse


def _solve(L):
    eye = torch.eye(L.shape[-1], dtype=L.dtype).expand_as(L)
    return torch.linalg.solve_triangular(L, eye, upper=False, unitriangular=True)


@pytest.mark.parametrize("C", [1, 2, 8, 16, 64, 128, 48, 24, 100])
def test_the_inverse_by_blocks_equals_the_triangular_solve(C):
    torch.manual_seed(C)
    L = torch.randn(3, 2, C, C, dtype=torch.float64) * 0.3  # diagonal and upper part present: both must be ignored
    T = unit_lower_inverse(L)
    assert T.shape == L.shape and T.is_contiguous()
    torch.testing.assert_close(T, _solve(L), rtol=1e-12, atol=1e-12)
    eye = torch.eye(C, dtype=L.dtype)
    torch.testing.assert_close(T @ (eye + L.tril(-1)), eye.expand_as(T), rtol=0, atol=1e-10)


def test_the_inverse_by_blocks_is_accurate_in_float32():
    torch.manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(16, 64, 64), dim=-1)
    L = (0.9 * k @ k.mT).tril(-1)  # the UT transform's matrix of unit keys, beta 0.9
    ref = _solve(L.double())
    err = (unit_lower_inverse(L).double() - ref).abs().max() / ref.abs().max()
    err_solve = (_solve(L).double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5 and err < 20 * err_solve, (err.item(), err_solve.item())
