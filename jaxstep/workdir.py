"""A stage's run folder: `summary.json` (written last: the stage is done), the HF
export, checkpoints, and where a chained run finds an earlier stage's product.

    if is_done(workdir): return read_summary(workdir)
    export(workdir, model, params, tokenizer)               # <workdir>/export, HF layout
    write_summary(workdir, summary)                         # last: marks the stage done

Only process 0 writes; the others wait at a barrier.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np

from jaxstep.metrics import read_metrics
from jaxstep.models import hf
from jaxstep.parallel.placement import is_main_process, sync, to_host


SUMMARY_FILE = "summary.json"


EXPORT_DIR = "export"


CHECKPOINT_DIR = "checkpoints"


def summary_path(workdir: str) -> str:
    return os.path.join(workdir, SUMMARY_FILE)


def is_done(workdir: str) -> bool:
    """Whether the stage in `workdir` finished (its summary.json exists)."""
    return os.path.isfile(summary_path(workdir))


def read_summary(workdir: str) -> dict:
    """The finished stage's summary.json."""
    with open(summary_path(workdir), encoding="utf-8") as f:
        return json.load(f)


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_summary(workdir: str, summary: dict) -> dict:
    """Writes summary.json atomically (process 0), marking the stage done; returns it."""
    summary = jsonable(summary)
    if is_main_process():
        os.makedirs(workdir, exist_ok=True)
        tmp = summary_path(workdir) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        os.replace(tmp, summary_path(workdir))
    sync("jaxstep_write_summary")
    return summary


def default_input(workdir: str, stage: str) -> str:
    """`<workdir>/../<stage>/export`: where a chained run keeps the product of `stage`."""
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), stage, EXPORT_DIR)


def export(workdir: str, model, params, tokenizer, subdir: str = EXPORT_DIR) -> str:
    """Writes `<workdir>/<subdir>` as an HF folder (config.json, model.safetensors,
    tokenizer files) that `transformers.AutoModelForCausalLM` loads; returns the path.

    The folder appears complete or not at all (written beside it, then renamed).
    """

    path = os.path.join(workdir, subdir)
    params = to_host(params)
    if is_main_process():
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save(tmp, model, params, tokenizer=tokenizer)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    sync("jaxstep_export")
    return path


def last_metric(workdir: str, key: str) -> Any:
    """The last value of `key` in `<workdir>/metrics.jsonl` (None if never logged)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    values = [row[key] for row in read_metrics(path) if key in row]
    return values[-1] if values else None
