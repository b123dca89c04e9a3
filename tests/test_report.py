"""The sweep report on a synthetic sweep whose costs are exact power laws of n, so exponents and crossovers have
known values; the CLI, the Hydra callback and the single-run plots."""
import csv
import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest

from runner.plots import pareto_front, run_plots
from runner.report import ReportCallback, build_report, crossover, crossover_noise, error_head, scaling_exponent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LADDER = [32, 64, 128, 256, 512]


def bench_rows(ns, train, prefill, decode, train_mem, state, stop_at=None):
    """Rows whose costs are the given functions of n; from stop_at on, a timeout row ends the ladder."""
    rows = []
    for n in ns:
        if stop_at is not None and n >= stop_at:
            rows.append({"n": n, "status": "timeout", "reason": "one run took 99 s > bench.time_budget_s=30"})
            break
        rows.append({"n": n, "batch": 1, "train_step_s": train(n), "train_tokens_per_s": n / train(n),
                     "train_peak_bytes": train_mem(n), "prefill_s": prefill(n), "prefill_tokens_per_s": n / prefill(n),
                     "prefill_peak_bytes": train_mem(n) / 4, "decode_s_per_token": decode(n), "state_bytes": state(n),
                     "state_bytes_measured": state(n), "flops_per_token": 1000 * n, "status": "ok"})
    return rows


def fake_results(attention, ratio, layer_types, status="completed", bpb=None, bench=None, error=None,
                 full="gated_attention", model="small", seq_len=64, train=True):
    r = {"status": status,
         "config": {"attention": {"name": attention}, "full": {"name": full}, "ratio": ratio, "pattern": None,
                    "model": {"name": model, "d_model": 64}, "seq_len": seq_len, "seed": 0}}
    if layer_types:
        r.update(layer_types=list(layer_types), n_params=123_456, n_params_non_embedding=100_000)
    if train:
        r["train"] = {"steps": 10, "tokens": 10_240, "tokens_per_s": 5000.0, "final_loss": 1.5, "wall_s": 2.0}
    if bpb is not None:
        loss = bpb * math.log(2)  # byte tokens: nats/token = bpb * ln 2
        r["eval"] = {"loss": loss, "ppl": math.exp(loss), "bpb": bpb, "unigram_bpb": 4.9, "tokens": 4096}
    if bench is not None:
        r["bench"] = bench
    if error:
        r["error"] = error
    return r


def write(sweep, job, results):
    d = sweep / job
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(results))


SOFTMAX = dict(train=lambda n: 1e-6 * n**2, prefill=lambda n: 5e-7 * n**2, decode=lambda n: 1e-5 * n,
               train_mem=lambda n: 100.0 * n**2, state=lambda n: 4096 * n)
GDN = dict(train=lambda n: 1e-4 * n, prefill=lambda n: 5e-5 * n, decode=lambda n: 2e-3,
           train_mem=lambda n: 2e4 * n, state=lambda n: 65536)
GDN_ALL = dict(GDN, train=lambda n: 8e-5 * n, decode=lambda n: 1.5e-3, state=lambda n: 4 * 16384)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    s = tmp_path_factory.mktemp("multirun") / "2025-01-01" / "12-00-00"
    write(s, "0_softmax_1:0_64", fake_results("softmax", "1:0", "LLLL", bpb=2.0, bench=bench_rows(LADDER, **SOFTMAX)))
    write(s, "1_gated_deltanet_3:1_64", fake_results("gated_deltanet", "3:1", "LLLF", bpb=2.1,
                                                     bench=bench_rows(LADDER, **GDN)))
    write(s, "2_kda_3:1_64", fake_results(
        "kda", "3:1", "LLLF", status="failed",
        error="RuntimeError: boom in the kda chunk loop\nTraceback (most recent call last):\n  File \"x.py\", line 1"))
    write(s, "3_nope_3:1_64", fake_results(
        "nope", "3:1", None, status="invalid_config", train=False,
        error="invalid configuration:\n  - attention.name='nope' is not a known mixer\n  - seq_len=0 must be >= 1"))
    # a ladder that stops at a timeout: the largest n common to all completed jobs becomes 256
    write(s, "10_gated_deltanet_1:0_64", fake_results("gated_deltanet", "1:0", "LLLL", bpb=2.3,
                                                      bench=bench_rows(LADDER, stop_at=512, **GDN_ALL)))
    out = build_report(str(s))
    return s, out


