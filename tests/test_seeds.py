"""Seeds and noise in the sweep report, on synthetic results.json files with known values: each configuration's
mean, std and Student-t interval over its seeds, the paired difference against the baseline (by seed) with its
interval, and the words: a difference inside the noise is 'within noise', a large one 'significant'. The numbers are
checked against numpy and scipy computed here."""
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from runner.report import build_report
from runner.stats import interval, paired
from test_report import LADDER, SOFTMAX, GDN, bench_rows, fake_results

SOFT = {0: 2.210, 1: 2.230, 2: 2.190}  # bpb of the all-softmax model by seed
CLOSE = {0: 2.212, 1: 2.225, 2: 2.196}  # a hybrid within noise of it: differences +0.002, -0.005, +0.006
FAR = {0: 2.110, 1: 2.128, 2: 2.093}  # a hybrid clearly better: differences -0.100, -0.102, -0.097


def _write(sweep, job, attention, ratio, layer_types, seed, bpb, bench):
    r = fake_results(attention, ratio, layer_types, bpb=bpb, bench=bench, full="softmax")
    r["config"]["seed"] = seed
    d = sweep / job
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(r))


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    k = 0
    for seed in (0, 1, 2):
        for attention, ratio, lt, vals, bench in (("softmax", "0:1", "FFFF", SOFT, SOFTMAX),
                                                   ("gated_deltanet", "3:1", "LLLF", CLOSE, GDN),
                                                   ("deltanet", "3:1", "LLLF", FAR, GDN)):
            _write(s, f"{k}_{attention}_{ratio}_{seed}", attention, ratio, lt, seed, vals[seed],
                   bench_rows(LADDER, **bench))
            k += 1
    return s, build_report(str(s))


def test_interval_and_paired_agree_with_scipy():
    xs = [2.21, 2.23, 2.19, 2.25]
    s = interval(xs)
    half = stats.t.ppf(0.975, 3) * np.std(xs, ddof=1) / math.sqrt(4)
    assert s["n"] == 4 and s["mean"] == pytest.approx(np.mean(xs)) and s["std"] == pytest.approx(np.std(xs, ddof=1))
    assert (s["low"], s["high"]) == pytest.approx((np.mean(xs) - half, np.mean(xs) + half))
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(xs), scale=stats.sem(xs))
    assert (s["low"], s["high"]) == pytest.approx((lo, hi))
    one = interval([1.0])
    assert one["mean"] == 1.0 and one["std"] is None and one["low"] is None
    d = paired({0: 3.0, 1: 4.0, 2: 6.0, 7: 1.0}, {0: 1.0, 1: 2.5, 2: 3.0})
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(np.mean([2.0, 1.5, 3.0]))
    assert d["significant"] is True


