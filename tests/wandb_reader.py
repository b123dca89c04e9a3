"""Read an offline W&B run file (run-*.wandb) back: a LevelDB-style log of protobuf records (header ':W&B',
32 KiB blocks, 7-byte record headers: crc32, length, type full/first/middle/last)."""
from __future__ import annotations

import glob
import json
import os
import struct

BLOCK = 32768


def _chunks(data: bytes):
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def read_offline_run(run_dir: str) -> dict:
    """{"config": {...}, "history": [{key: value}], "summary": {...}, "tags": [...], "group": str, "job_type": str}."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(os.path.join(run_dir, "**", "run-*.wandb"), recursive=True)
    assert files, f"no offline W&B run under {run_dir}"
    out = {"config": {}, "history": [], "summary": {}, "tags": [], "group": None, "job_type": None}
    with open(files[0], "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", "not a W&B run file"
    for raw in _chunks(data):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["tags"] = list(rec.run.tags)
            out["group"] = rec.run.run_group
            out["job_type"] = rec.run.job_type
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out
