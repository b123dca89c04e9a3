"""What a run leaves behind: results.json (atomic), metrics.jsonl (training curve), W&B, and the console.

``results.json`` is rewritten atomically (temp file + fsync + rename) after each stage, so a reader never sees a
half-written file and a run that dies keeps what it finished.
"""
from __future__ import annotations

import errno
import json
import math
import os
from typing import Any, Callable, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import atomic_write, atomic_write_text, fmt_bytes  # noqa: F401 - used here; atomic_write for callers


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


class Tracker:
    """Collects the results of one attempt on a run folder and sends them to every sink: results.json (through a
    :class:`runner.run_folder.Record`, which keeps a completed record intact until this attempt completes too),
    metrics.jsonl (one curve: rows after a resumed checkpoint's step are dropped, a re-evaluation replaces its
    rows) and W&B."""

    def __init__(self, run_dir: str, config: dict, logger_cfg=None, console: Optional[Console] = None,
                 previous: Optional[dict] = None, stages=(), same_weights: bool = True):
        from .run_folder import Record

        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.console = console or Console()
        self.record = Record(config, previous, stages or config.get("stages") or (), same_weights)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self._metrics = None
        self._deferred_rows: list[tuple[dict, Optional[str]]] = []  # rows held back until the attempt completes
        self.wandb = None
        if logger_cfg is not None and logger_cfg.name == "wandb":
            self.wandb = _start_wandb(run_dir, config, logger_cfg, self.console)

    @property
    def results(self) -> dict:
        """The record as results.json holds it now."""
        return self.record.results()

    @property
    def status(self) -> str:
        """This attempt's status (the record's may stay 'completed' when an attempt on a completed run fails)."""
        return self.record.status

    def update(self, **fields) -> None:
        self.record.set(**fields)
        self.save()

    def save(self) -> None:
        atomic_write_text(os.path.join(self.run_dir, "results.json"),
                          json.dumps(_clean(self.results), indent=2, sort_keys=False) + "\n")

    def describe(self, **facts) -> None:
        """Facts known once the model is built (layer_types, n_params): into results.json and the W&B config."""
        self.update(**facts)
        if self.wandb is not None:
            self.wandb.config.update(facts, allow_val_change=True)

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        """A table for W&B (e.g. the sample stage's prompts and texts); results.json holds the same rows."""
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Table(columns=columns, data=rows)})

    def log(self, row: dict, replaces: Optional[str] = None) -> None:
        """One point of the training curve. ``replaces``: a key (e.g. ``eval_loss``) whose earlier rows this one
        replaces, so a re-evaluation leaves one row, not two. On a completed record the file changes only when
        this attempt completes."""
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row.get("step"))
        if self.record.overlay:
            self._deferred_rows.append((row, replaces))
            return
        self._write_row(row, replaces)

    def _write_row(self, row: dict, replaces: Optional[str]) -> None:
        if replaces is not None:
            self._rewrite_metrics(lambda r: replaces not in r)
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a")
        self._metrics.write(json.dumps(_clean(row)) + "\n")
        self._metrics.flush()

    def _rewrite_metrics(self, keep: Callable[[dict], bool]) -> None:
        """Rewrite metrics.jsonl atomically with the rows ``keep`` accepts (lines cut short by a kill go)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if not os.path.exists(self.metrics_path):
            return
        rows = []
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    if keep(json.loads(line)):
                        rows.append(line if line.endswith("\n") else line + "\n")
                except json.JSONDecodeError:
                    pass  # a line cut short by a kill
        atomic_write_text(self.metrics_path, "".join(rows))

    def trim_metrics(self, last_step: int) -> None:
        """When training starts or resumes at ``last_step``: drop the curve points written after it (they will be
        produced again), so the file stays one curve with no step twice."""
        self._rewrite_metrics(lambda r: r.get("step", 0) <= last_step)

    def finish(self, status: str, error: Optional[str] = None) -> None:
        """Record the outcome everywhere. The W&B run is always closed (its summary holds ``status``), also when
        writing results.json or the summary fails; the first such error is raised after it is closed. When the
        disk is full, the run folder's reserve is released to make room for this last record."""
        from .run_folder import free_reserve

        self.record.end(status, error)
        try:
            if status == "completed":
                for row, replaces in self._deferred_rows:
                    self._write_row(row, replaces)
                self._deferred_rows = []
            try:
                self.save()
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                free_reserve(self.run_dir)
                self.save()
        finally:
            try:
                if self._metrics is not None:
                    self._metrics.close()
            finally:
                run, self.wandb = self.wandb, None
                if run is not None:
                    try:
                        _summarise_wandb(run, self.results)
                    except Exception as e:  # a half-written summary must not hide the run's own outcome
                        self.console.print(f"[yellow]W&B summary incomplete:[/] {type(e).__name__}: {escape(str(e))}")
                    finally:
                        run.finish(exit_code=0 if status == "completed" else 1)