def test_groups_their_intervals_and_the_paired_differences(sweep):
    s, out = sweep
    by = {g["config"]: g for g in out["groups"]}
    assert sorted(by) == ["deltanet 3:1 small", "gated_deltanet 3:1 small", "softmax 0:1 small"]
    soft = by["softmax 0:1 small"]
    vals = list(SOFT.values())
    assert soft["seeds"] == [0, 1, 2] and soft["stats"]["bpb"]["n"] == 3
    assert soft["stats"]["bpb"]["mean"] == pytest.approx(np.mean(vals))
    assert soft["stats"]["bpb"]["std"] == pytest.approx(np.std(vals, ddof=1))
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(vals), scale=stats.sem(vals))
    assert (soft["stats"]["bpb"]["low"], soft["stats"]["bpb"]["high"]) == pytest.approx((lo, hi))

    for name, vals_h, significant in (("gated_deltanet 3:1 small", CLOSE, False), ("deltanet 3:1 small", FAR, True)):
        g = by[name]
        assert g["baseline"] == "softmax 0:1 small"
        diffs = [vals_h[k] - SOFT[k] for k in (0, 1, 2)]
        d = g["diff"]["bpb"]
        assert d["mean"] == pytest.approx(np.mean(diffs)) and d["n"] == 3
        lo, hi = stats.t.interval(0.95, 2, loc=np.mean(diffs), scale=stats.sem(diffs))
        assert (d["low"], d["high"]) == pytest.approx((lo, hi))
        assert d["significant"] is significant

    md = (s / "report.md").read_text()
    assert "## Seeds and noise" in md
    assert "- gated_deltanet 3:1 small against softmax 0:1 small: bpb" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("- gated_deltanet 3:1 small against") and " bpb " in ln)
    assert line.endswith("within noise.")
    line = next(ln for ln in md.splitlines() if ln.startswith("- deltanet 3:1 small against") and " bpb " in ln)
    assert line.endswith("significant: better.")
    # one row per job stays in summary.csv; summary_grouped.csv has one per configuration
    with open(s / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 9
    with open(s / "summary_grouped.csv") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert float(rows["deltanet 3:1 small"]["bpb_diff"]) == pytest.approx(np.mean([FAR[k] - SOFT[k] for k in SOFT]))
    assert rows["deltanet 3:1 small"]["bpb_significant"] == "True"
    assert rows["gated_deltanet 3:1 small"]["bpb_significant"] == "False"
    assert rows["softmax 0:1 small"]["baseline"] == "" and rows["softmax 0:1 small"]["seeds"] == "0 1 2"


def test_one_seed_says_it_has_no_interval(tmp_path):
    s = tmp_path / "sweep"
    _write(s, "0_softmax", "softmax", "0:1", "FFFF", 0, 2.2, bench_rows(LADDER, **SOFTMAX))
    _write(s, "1_gdn", "gated_deltanet", "3:1", "LLLF", 0, 2.1, bench_rows(LADDER, **GDN))
    build_report(str(s))
    md = (s / "report.md").read_text()
    assert "One seed gives no interval" in md and "one seed: no interval" in md


def test_the_plots_draw_a_configurations_seeds_with_error_bars(sweep, monkeypatch):
    """The quality-vs-ratio plot gets one point per configuration and fraction, with error bars (matplotlib's
    errorbar container), not one point per seed."""
    from matplotlib.container import ErrorbarContainer

    from runner import plots

    seen = {}
    real = plots._save

    def keep(fig, path):
        seen[path.rsplit("/", 1)[-1]] = fig
        return real(fig, path)

    s, _ = sweep
    monkeypatch.setattr(plots, "_save", keep)
    build_report(str(s))
    fig = seen["quality_vs_ratio.png"]
    bars = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars, "no error bars"
    fig = seen["time_vs_n.png"]
    lines = [c for ax in fig.axes[:1] for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(lines) <= 3  # one line per configuration, not per seed


def test_seeds_short_form_runs_a_sweep_whose_wandb_runs_share_a_job_type(tmp_path):
    """`seeds=2` is `-m seed=range(2)`: two jobs, one per seed; their offline W&B runs share the sweep's group and
    the configuration's job type, and the report groups them as one configuration of two seeds."""
    from test_end_to_end import TINY, run_cli
    from wandb_reader import read_offline_run

    sweep = tmp_path / "sweep"
    p = run_cli("seeds=2", *TINY, "attention=softmax", "stages=[train,eval]", "threads=1", "logger=wandb",
                f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = sorted(d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(jobs) == 2
    seeds = sorted(json.loads((sweep / j / "results.json").read_text())["config"]["seed"] for j in jobs)
    assert seeds == [0, 1]
    runs = [read_offline_run(str(sweep / j)) for j in jobs]
    assert {r["group"] for r in runs} == {"sweep"}
    assert {r["job_type"] for r in runs} == {"softmax+gated_attention 3:1 tiny T=32"}
    with open(sweep / "summary_grouped.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["seeds"] == "0 1" and row["eval_loss_n"] == "2" and row["eval_loss_ci_low"] != ""


def test_every_pair_of_configurations_with_the_bonferroni_level(sweep):
    """Three configurations of three seeds: three pairs, each the paired t interval computed here, and the
    Bonferroni verdict at 1 - 0.05/3 per pair."""
    from runner.seeds import every_pair

    _, out = sweep
    pairs = {(p["a"], p["b"]): p for p in every_pair(out["groups"])}
    assert len(pairs) == 3
    loss = {"softmax 0:1 small": SOFT, "gated_deltanet 3:1 small": CLOSE, "deltanet 3:1 small": FAR}
    for (a, b), p in pairs.items():
        d = np.subtract([loss[a][k] for k in (0, 1, 2)], [loss[b][k] for k in (0, 1, 2)]) * math.log(2)  # eval loss
        lo, hi = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
        assert (p["diff"]["low"], p["diff"]["high"]) == pytest.approx((lo, hi))
        lo3, hi3 = stats.t.interval(1 - 0.05 / 3, 2, loc=d.mean(), scale=stats.sem(d))
        assert (p["strict"]["low"], p["strict"]["high"]) == pytest.approx((lo3, hi3))
    assert pairs[("softmax 0:1 small", "gated_deltanet 3:1 small")]["diff"]["significant"] is False
    md = (sweep[0] / "report.md").read_text()
    assert "### Every pair (eval loss, paired by seed)" in md and "Bonferroni level (98.33% per pair" in md


def test_a_swept_setting_beyond_the_label_makes_its_own_configuration(tmp_path):
    """A sweep over attention.chunk_size (a setting of one mixer) keeps its values apart; mixer settings that only
    differ because the mixer differs do not clutter the labels."""
    s = tmp_path / "sweep"
    for k, (attention, chunk) in enumerate((("gated_deltanet", 32), ("gated_deltanet", 64), ("kda", 16))):
        for seed in (0, 1):
            r = fake_results(attention, "3:1", "LLLF", bpb=2.0 + 0.01 * k + 0.001 * seed, full="softmax")
            r["config"]["seed"] = seed
            r["config"]["attention"]["chunk_size"] = chunk
            d = s / f"{k}_{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps(r))
    out = build_report(str(s))
    assert sorted(g["config"] for g in out["groups"]) == [
        "gated_deltanet 3:1 small attention.chunk_size=32", "gated_deltanet 3:1 small attention.chunk_size=64",
        "kda 3:1 small attention.chunk_size=16"]
    assert all(len(g["seeds"]) == 2 for g in out["groups"])


def test_layouts_of_one_share_of_full_layers_stay_apart_in_the_quality_plot(tmp_path, monkeypatch):
    """Placements (FFLL, LLFF) have the same fraction of full layers: the plot averages seeds, never layouts."""
    from runner import plots

    seen = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.setdefault("fig", fig) and path)
    pts = [{"group": "gdn", "fraction": 0.5, "layout": lay, "bpb": bpb, "ppl": 2 ** bpb}
           for lay, bpbs in (("FFLL", (2.0, 2.1)), ("LLFF", (1.5, 1.6))) for bpb in bpbs]
    plots.quality_vs_ratio_plot(pts, str(tmp_path / "q.png"))
    ys = sorted(y for line in seen["fig"].axes[0].get_lines() for y in line.get_ydata() if line.get_marker() == "o")
    assert ys == pytest.approx([1.55, 2.05])