def read_csv(path):
    with open(path, newline="") as f:
        return {r["job"]: r for r in csv.DictReader(f)}


def test_summary_csv_rows_exponents_and_crossovers(sweep):
    s, out = sweep
    rows = read_csv(s / "summary.csv")
    assert list(rows) == ["0_softmax_1:0_64", "1_gated_deltanet_3:1_64", "2_kda_3:1_64", "3_nope_3:1_64",
                          "10_gated_deltanet_1:0_64"]
    sm, gd, kda, bad, gd_all = rows.values()

    assert kda["status"] == "failed" and kda["error"] == "RuntimeError: boom in the kda chunk loop"
    assert bad["status"] == "invalid_config"
    assert "attention.name='nope'" in bad["error"] and "seq_len=0" in bad["error"]
    assert kda["exp_train_step_s"] == "" and kda["n_common"] == "" and kda["decode_ms_per_token"] == ""

    assert sm["attention"] == "softmax" and sm["ratio"] == "1:0" and sm["layer_types"] == "LLLL"
    assert gd["layer_types"] == "LLLF" and float(gd["full_fraction"]) == 0.25 and gd["full"] == "gated_attention"
    assert gd["model"] == "small" and gd["seq_len"] == "64" and gd["n_params"] == "123456"
    assert float(gd["bpb"]) == 2.1 and float(gd["ppl"]) == pytest.approx(2 ** 2.1)
    assert float(gd["train_tokens_per_s"]) == 5000.0 and float(gd["final_loss"]) == 1.5

    # the largest n measured by every completed job (the 1:0 ladder timed out at 512)
    assert {r["n_common"] for r in (sm, gd, gd_all)} == {"256"} and out["n_common"] == 256
    assert float(sm["decode_ms_per_token"]) == pytest.approx(1e-5 * 256 * 1e3)
    assert float(gd["decode_ms_per_token"]) == pytest.approx(2.0)
    assert float(sm["train_peak_bytes"]) == 100 * 256**2 and float(sm["state_bytes"]) == 4096 * 256

    for r, t, p, d, m, st in ((sm, 2, 2, 1, 2, 1), (gd, 1, 1, 0, 1, 0), (gd_all, 1, 1, 0, 1, 0)):
        assert float(r["exp_train_step_s"]) == pytest.approx(t, abs=1e-9)
        assert float(r["exp_prefill_s"]) == pytest.approx(p, abs=1e-9)
        assert float(r["exp_decode_s_per_token"]) == pytest.approx(d, abs=1e-9)
        assert float(r["exp_train_peak_bytes"]) == pytest.approx(m, abs=1e-9)
        assert float(r["exp_state_bytes"]) == pytest.approx(st, abs=1e-9)

    # crossovers against the all-softmax job of the same model and seq_len: 1e-4 n = 1e-6 n^2 at n = 100, ...
    assert sm["baseline"] == "" and gd["baseline"] == "0_softmax_1:0_64"
    assert float(gd["crossover_train_step_s"]) == pytest.approx(100)
    assert float(gd["crossover_prefill_s"]) == pytest.approx(100)
    assert float(gd["crossover_decode_s_per_token"]) == pytest.approx(200)
    assert float(gd["crossover_train_peak_bytes"]) == pytest.approx(200)
    assert float(gd_all["crossover_train_step_s"]) == pytest.approx(80)
    assert float(gd_all["crossover_decode_s_per_token"]) == pytest.approx(150)
    assert [c["job"] for c in out["crossovers"]] == ["1_gated_deltanet_3:1_64", "10_gated_deltanet_1:0_64"]