class NullTracker(Tracker):
    """What ranks other than 0 get under torchrun: same interface, writes nothing, prints nothing."""

    def __init__(self, run_dir: str, config: dict):
        from .run_folder import Record

        self.run_dir, self.wandb = run_dir, None
        self.console = Console(quiet=True)
        self.record = Record(config, None, config.get("stages") or ())
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self._metrics, self._deferred_rows = None, []

    def save(self) -> None:
        pass

    def log(self, row: dict, replaces: Optional[str] = None) -> None:
        pass

    def describe(self, **facts) -> None:
        self.record.set(**facts)

    def trim_metrics(self, last_step: int) -> None:
        pass

    def finish(self, status: str, error: Optional[str] = None) -> None:
        self.record.end(status, error)


def config_label(config: dict) -> str:
    """What the seeds of one configuration share: mixers (``neg`` for negative eigenvalues), layout, model size,
    seq_len, the objective and the data when not the defaults, with a generated task's option values (at most 64
    characters, W&B's limit for a job type)."""
    att, full = (config.get("attention") or {}).get("name"), (config.get("full") or {}).get("name")
    if (config.get("attention") or {}).get("allow_neg_eigval"):
        att = f"{att}-neg"
    layout = config.get("pattern") or config.get("ratio")
    label = f"{att}+{full} {layout} {(config.get('model') or {}).get('name')} T={config.get('seq_len')}"
    obj = (config.get("objective") or {}).get("name")
    if obj and obj != "next_token":
        label += f" {obj}"
    data = config.get("data") or {}
    if data.get("name") not in (None, "stdlib"):
        opts = [str(v) for v in (data.get("options") or {}).values() if v is not None and not isinstance(v, list)]
        label += " " + ":".join([str(data["name"]), *opts])
    return label[:64]


def _start_wandb(run_dir: str, config: dict, lg, console: Optional[Console] = None):
    """One W&B run per job, named after the job folder; in a sweep its group is logger.group, or by default the
    sweep folder (so a sweep's jobs sit together), and its job type is the configuration without the seed
    (:func:`config_label`), so that W&B's grouped charts draw a configuration's seeds as one mean with its spread.
    ``logger.mode=online`` that cannot reach W&B within ``logger.init_timeout_s`` (no network, no API key) falls
    back to offline with a warning: the run goes on and its W&B files can be synced later (``wandb sync``)."""
    import re

    import wandb

    tags = list(lg.tags) + [f"attention={config['attention']['name']}", f"ratio={config['ratio']}",
                            f"model={config['model']['name']}", f"seq_len={config['seq_len']}"]
    group = lg.group
    if group is None:  # the sweep folder's name, with its date folder in front as in Hydra's multirun/<date>/<time>
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                folder = os.path.normpath(os.path.abspath(str(hc.sweep.dir)))
                group, parent = os.path.basename(folder), os.path.basename(os.path.dirname(folder))
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}", parent):
                    group = f"{parent}_{group}"
        except (ValueError, ImportError, AttributeError):  # not under Hydra (tests, scripts)
            group = None
    timeout = float(getattr(lg, "init_timeout_s", 15.0))
    job_type = config_label(config)  # the seeds of one configuration share it: W&B's grouped charts, mean and spread

    def start(mode: str):
        return wandb.init(project=lg.project, entity=lg.entity, group=group, job_type=job_type, mode=mode,
                          dir=run_dir, name=os.path.basename(os.path.normpath(os.path.abspath(run_dir))),
                          config=config, tags=tags, reinit="finish_previous",
                          settings=wandb.Settings(silent=True, console="off", init_timeout=timeout))

    if lg.mode != "online":
        return start(lg.mode)
    try:
        return start("online")
    except Exception as e:  # noqa: BLE001 - no network, no key, a server error: the run goes on offline
        first = (str(e).strip().splitlines() or [""])[0][:200]
        (console or Console(stderr=True)).print(
            f"[yellow]W&B:[/] logger.mode=online could not start within logger.init_timeout_s={timeout:g} s "
            f"({type(e).__name__}: {escape(first)}); logging offline instead, sync later with: wandb sync "
            f"{os.path.join(run_dir, 'wandb')}")
        return start("offline")


def _spread_columns(row: dict) -> dict:
    """A bench row for a W&B table: each ``<time>_range`` pair [fastest, slowest] as two number columns
    ``<time>_fastest`` and ``<time>_slowest``, which W&B can chart (a cell holding a list it cannot)."""
    out = {}
    for key, value in row.items():
        if key.endswith("_range") and isinstance(value, (list, tuple)) and len(value) == 2:
            time = key[:-len("_range")]
            out[f"{time}_fastest"], out[f"{time}_slowest"] = value
        else:
            out[key] = value
    return out


