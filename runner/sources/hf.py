"""``data=hf``: any dataset of the Hugging Face Hub (``data.dataset``, ``data.config``, the column
``data.text_field``), or a local folder of parquet/json/csv/txt files given as ``data.dataset``, through
``datasets.load_dataset``. ``data.streaming=true`` reads large datasets row by row up to ``data.max_bytes`` without
downloading them whole. Before touching the Hub a short probe (``data.hub_timeout_s``) checks that it answers; when
it does not (or ``HF_HUB_OFFLINE=1``), only the local cache is used, and a dataset that is not cached fails at once
with a message saying what to do. Nothing is fetched unless ``data=hf`` is asked for."""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

from ..corpus import Corpus, DataSettingError, DataUnavailable, Log, _is_val, _to_tensor, quiet as _quiet

PROVIDES = {"text"}
TOKENIZERS = ("bytes", "bpe")


def source_problems(c) -> list[str]:
    import math as _m

    d, out = c.data, []
    if not d.dataset:
        out.append("data=hf needs data.dataset=<a Hub dataset such as wikitext, or a local dataset folder>")
    if not d.text_field:
        out.append("data.text_field must name the column holding the text, e.g. text")
    if not d.train_split:
        out.append("data.train_split must name a split, e.g. train")
    if not (isinstance(d.hub_timeout_s, (int, float)) and _m.isfinite(d.hub_timeout_s) and 0 < d.hub_timeout_s <= 600):
        out.append(f"data.hub_timeout_s={d.hub_timeout_s} must be in (0, 600] seconds, e.g. 3")
    if d.streaming and not d.max_bytes > 0:
        out.append("data.streaming=true reads a dataset row by row: give data.max_bytes > 0 (how much to read), "
                   "e.g. data.max_bytes=50000000")
    return out