def test_report_md_lists_failures_crossovers_and_plots(sweep):
    s, out = sweep
    md = (s / "report.md").read_text()
    assert "5 jobs: 3 completed, 1 failed, 1 invalid_config" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| 1_gated_deltanet_3:1_64 ")]
    assert len(table) == 1
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[1] == "gated_deltanet 3:1 small" and cells[2] == "LLLF" and cells[3] == "123.46 k"
    assert cells[9] == "2.100" and cells[11] == "2.000" and cells[-5:] == ["1.00", "1.00", "0.00", "1.00", "0.00"]
    assert "n = 256" in md
    failed = md[md.index("## Jobs that did not complete"):md.index("## Crossover")]
    assert "**2_kda_3:1_64** (failed): RuntimeError: boom in the kda chunk loop" in failed
    assert "**3_nope_3:1_64** (invalid_config): invalid configuration: attention.name='nope'" in failed
    assert "0_softmax" not in failed
    cross = md[md.index("## Crossover"):]
    row = [ln for ln in cross.splitlines() if ln.startswith("| gated_deltanet 3:1 small |")]
    assert row and [c.strip() for c in row[0].strip("|").split("|")][1:] == [
        "softmax 1:0 small", "100", "100", "200", "200"]
    assert "Pareto front" in md
    for name in ("memory_vs_n.png", "time_vs_n.png", "quality_vs_ratio.png", "tradeoff.png"):
        assert f"]({name})" in md
    assert "](summary.csv)" in md


def test_plots_are_real_images(sweep):
    s, out = sweep
    names = sorted(os.path.basename(p) for p in out["plots"])
    assert names == ["memory_vs_n.png", "quality_vs_ratio.png", "time_vs_n.png", "tradeoff.png"]
    for p in out["plots"]:
        check_png(p)
    assert not [f for _, _, fs in os.walk(s) for f in fs if f.startswith(".tmp")]


def check_png(path):
    import numpy as np
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 20_000
    img = imread(path)
    h, w = img.shape[:2]
    assert h >= 400 and w >= 600, (path, img.shape)
    flat = img[..., :3].reshape(-1, 3)
    assert float(flat.std()) > 0.05
    assert len(np.unique((flat * 255).astype(np.uint8), axis=0)) > 50  # lines, text and colours, not a blank


def test_rebuild_is_stable_and_removes_stale_plots(tmp_path):
    s = tmp_path / "sweep"
    write(s, "0_softmax_1:0_64", fake_results("softmax", "1:0", "LLLL", bpb=2.0))  # stages without bench
    (s / "tradeoff.png").write_bytes(b"old")  # from an earlier build: nothing to draw it from now
    out = build_report(str(s))
    assert out["n_common"] is None and not out["crossovers"]
    assert [os.path.basename(p) for p in out["plots"]] == ["quality_vs_ratio.png"]
    assert not (s / "tradeoff.png").exists()
    assert "No pair to compare" in (s / "report.md").read_text()
    first = (s / "summary.csv").read_text()
    build_report(str(s))
    assert (s / "summary.csv").read_text() == first


def test_scaling_exponent():
    ns = [1, 2, 4, 8, 16, 32]
    assert scaling_exponent(ns, [3.0 * n**2 for n in ns]) == pytest.approx(2)
    # only the upper half counts: a constant overhead at small n does not bend the slope
    assert scaling_exponent(ns, [1, 1, 1, 8**2, 16**2, 32**2]) == pytest.approx(2)
    assert scaling_exponent(ns[:5], [1, 1, 4**1.5, 8**1.5, 16**1.5]) == pytest.approx(1.5)
    assert scaling_exponent([4, 8], [1.0, 2.0]) == pytest.approx(1)
    assert scaling_exponent([4, 8, 16], [None, 0.0, 2.0]) is None
    assert scaling_exponent([4, 8, 16], [2.0, float("nan"), 8.0]) == pytest.approx(1)
    assert scaling_exponent([], []) is None and scaling_exponent([8], [1.0]) is None


def test_crossover_cases():
    rows = lambda f: [{"n": n, "t": f(n), "status": "ok"} for n in LADDER]  # noqa: E731
    assert crossover(rows(lambda n: 1e-4 * n), rows(lambda n: 1e-6 * n * n), "t") == pytest.approx(100)
    assert crossover(rows(lambda n: 1.0), rows(lambda n: 2.0), "t") == 32  # cheaper from the first n
    assert crossover(rows(lambda n: 2.0), rows(lambda n: 1.0), "t") is None  # never within the ladder
    assert crossover(rows(lambda n: 1.0), rows(lambda n: 1.0), "t") is None  # equal is not cheaper
    # cheaper, then dearer, then cheaper again: the crossing that lasts (between 256 and 512) is the answer
    wiggle = {32: 0.5, 64: 2.0, 128: 2.0, 256: 2.0, 512: 0.5}
    assert crossover(rows(lambda n: wiggle[n]), rows(lambda n: 1.0), "t") == pytest.approx(256 * 2**0.5)
    a = rows(lambda n: 1.0)
    a[-1]["status"] = "timeout"
    assert crossover(a, rows(lambda n: 2.0), "t") == 32
    assert crossover([], rows(lambda n: 2.0), "t") is None


