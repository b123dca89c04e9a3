"""Generation (runner/generate.py): autoregressive decoding through the cache equals greedy decoding by full
forwards; diffusion sampling reveals what its schedule says (with S = L exactly one token per step) and leaves no
[MASK]; the samplers' truncations keep the right tokens."""
import pytest
import torch

from runner import generate
from runner.model import build_model

V = 40


@pytest.fixture
def models(compose):
    def make(objective):
        torch.manual_seed(0)
        return build_model(compose("model=tiny", f"objective={objective}"), V).eval()
    return make


def test_autoregressive_greedy_decoding_equals_full_forwards(models):
    model = models("next_token")
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(0))
    streamed = []
    out = generate.autoregressive(model, prompt, 7, temperature=0, on_token=streamed.append)
    seq = prompt
    with torch.no_grad():
        for _ in range(7):
            nxt = model(seq)[0][:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(out, seq[:, 5:]) and torch.equal(torch.stack(streamed, 1), out)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_diffusion_with_as_many_steps_as_tokens_reveals_one_token_per_step(models, remasking):
    model = models("mdlm")
    prompt = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(1))
    trace = []
    out = generate.diffusion(model, prompt, 12, 12, remasking, generator=torch.Generator().manual_seed(2),
                             trace=trace)
    assert len(trace) == 12 and all(torch.equal(c, torch.ones(3, dtype=torch.long)) for c in trace)
    assert out.shape == (3, 12) and (out < V).all()  # no [MASK] left, only the data's tokens


def test_fewer_steps_reveal_the_schedules_counts(models):
    assert generate.reveal_counts(10, 4) == [2, 3, 2, 3] and sum(generate.reveal_counts(7, 7)) == 7
    trace = []
    generate.diffusion(models("mdlm"), torch.zeros(2, 0, dtype=torch.long), 10, 4, "low_confidence",
                       generator=torch.Generator().manual_seed(3), trace=trace)
    assert [int(c[0]) for c in trace] == [2, 3, 2, 3]


def test_ancestral_sampling_reveals_l_over_s_per_step_in_expectation(models):
    model = models("mdlm")
    B, L, S = 256, 16, 4
    trace = []
    out = generate.diffusion(model, torch.zeros(B, 0, dtype=torch.long), L, S, "ancestral",
                             generator=torch.Generator().manual_seed(4), trace=trace)
    assert (out < V).all() and int(sum(c.sum() for c in trace)) == B * L  # the last step reveals what is left
    # step k reveals each of the L * t masked tokens with probability 1 / (S - k): L / S in expectation
    for c in trace[:-1]:
        mean, sd = float(c.double().mean()), float((L / S) ** 0.5 / B ** 0.5)
        assert abs(mean - L / S) < 5 * sd, (mean, L / S)


def test_the_samplers_keep_the_right_tokens():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    g = torch.Generator().manual_seed(5)
    assert int(generate.sample_logits(logits, 0)) == 1
    assert all(int(generate.sample_logits(logits, 1.0, top_k=1, generator=g)) == 1 for _ in range(20))
    drawn = {int(generate.sample_logits(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert drawn == {1, 3}
    drawn = {int(generate.sample_logits(logits, 1.0, top_p=0.5, generator=g)) for _ in range(200)}
    assert drawn == {1, 3}  # p(1) ~ 0.46 < 0.5: the nucleus needs the next one too
    drawn = {int(generate.sample_logits(logits, 1.0, top_p=0.3, generator=g)) for _ in range(50)}
    assert drawn == {1}


def test_each_generator_refuses_the_other_objectives_model(models):
    with pytest.raises(ValueError, match="needs a causal model"):
        generate.autoregressive(models("mdlm"), torch.zeros(1, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="needs a masked-diffusion model"):
        generate.diffusion(models("next_token"), torch.zeros(1, 2, dtype=torch.long), 3, 3)
    with pytest.raises(ValueError, match="remasking='best' is not known"):
        generate.diffusion(models("mdlm"), torch.zeros(1, 2, dtype=torch.long), 3, 3, "best")
