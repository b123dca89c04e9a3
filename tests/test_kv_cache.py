"""runner/mixers/kv_cache.py: appending to a cache along time gives torch.cat's values, writes in place while
there is room, never overwrites another continuation of the same state, and keeps gradients."""
import torch

from runner.mixers.kv_cache import append_time


def _tokens(B, T, seed):
    return torch.randn(B, T, 3, 4, generator=torch.Generator().manual_seed(seed))


def test_single_token_appends_equal_cat_and_rarely_reallocate():
    cache, ref, buffers = _tokens(2, 5, 0), _tokens(2, 5, 0), set()
    with torch.no_grad():
        for t in range(1000):
            new = _tokens(2, 1, t + 1)
            cache = append_time(cache, new)
            ref = torch.cat([ref, new], 1)
            buffers.add(cache.untyped_storage().data_ptr())
    assert torch.equal(cache, ref) and cache.shape == (2, 1005, 3, 4)
    assert len(buffers) <= 4  # 1005 tokens: room for 256+ tokens at first, then 25% more each time


def test_two_continuations_of_one_state_do_not_overwrite_each_other():
    with torch.no_grad():
        state = append_time(_tokens(1, 8, 0), _tokens(1, 2, 1))  # a buffer with spare room
        a = append_time(state, _tokens(1, 3, 2))
        b = append_time(state, _tokens(1, 1, 3))  # branches from the same state: must not write into a's tokens
        a2 = append_time(a, _tokens(1, 1, 4))
    base = torch.cat([_tokens(1, 8, 0), _tokens(1, 2, 1)], 1)
    assert torch.equal(a2, torch.cat([base, _tokens(1, 3, 2), _tokens(1, 1, 4)], 1))
    assert torch.equal(b, torch.cat([base, _tokens(1, 1, 3)], 1))
    assert torch.equal(state, base)


def test_a_trimmed_window_keeps_appending_in_place():
    with torch.no_grad():
        cache = append_time(_tokens(1, 4, 0), _tokens(1, 1, 1))
        ref = torch.cat([_tokens(1, 4, 0), _tokens(1, 1, 1)], 1)
        for t in range(600):
            cache, ref = cache[:, -4:], ref[:, -4:]  # a sliding window of 4 keys, as softmax keeps
            new = _tokens(1, 1, t + 2)
            cache, ref = append_time(cache, new), torch.cat([ref, new], 1)
    assert torch.equal(cache, ref)
    assert cache._base.shape[1] <= 4 + 1 + 256 + 2  # the window's buffer did not grow with the steps


def test_gradients_flow_through_the_cat_fallback():
    prev = _tokens(1, 3, 0).requires_grad_()
    new = _tokens(1, 2, 1).requires_grad_()
    out = append_time(prev, new)
    (out * torch.arange(5.0)[None, :, None, None]).sum().backward()
    assert torch.equal(prev.grad, torch.arange(3.0)[None, :, None, None].expand_as(prev))
    assert torch.equal(new.grad, torch.arange(3.0, 5.0)[None, :, None, None].expand_as(new))


def test_inference_mode_and_dtype_are_kept():
    with torch.inference_mode():
        cache = _tokens(1, 2, 0).double()
        for t in range(3):
            cache = append_time(cache, _tokens(1, 1, t).double())
    assert cache.dtype == torch.float64 and cache.shape[1] == 5