def test_the_crossover_noise_is_the_crossing_of_fastest_against_slowest_runs():
    def rows(f, spread):
        return [{"n": n, "t": f(n), "t_range": [f(n) / spread, f(n) * spread], "status": "ok"} for n in LADDER]
    lin, quad = (lambda n: 1e-4 * n), (lambda n: 1e-6 * n * n)  # equal at n = 100, the ratio linear in n
    assert crossover_noise(rows(lin, 1.0), rows(quad, 1.0), "t") == (pytest.approx(100), pytest.approx(100))
    lo, hi = crossover_noise(rows(lin, 1.2), rows(quad, 1.1), "t")
    assert lo == pytest.approx(100 / (1.2 * 1.1)) and hi == pytest.approx(100 * 1.2 * 1.1)
    assert crossover(rows(lin, 1.2), rows(quad, 1.1), "t") == pytest.approx(100)  # the medians' crossing
    # a noise wider than the ladder's differences: cheaper beyond the noise nowhere, possibly cheaper everywhere
    assert crossover_noise(rows(lambda n: 1.0, 3.0), rows(lambda n: 1.5, 1.0), "t") == (32, None)
    plain = [{"n": n, "t": 1.0, "status": "ok"} for n in LADDER]  # rows without a spread (memory, old runs)
    assert crossover_noise(plain, plain, "t") is None


def test_the_report_shows_how_far_the_timing_noise_moves_a_crossover(tmp_path):
    noisy = lambda rows, spread: [dict(r, **{f"{k}_range": [r[k] / spread, r[k] * spread]  # noqa: E731
                                             for k in ("train_step_s", "prefill_s", "decode_s_per_token")})
                                  for r in rows]
    lin = bench_rows(LADDER, lambda n: 1e-4 * n, lambda n: 5e-5 * n, lambda n: 1e-3, lambda n: 1e3 * n,
                     lambda n: 1e4)
    quad = bench_rows(LADDER, lambda n: 1e-6 * n**2, lambda n: 5e-7 * n**2, lambda n: 1e-5 * n,
                      lambda n: 10 * n * n, lambda n: 100 * n)
    write(tmp_path, "0_gated_deltanet_1:0_64", fake_results("gated_deltanet", "1:0", "LLLL", bpb=2.0,
                                                            bench=noisy(lin, 1.1)))
    write(tmp_path, "1_softmax_0:1_64", fake_results("softmax", "0:1", "FFFF", bpb=1.9, bench=noisy(quad, 1.1),
                                                     full="softmax"))
    out = build_report(str(tmp_path))
    row = next(r for r in csv.DictReader(open(out["summary_csv"])) if r["job"].startswith("0_"))
    assert float(row["crossover_train_step_s"]) == pytest.approx(100)
    assert float(row["crossover_train_step_s_lo"]) == pytest.approx(100 / 1.21, abs=0.01)  # 2 decimals kept
    assert float(row["crossover_train_step_s_hi"]) == pytest.approx(100 * 1.21, abs=0.01)
    assert row["crossover_train_peak_bytes"] and "crossover_train_peak_bytes_lo" not in row  # memory: no noise
    md = open(out["report_md"]).read()
    assert "| 100 (83 – 121) | 100 (83 – 121) | 100 (83 – 121) | 100 |" in md, md
    assert "within noise" in md


def test_pareto_front_and_error_head():
    assert pareto_front([1, 2, 3, 4, 2], [5, 3, 4, 1, 3]) == [0, 1, 3]
    assert error_head("ValueError: bad\nTraceback (most recent call last):\n  x") == "ValueError: bad"
    assert error_head("invalid configuration:\n  - a=1 is wrong\n  - b=2 too") == \
        "invalid configuration: a=1 is wrong; b=2 too"
    assert error_head(None) == "" and len(error_head("x" * 1000)) == 240


