"""lm-evaluation-harness over this runner's models (runner/lm_harness.py): the adapter's log-likelihoods, rolling
log-likelihoods and greedy generations equal the runner's own scoring and decoding of the same strings; lm-eval's
evaluator runs tasks defined here over local JSON files (offline) and its accuracies and perplexities follow from
those scores; eval.tasks=[lm_eval] and python -m runner.lm_eval give the same numbers; bad inputs are refused."""
import json
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from runner import generate  # noqa: E402
from runner.checkpoint import run_model, trained_run  # noqa: E402
from runner.codec import Codec  # noqa: E402
from runner.lm_harness import RunnerLM, run_tasks  # noqa: E402
from runner.scoring import IGNORE, token_nll  # noqa: E402

from test_end_to_end import TINY, run_cli  # noqa: E402

SEP = list(b"\n\n")  # the document separator: what an empty context stands for
MC = [{"context": "def f(x):\n    return", "choices": [" x", " def", " 1("], "label": 0},
      {"context": "import", "choices": [" os", " )", "\n\n"], "label": 0},
      {"context": "class A", "choices": [":", " =", "(object):"], "label": 2},
      {"context": "for i in range(", "choices": ["10):", "x]", "'a'"], "label": 0}]
TEXTS = ["x = 1\ny = 2\n" * 12, "def g():\n    pass\n"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval") / "run"
    p = run_cli(*TINY, "stages=[train]", "train.steps=12", f"hydra.run.dir={d}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res, ckpt = trained_run(str(d))
    return str(d), run_model(res, ckpt, 256, torch.device("cpu")), Codec(res["data"])


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two tasks of lm-eval's YAML format over local JSON files: multiple choice and rolling perplexity."""
    d = tmp_path_factory.mktemp("tasks")
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (d / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (d / "mc.yaml").write_text(
        "task: local_mc\n" + head.format(d / "mc.jsonl") + 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (d / "text.yaml").write_text(
        "task: local_text\n" + head.format(d / "text.jsonl") + 'output_type: loglikelihood_rolling\n'
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
        "  - metric: byte_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
        "  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n")
    return str(d)


def own_logprob(model, ids: list[int], k: int) -> tuple[float, bool]:
    """The runner's scoring: log p of the last k of ids given the ones before (token_nll), and greedy or not."""
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    y[:, :y.shape[1] - k] = IGNORE
    nll = token_nll(model, x, y, 1)
    with torch.no_grad():
        best = model(x)[0][0, -k:, :model.vocab_size].argmax(-1)
    return -float(nll.sum()), bool((best == torch.tensor(ids[-k:])).all())


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4)


def requests(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_equals_the_runners_scoring_of_the_same_tokens(run, batch_size):
    _, model, codec = run
    L = 32
    pairs = [("def f(x):", " return x"), ("", "import os"), ("class A" * 20, ":\n    pass"), ("a = ", "1")]
    got = RunnerLM(model, codec, L, batch_size).loglikelihood(requests("loglikelihood", pairs))
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        ids = (list(ctx.encode()) or SEP) + list(cont.encode())
        want = own_logprob(model, ids[-(L + 1):], len(cont.encode()))  # the context cut on the left to the window
        assert close(lp, want[0]) and greedy == want[1], (ctx, cont, lp, want)
    assert RunnerLM(model, codec, L).loglikelihood(requests("loglikelihood", [("x", "")])) == [(0.0, True)]


def test_rolling_loglikelihood_scores_every_token_once_after_the_separator(run):
    _, model, codec = run
    L = 32
    short, long = "x = 1\n", "def g(a, b):\n    return a + b\n" * 4  # 6 and 120 bytes
    got = RunnerLM(model, codec, L, 4).loglikelihood_rolling(requests("loglikelihood_rolling", [(short,), (long,)]))
    assert close(got[0], own_logprob(model, SEP + list(short.encode()), len(short))[0])
    ids, P, want = list(long.encode()), len(SEP), 0.0
    every = SEP + ids
    for start in range(0, len(ids), L):  # L targets per window, each with the longest context the window holds
        end = min(start + L, len(ids))
        want += own_logprob(model, every[max(0, P + end - L - 1):P + end], end - start)[0]
    assert close(got[1], want), (got[1], want)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(run):
    _, model, codec = run
    lm = RunnerLM(model, codec, 64)
    prompt = torch.tensor([list(b"def ")])
    greedy = bytes(generate.autoregressive(model, prompt, 40, temperature=0)[0].tolist()).decode("utf-8", "replace")
    stop = greedy[5:7]  # a stop string the greedy text meets
    got = lm.generate_until(requests("generate_until", [("def ", {"until": [stop], "max_gen_toks": 40}),
                                                        ("def ", {"until": ["\x00never"], "max_gen_toks": 9})]))
    assert got[0] == greedy[:greedy.index(stop)]
    assert got[1] == greedy[:9]


def test_lm_evals_evaluator_over_local_json_tasks_follows_from_the_adapters_scores(run, tasks):
    _, model, codec = run
    lm = RunnerLM(model, codec, 32, 4)
    out = run_tasks(lm, ["local_mc", "local_text"], include_path=tasks, builtin=False, log_samples=True)
    right = []
    for doc in MC:
        scores = [own_logprob(model, list(doc["context"].encode()) + list(c.encode()), len(c.encode()))[0]
                  for c in doc["choices"]]
        right.append(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    mc = out["tasks"]["local_mc"]
    assert mc["samples"] == len(MC) and close(mc["acc"], sum(right) / len(MC))
    for sample in out["samples"]["local_mc"]:
        doc = sample["doc"]
        for choice, resp in zip(doc["choices"], sample["resps"]):
            ids = list(doc["context"].encode()) + list(choice.encode())
            assert close(float(resp[0][0]), own_logprob(model, ids, len(choice.encode()))[0])
    rolled = RunnerLM(model, codec, 32, 4).loglikelihood_rolling(requests("loglikelihood_rolling",
                                                                         [(t,) for t in TEXTS]))
    nbytes = sum(len(t.encode()) for t in TEXTS)
    text = out["tasks"]["local_text"]
    assert close(text["bits_per_byte"], -sum(rolled) / nbytes / math.log(2))
    assert close(text["byte_perplexity"], math.exp(-sum(rolled) / nbytes))


def test_the_eval_task_and_the_cli_give_the_same_numbers(run, tasks, tmp_path, capsys):
    import shutil

    from runner.lm_eval import main

    d = tmp_path / "run"
    shutil.copytree(run[0], d)
    p = run_cli("stages=[eval]", "eval.tasks=[ppl,lm_eval]", "eval.lm_eval.tasks=[local_mc,local_text]",
                f"eval.lm_eval.include_path={tasks}", "eval.lm_eval.builtin=false", f"hydra.run.dir={d}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "lm_eval local_mc (4 samples): acc" in p.stdout
    stage = json.loads((d / "results.json").read_text())["eval"]["lm_eval"]
    assert main([str(d), "--tasks", "local_mc,local_text", "--include-path", tasks, "--no-builtin",
                 "--output", str(tmp_path / "out.json"), "--max-length", str(stage["settings"]["max_length"]),
                 "--batch-size", "8"]) == 0
    assert "local_text" in capsys.readouterr().out
    cli = json.loads((tmp_path / "out.json").read_text())
    assert cli["tasks"] == stage["tasks"] and stage["settings"]["max_length"] == 32  # the run's seq_len


@pytest.mark.parametrize("args,says", [
    (["--tasks", "nope", "--include-path", "{tasks}", "--no-builtin"], "['nope'] not found among lm-eval's tasks"),
    (["--tasks", "local_mc", "--no-builtin"], "--no-builtin needs --include-path"),
    (["--tasks", "local_mc", "--include-path", "{tmp}/none"], "is not a folder"),
    (["--tasks", ","], "--tasks names no task"),
])
def test_the_cli_refuses_bad_inputs_with_a_message(run, tasks, tmp_path, capsys, args, says):
    from runner.lm_eval import main

    try:
        code = main([run[0], *[a.format(tasks=tasks, tmp=tmp_path) for a in args]])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2 and says in capsys.readouterr().err