def _summarise_wandb(run, results: dict) -> None:
    """Final numbers into the run summary (status first, so it is there whatever follows), and the bench rows
    as a table ``bench`` (each timing range as fastest and slowest columns) with two line plots drawn from its
    columns: ``bench/time_vs_n`` (seconds) and ``bench/memory_vs_n`` (bytes), one line per cost, over the lengths
    measured (status ok)."""
    for k in ("status", "n_params", "layer_types"):
        if k in results:
            run.summary[k] = results[k]
    if results.get("error"):
        run.summary["error"] = str(results["error"]).strip().splitlines()[0][:500]
    for section in ("train", "eval"):
        for k, v in (results.get(section) or {}).items():
            if isinstance(v, (int, float)):
                run.summary[f"{section}/{k}"] = v
    rows = [r for r in results.get("bench") or [] if isinstance(r, dict)]
    if not rows:
        return
    import wandb

    rows = [_spread_columns(r) for r in rows]
    cols = ["n", "status"] + sorted({c for r in rows for c in r} - {"n", "status"})
    table = wandb.Table(columns=cols, data=[[_clean(r.get(c)) for c in cols] for r in rows])
    logged = {"bench": table}
    column = {c: table.get_column(c) for c in cols}
    ok = [i for i, s in enumerate(column["status"]) if s == "ok"]
    for name, keys, unit in (("time_vs_n", ("train_step_s", "prefill_s", "decode_s_per_token"), "s"),
                             ("memory_vs_n", ("train_peak_bytes", "prefill_peak_bytes", "state_bytes"), "bytes")):
        series = []
        for k in keys:
            pts = [(column["n"][i], column[k][i]) for i in ok if k in column and column[k][i] is not None]
            if pts:
                series.append((k, [x for x, _ in pts], [y for _, y in pts]))
        if series:
            logged[f"bench/{name}"] = wandb.plot.line_series(
                xs=[s[1] for s in series], ys=[s[2] for s in series], keys=[s[0] for s in series],
                title=f"{name.split('_')[0]} ({unit}) vs context length n", xname="n")
    run.log(logged)


def summary_tables(results: dict) -> list[Table]:
    """The rich tables printed at the end of a run."""
    cfg = results.get("config", {})
    head = Table(title="run", show_header=False)
    head.add_row("mixers", f"{cfg.get('attention', {}).get('name')} + {cfg.get('full', {}).get('name')}")
    head.add_row("layers", "".join(results.get("layer_types", [])))
    head.add_row("params", f"{results.get('n_params', 0):,}")
    head.add_row("status", str(results.get("status")))
    tr, ev = results.get("train") or {}, results.get("eval") or {}
    if tr:
        head.add_row("train", f"{tr.get('steps')} steps, {tr.get('tokens'):,} tokens, "
                              f"{tr.get('tokens_per_s', 0):,.0f} tok/s, final loss {tr.get('final_loss', float('nan')):.3f}, "
                              f"{tr.get('wall_s', 0):.1f} s")
    if ev:
        b = "<= " if ev.get("bound") else ""
        head.add_row("eval", f"loss {b}{ev.get('loss'):.4f}  ppl {b}{ev.get('ppl'):.3f}  bpb {b}{ev.get('bpb'):.4f}  "
                             f"(unigram bpb {ev.get('unigram_bpb'):.4f})" + ("  NELBO: upper bounds" if b else ""))
    tables = [head]
    rows = results.get("bench") or []
    if rows:
        t = Table(title="bench: cost versus context length n")
        for col in ("n", "train step", "train peak", "prefill tok/s", "prefill peak", "decode ms/tok",
                    "state (analytic)", "state (measured)", "status"):
            t.add_column(col, justify="right")
        for r in rows:
            def f(key, fn):
                v = r.get(key)
                return fn(v) if v is not None else "-"
            t.add_row(str(r["n"]), f("train_step_s", lambda v: f"{v * 1e3:.1f} ms"), f("train_peak_bytes", fmt_bytes),
                      f("prefill_tokens_per_s", lambda v: f"{v:,.0f}"), f("prefill_peak_bytes", fmt_bytes),
                      f("decode_s_per_token", lambda v: f"{v * 1e3:.2f}"), f("state_bytes", fmt_bytes),
                      f("state_bytes_measured", fmt_bytes), r.get("status", "?"))
        sc = results.get("bench_scaling") or {}
        if any(v is not None for v in sc.values()):
            def e(k):
                return f"n^{sc[k]:.2f}" if sc.get(k) is not None else "-"
            t.caption = (f"scaling over the upper half of the ladder: train step time {e('train_step_s')}, "
                         f"train peak {e('train_peak_bytes')}, prefill time {e('prefill_s')}, "
                         f"decode time {e('decode_s_per_token')}, state {e('state_bytes')}")
        tables.append(t)
    return tables