def run_report_cli(path):
    return subprocess.run([sys.executable, "-m", "runner.report", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_errors_on_a_folder_without_results(tmp_path):
    (tmp_path / "empty" / "job0").mkdir(parents=True)
    p = run_report_cli(tmp_path / "empty")
    assert p.returncode == 2 and "no results.json" in p.stderr, p.stdout + p.stderr
    assert not (tmp_path / "empty" / "report.md").exists()
    p = run_report_cli(tmp_path / "missing")
    assert p.returncode == 2 and "not a folder" in p.stderr


def test_callback_builds_report_and_never_raises(tmp_path, caplog):
    from omegaconf import OmegaConf

    s = tmp_path / "sweep"
    write(s, "0_softmax_1:0_64", fake_results("softmax", "1:0", "LLLL", bpb=2.0, bench=bench_rows(LADDER[:2], **SOFTMAX)))
    ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(s)}}}))
    assert "0_softmax_1:0_64" in (s / "report.md").read_text()
    with caplog.at_level(logging.WARNING, logger="runner.report"):
        ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "none")}}}))
        ReportCallback().on_multirun_end(OmegaConf.create({}))  # no hydra section at all
    assert sum("sweep report failed" in r.message for r in caplog.records) == 2


def test_callback_runs_at_the_end_of_a_real_multirun(tmp_path):
    """The config line the project uses (hydra.callbacks.report._target_) in a real Hydra multirun whose sweep
    dir has a ${now:} interpolation: the report lands in the same folder as the jobs."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(textwrap.dedent(f"""\
        attention: softmax
        hydra:
          sweep:
            dir: {tmp_path}/multirun/${{now:%Y-%m-%d}}/${{now:%H-%M-%S}}
            subdir: ${{hydra.job.num}}_${{attention}}
          callbacks:
            report:
              _target_: runner.report.ReportCallback
        """))
    (tmp_path / "app.py").write_text(textwrap.dedent("""\
        import json, os
        import hydra
        from hydra.core.hydra_config import HydraConfig

        @hydra.main(config_path="conf", config_name="config", version_base="1.3")
        def main(cfg):
            out = HydraConfig.get().runtime.output_dir
            with open(os.path.join(out, "results.json"), "w") as f:
                json.dump({"status": "completed", "layer_types": ["L", "L"], "config": {
                    "attention": {"name": cfg.attention}, "full": {"name": "softmax"}, "ratio": "1:0",
                    "model": {"name": "tiny"}, "seq_len": 32}, "eval": {"bpb": 2.0, "ppl": 4.0},
                    "bench": [{"n": n, "train_step_s": 1e-3 * n, "decode_s_per_token": 1e-4,
                               "state_bytes": 100, "status": "ok"} for n in (8, 16)]}, f)

        main()
        """))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "app.py", "-m", "attention=softmax,linear"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    (day,) = os.listdir(tmp_path / "multirun")
    (sweep_dir,) = os.listdir(tmp_path / "multirun" / day)
    d = tmp_path / "multirun" / day / sweep_dir
    rows = read_csv(d / "summary.csv")
    assert list(rows) == ["0_softmax", "1_linear"]
    assert (d / "time_vs_n.png").exists() and "sweep report:" in p.stdout + p.stderr


def test_run_plots_for_one_run(tmp_path):
    r = fake_results("gated_deltanet", "3:1", "LLLF", bpb=2.1, bench=bench_rows(LADDER, stop_at=256, **GDN))
    paths = run_plots(r, str(tmp_path / "run"))
    assert sorted(os.path.basename(p) for p in paths) == ["memory_vs_n.png", "time_vs_n.png"]
    for p in paths:
        check_png(p)
    assert run_plots(fake_results("softmax", "1:0", "LLLL"), str(tmp_path / "empty")) == []


def test_report_has_the_mqar_table(tmp_path):
    """Jobs evaluated on MQAR: a table of accuracy by number of pairs (mixer x pairs) and a CSV column."""
    sweep = tmp_path / "sweep"
    for job, att, ratio, lt, accs in (("0_softmax", "softmax", "0:1", "FFFF", {2: 1.0, 4: 0.99, 8: 0.97}),
                                      ("1_linear", "linear", "1:0", "LLLL", {2: 0.8, 4: 0.5, 8: 0.25})):
        r = fake_results(att, ratio, lt, bpb=1.0)
        r["eval"]["mqar"] = {"accuracy": sum(accs.values()) / 3, "by_distance": [],
                             "by_num_kv_pairs": [{"num_kv_pairs": k, "accuracy": a, "queries": 100}
                                                 for k, a in accs.items()]}
        write(sweep, job, r)
    write(sweep, "2_plain", fake_results("gated_deltanet", "3:1", "LLLF", bpb=2.0))  # no recall eval: no row
    out = build_report(str(sweep))
    md = open(out["report_md"]).read()
    table = md.split("## Recall (MQAR)")[1].split("##")[0]
    assert "| config | layers | 2 pairs | 4 pairs | 8 pairs | all |" in table
    assert "| FFFF | 1.000 | 0.990 | 0.970 | 0.987 |" in table and "| LLLL | 0.800 | 0.500 | 0.250 | 0.517 |" in table
    assert "LLLF" not in table
    rows = read_csv(out["summary_csv"])
    assert float(rows["0_softmax"]["mqar_accuracy"]) == pytest.approx(0.98667, abs=1e-4)
    assert rows["2_plain"]["mqar_accuracy"] == ""


def test_the_baseline_is_the_all_full_model_of_the_sweeps_full_mixer(tmp_path):
    """A plain `-m ratio=0:1,3:1` sweep keeps the default full mixer (gated attention): its 0:1 job is the
    baseline of the 3:1 one. With an all-softmax job beside it, each hybrid still takes the all-full model of its
    own full mixer."""
    s = tmp_path / "sweep"
    write(s, "0_gated_deltanet_0:1_64", fake_results("gated_deltanet", "0:1", "FFFF", bpb=2.0,
                                                     bench=bench_rows(LADDER, **SOFTMAX)))
    write(s, "1_gated_deltanet_3:1_64", fake_results("gated_deltanet", "3:1", "LLLF", bpb=2.1,
                                                     bench=bench_rows(LADDER, **GDN)))
    write(s, "2_softmax_1:0_64", fake_results("softmax", "1:0", "LLLL", bpb=2.0, bench=bench_rows(LADDER, **SOFTMAX)))
    write(s, "3_gated_deltanet_3:1_64", fake_results("gated_deltanet", "3:1", "LLLF", bpb=2.1, full="softmax",
                                                     bench=bench_rows(LADDER, **GDN)))
    out = build_report(str(s))
    with open(s / "summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows["0_gated_deltanet_0:1_64"]["baseline"] == "" and rows["2_softmax_1:0_64"]["baseline"] == ""
    assert rows["1_gated_deltanet_3:1_64"]["baseline"] == "0_gated_deltanet_0:1_64"
    assert rows["3_gated_deltanet_3:1_64"]["baseline"] == "2_softmax_1:0_64"
    assert float(rows["1_gated_deltanet_3:1_64"]["crossover_train_step_s"]) == pytest.approx(100)
    assert "## Crossover against the all-full model" in (s / "report.md").read_text()
    assert len(out["crossovers"]) == 2


def test_a_sweep_over_the_objective_labels_it_marks_bounds_and_lists_generation(tmp_path):
    """Diffusion and autoregressive jobs of the same mixers are different configurations (labels, seeds table),
    the diffusion ones' losses are marked as upper bounds, and generation tokens/s get their own table."""
    sweep = tmp_path / "sweep"
    for job, objective, bpb in (("0_ar", "next_token", 2.0), ("1_mdlm", "mdlm", 2.4)):
        r = fake_results("softmax", "0:1", "FFFF", bpb=bpb, full="softmax")
        r["config"]["objective"] = {"name": objective}
        r["eval"]["bound"] = objective == "mdlm"
        r["bench_generation"] = ([{"sampler": "autoregressive", "steps": 16, "tokens": 16, "tokens_per_s": 500.0,
                                   "status": "ok"}] if objective == "next_token" else
                                 [{"sampler": "data", "steps": None, "tokens": 16, "entropy_bits": 3.5,
                                   "judge_ppl": 9.5, "status": "ok"}]
                                 + [{"sampler": "ancestral", "steps": s, "tokens": 16, "tokens_per_s": 4000.0 / s,
                                     "entropy_bits": 3.0, "status": "ok"} for s in (4, 16)])
        write(sweep, job, r)
    md = open(build_report(str(sweep))["report_md"]).read()
    comparison = md.split("## Comparison")[1].split("## Generation")[0]
    assert "| 0_ar | softmax 0:1 small next_token |" in comparison
    assert "| 1_mdlm | softmax 0:1 small mdlm |" in comparison
    assert "≤ 2.400" in comparison and "≤ 2.000" not in comparison and "| 2.000 |" in comparison
    generation = md.split("## Generation")[1].split("##")[0]
    assert "| 1_mdlm | softmax 0:1 small mdlm | ancestral | 4 | 16 | 1.00 k | 3.00 | - |" in generation
    assert "| 1_mdlm | softmax 0:1 small mdlm | data | - | 16 | - | 3.50 | 9.50 |" in generation
    assert "| 0_ar | softmax 0:1 small next_token | autoregressive | 16 | 16 | 500 | - | - |" in generation
    seeds = md.split("## Seeds and noise")[1]
    assert "| softmax 0:1 small mdlm | 0 |" in seeds and "| softmax 0:1 small next_token | 0 |" in seeds


