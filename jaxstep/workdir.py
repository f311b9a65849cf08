"""A stage's run folder: `summary.json` (written last: the stage is done), the HF
export, checkpoints, and where a chained run finds an earlier stage's product.

    if (done := reuse_if_done(workdir, "sft")) is not None: return done
    export(workdir, model, params, tokenizer)               # <workdir>/export, HF layout
    write_summary(workdir, summary)                         # last: marks the stage done

A workdir is a local path or a URL (`gs://bucket/run`); every file goes through
`jaxstep.paths`. Only process 0 writes; the others wait at a barrier, and whether a
stage is done is decided on process 0 and broadcast (`jaxstep.paths.agree`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np

from jaxstep import paths
from jaxstep.metrics import read_metrics
from jaxstep.models import hf
from jaxstep.parallel.placement import is_main_process, sync, to_host

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


EXPORT_DIR = "export"


CHECKPOINT_DIR = "checkpoints"


def summary_path(workdir: str) -> str:
    return paths.join(workdir, SUMMARY_FILE)


def is_done(workdir: str) -> bool:
    """Whether the stage in `workdir` finished (its summary.json exists), as process 0
    sees it: every process gets the same answer (a collective when multi-process)."""
    return paths.agree(is_main_process() and paths.isfile(summary_path(workdir)))


def read_summary(workdir: str) -> dict:
    """The finished stage's summary.json."""
    return json.loads(paths.read_text(summary_path(workdir)))


def reuse_if_done(workdir: str, stage: str) -> dict | None:
    """Every stage's prologue: the summary of the finished stage in `workdir` (logged as
    reused), or None when the stage has to run. Every process gets the same answer
    (`is_done` is decided on process 0).

        if (done := reuse_if_done(workdir, "sft")) is not None:
            return done
    """
    if not is_done(workdir):
        return None
    logger.info("%s: %s is done; reusing it.", stage, workdir)
    return read_summary(workdir)


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
        paths.write_text(summary_path(workdir), json.dumps(summary, indent=2, sort_keys=True))
    sync("jaxstep_write_summary")
    return summary


def default_input(workdir: str, stage: str) -> str:
    """`<workdir>/../<stage>/export`: where a chained run keeps the product of `stage`."""
    return paths.join(paths.parent(workdir), stage, EXPORT_DIR)


def write_folder(path: str, write) -> str:
    """Calls `write(folder)` on process 0 so that `path` ends up holding what it wrote,
    complete or not at all: a local `path` is written beside it and renamed; a remote
    one is written to a local temporary folder and then copied (the stage's summary,
    written after it, marks it complete). The others wait at a barrier. Returns `path`."""
    if is_main_process():
        if paths.is_remote(path):
            local = paths.join(paths.local_dir("jaxstep_export_"), paths.basename(path))
            write(local)
            paths.upload_folder(local, path)
        else:
            tmp = path + ".tmp"
            paths.remove(tmp)
            write(tmp)
            paths.remove(path)
            os.replace(tmp, path)
    sync("jaxstep_write_folder")
    return path


def export(workdir: str, model, params, tokenizer, subdir: str = EXPORT_DIR) -> str:
    """Writes `<workdir>/<subdir>` as an HF folder (config.json, model.safetensors,
    tokenizer files) that `transformers.AutoModelForCausalLM` loads; returns the path
    (`write_folder`: complete or not at all, local or remote)."""
    params = to_host(params)
    return write_folder(paths.join(workdir, subdir),
                        lambda folder: hf.save(folder, model, params, tokenizer=tokenizer))


def last_metric(workdir: str, key: str) -> Any:
    """The last value of `key` in `<workdir>/metrics.jsonl` (None if never logged)."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.isfile(path):
        return None
    values = [row[key] for row in read_metrics(path) if key in row]
    return values[-1] if values else None