def load(d, seq_len=None, log: Log = _quiet) -> Corpus:
    return load_hf(d, log)


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """None when the Hub's endpoint answers within ``timeout`` seconds (any HTTP status), else why not. The request
    runs in a daemon thread that is abandoned after the timeout, so name resolution cannot hang the run either."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/datasets?limit=1"
    result: dict = {}

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result["ok"] = True
        except urllib.error.HTTPError:
            result["ok"] = True  # the server answered
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
            result["error"] = f"{type(e).__name__}: {getattr(e, 'reason', e)}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if result.get("ok"):
        return None
    return f"{url} did not answer: {result.get('error', f'no reply within {timeout:g} s')}"


@contextmanager
def hub_offline(on: bool = True):
    """Make `datasets` and `huggingface_hub` work from the local cache only (as HF_HUB_OFFLINE=1) inside the block."""
    if not on:
        yield
        return
    import datasets.config as dcfg
    from huggingface_hub import constants

    old = (dcfg.HF_HUB_OFFLINE, getattr(dcfg, "HF_DATASETS_OFFLINE", None), constants.HF_HUB_OFFLINE)
    dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE = old


def _rows_text(rows: Iterable, field_name: str, where: str) -> Iterator[str]:
    for row in rows:
        if field_name not in row:
            raise DataSettingError(f"data.text_field={field_name!r} is not a column of {where}; its columns are "
                             f"{sorted(row)}: set data.text_field to the one holding the text")
        t = row[field_name]
        if t is None:
            continue
        if not isinstance(t, str):
            raise DataSettingError(f"data.text_field={field_name!r} of {where} holds {type(t).__name__}, not text")
        yield t


def _gather(texts: Iterable[str], cap: int) -> tuple[bytes, int]:
    """Rows joined as lines (a newline added where a row lacks one; empty rows skipped), up to ``cap`` bytes
    (0 = all; the row that crosses the cap is the last one). Returns (bytes, rows used)."""
    out, total, n = [], 0, 0
    for t in texts:
        if cap and total >= cap:
            break
        if not t:
            continue
        b = (t if t.endswith("\n") else t + "\n").encode("utf-8")
        out.append(b)
        total += len(b)
        n += 1
    return b"".join(out), n


def load_hf(d, log: Log = _quiet) -> Corpus:
    """A dataset of the Hugging Face Hub, or a local dataset folder, by ``datasets.load_dataset``."""
    import datasets
    import datasets.config as dcfg

    datasets.disable_progress_bars()
    name = d.dataset
    local = os.path.exists(os.path.expanduser(name))
    if local:
        name = os.path.abspath(os.path.expanduser(name))
    offline, reason = bool(dcfg.HF_HUB_OFFLINE), None
    if offline and not local:
        reason = "HF_HUB_OFFLINE is set"
    elif not local:
        reason = hub_unreachable(d.hub_timeout_s)
        offline = reason is not None
    streaming = bool(d.streaming) and not offline
    if offline and not local:
        log(f"data: the Hugging Face Hub is not reachable ({reason}); looking in the local cache only")
        if d.streaming:
            log("data: streaming needs the Hub; trying the cached (downloaded) copy instead")
    what = f"{d.dataset!r}" + (f" (config {d.config!r})" if d.config else "")
    frac = d.val_fraction
    cap = int(d.max_bytes)
    val_cap = int(math.ceil(cap * frac / (1 - frac))) if cap else 0

    def split_rows(split: str):
        ds = datasets.load_dataset(name, d.config, split=split, revision=d.revision, streaming=streaming)
        return ds if streaming else ds.to_iterable_dataset()

    def fail(e: Exception):
        cache = os.environ.get("HF_DATASETS_CACHE") or str(dcfg.HF_DATASETS_CACHE)
        hint = f"datasets.load_dataset({d.dataset!r}" + (f", {d.config!r}" if d.config else "") + ")"
        raise DataUnavailable(
            f"data=hf: cannot load {what}: the Hugging Face Hub is not reachable from here ({reason}) and the "
            f"dataset is not in the local cache ({cache}). What to do: (1) on a machine with network, run the same "
            f"command once (or python -c \"import datasets; {hint}\") and copy its Hugging Face cache here (or point "
            f"HF_HOME at it); (2) or download the dataset's files (parquet, json, csv or txt) and pass their folder as "
            f"data.dataset=/path/to/folder; (3) or train on a local text file: data=text data.path=/path/to/file.txt. "
            f"(the loader said: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e

    def settings_error(e: ValueError, key: str, value, advice: str):
        """A ValueError of the loader about a config or split name, as the setting to change."""
        first = (str(e).splitlines()[0] if str(e) else type(e).__name__).rstrip(". ")
        return DataSettingError(f"{key}={value!r} does not fit {d.dataset!r}: {first}. {advice}")

    t0 = time.perf_counter()
    with hub_offline(offline and not local):
        try:
            try:
                train_ds = split_rows(d.train_split)
            except ValueError as e:
                msg = str(e).lower()
                if "config" in msg:
                    raise settings_error(e, "data.config", d.config, "Choose one of the configs it names, or "
                                         "data.config=null for a dataset without configs (a local folder)") from e
                if "split" in msg:
                    raise settings_error(e, "data.train_split", d.train_split, "Choose an existing split") from e
                raise
            if d.val_split:
                try:
                    val_ds = split_rows(d.val_split)
                except ValueError as e:
                    if "split" not in str(e).lower():
                        raise
                    raise DataSettingError(f"data.val_split={d.val_split!r}: {e}. Choose an existing split, or "
                                           f"data.val_split=null to hold out data.val_fraction of the training "
                                           f"rows") from e
                train, n_tr = _gather(_rows_text(train_ds, d.text_field, f"{what} split {d.train_split!r}"), cap)
                val, n_va = _gather(_rows_text(val_ds, d.text_field, f"{what} split {d.val_split!r}"), val_cap)
            else:
                tr_rows, va_rows = [], []
                total = 0
                for i, t in enumerate(_rows_text(train_ds, d.text_field, f"{what} split {d.train_split!r}")):
                    if cap and total >= cap + val_cap:
                        break
                    (va_rows if _is_val(str(i), frac) else tr_rows).append(t)
                    total += len(t.encode("utf-8"))
                train, n_tr = _gather(tr_rows, 0)
                val, n_va = _gather(va_rows, 0)
        except DataSettingError:
            raise
        except Exception as e:  # noqa: BLE001 - offline: whatever went wrong, the answer is the same
            if offline and not local:
                fail(e)
            raise
    if not train or not val:
        raise DataSettingError(f"data=hf: {what} gave {len(train):,} training and {len(val):,} validation bytes "
                               f"from column {d.text_field!r}; both must be non-empty: check data.text_field, the "
                               f"splits (data.train_split, data.val_split) and data.max_bytes")
    fp = hashlib.sha256(json.dumps([d.dataset if not local else os.path.basename(name), d.config, d.train_split,
                                    d.val_split, d.text_field]).encode())
    fp.update(hashlib.sha256(train).digest() + hashlib.sha256(val).digest())
    mode = "streamed" if streaming else ("local folder" if local else ("cache only" if offline else "downloaded/cached"))
    desc = (f"hf {d.dataset}" + (f"/{d.config}" if d.config else "") + f", column {d.text_field!r} "
            f"(train split {d.train_split!r}, " + (f"validation split {d.val_split!r}" if d.val_split else
                                                  f"validation: {frac:g} of the training rows") + f", {mode})")
    log(f"data: read {len(train) + len(val):,} bytes from {what} in {time.perf_counter() - t0:.1f} s")
    return Corpus(_to_tensor(train), _to_tensor(val), 256, fp.hexdigest()[:16], desc, {"train": n_tr, "val": n_va})