def test_report_has_the_lm_eval_tasks_with_their_noise(tmp_path):
    """Jobs scored by lm-eval: summary.csv gets one column per task and metric, report.md a table per task with the
    mean ± interval over seeds, or one seed's value ± lm-eval's standard error."""
    sweep = tmp_path / "sweep"
    accs = {("softmax", 0): 0.50, ("softmax", 1): 0.54, ("softmax", 2): 0.52, ("gated_deltanet", 0): 0.40}
    for i, ((att, seed), acc) in enumerate(accs.items()):
        r = fake_results(att, "1:0", "LL", bpb=1.0)
        r["config"]["seed"] = seed
        r["eval"]["lm_eval"] = {"tasks": {"arc_easy": {"acc": acc, "acc_stderr": 0.02, "acc_norm": acc - 0.1,
                                                       "acc_norm_stderr": 0.03, "samples": 100}}}
        write(sweep, f"{i}_{att}_seed{seed}", r)
    write(sweep, "9_plain", fake_results("linear", "1:0", "LL", bpb=2.0))  # not scored by lm-eval: no row
    out = build_report(str(sweep))
    rows = read_csv(out["summary_csv"])
    assert float(rows["1_softmax_seed1"]["lm_eval_arc_easy_acc"]) == 0.54
    assert float(rows["3_gated_deltanet_seed0"]["lm_eval_arc_easy_acc_norm"]) == pytest.approx(0.30)
    assert rows["9_plain"]["lm_eval_arc_easy_acc"] == ""
    with open(out["summary_csv"]) as f:  # the fixed columns, then one per task and metric scored
        assert next(csv.reader(f))[-2:] == ["lm_eval_arc_easy_acc", "lm_eval_arc_easy_acc_norm"]
    table = open(out["report_md"]).read().split("## lm-eval tasks")[1].split("\n## ")[0]
    assert "| config | acc | acc_norm |" in table
    half = 4.302653 * 0.02 / math.sqrt(3)  # t_{0.975, 2} x std / sqrt(n) of 0.50, 0.52, 0.54
    assert f"| 0.5200 ± {half:.4f} (3) | 0.4200 ± {half:.4f} (3) |" in table
    assert "| 0.4000 ± 0.0200 s.e. (1) | 0.3000 ± 0.0300 s.e. (1) |" in table
    assert "linear" not in table


def test_a_sweep_of_recursion_against_none_labels_the_scheme_not_each_of_its_settings(tmp_path):
    """model.recursion is a named section: its settings count only between jobs of the same scheme."""
    sweep = tmp_path / "sweep"
    trm = {"name": "trm", "latent_steps": 2, "cycles": 2, "supervision_steps": 3, "halting": True}
    for i, (recursion, layers) in enumerate(((trm, 2), ({"name": "none"}, 2), ({"name": "none"}, 36),
                                             ({**trm, "cycles": 3}, 2))):
        r = fake_results("softmax", "1:0", "LL", bpb=1.0)
        r["config"]["model"].update(n_layers=layers, recursion=recursion)
        write(sweep, f"{i}_job", r)
    out = build_report(str(sweep))
    md = open(out["report_md"]).read()
    for line in ("softmax 1:0 small model.n_layers=2 model.recursion.cycles=2 model.recursion.name=trm |",
                 "softmax 1:0 small model.n_layers=2 model.recursion.name=none |",
                 "softmax 1:0 small model.n_layers=36 model.recursion.name=none |",
                 "softmax 1:0 small model.n_layers=2 model.recursion.cycles=3 model.recursion.name=trm |"):
        assert line in md, line
    assert "latent_steps" not in md and "supervision_steps=" not in md
