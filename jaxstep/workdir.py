"""A stage's run folder: `run_config.json` (the resolved config, written when the stage
starts), `summary.json` (written last: the stage is done), the HF export, checkpoints, and
where a chained run finds an earlier stage's product.

    if (done := reuse_if_done(workdir, "sft", config)) is not None: return done
    export(workdir, model, params, tokenizer)               # <workdir>/export, HF layout
    write_summary(workdir, summary)                         # last: marks the stage done

A folder is reused (done) or resumed (checkpoints, cached data) only when its recorded
run_config.json equals the new config in every field that determines the stage's
result: the whole config except `EXCLUDED_FIELDS` (run name, workdir, `overwrite`,
`*.log_every`, `checkpoint.every_steps`/`keep`, `eval.plots`, how the processes connect,
`plan.*`), where no eval samples (`eval.pass_k` = 0) or in a stage that runs no
final eval `EVAL_BATCH_FIELDS`, and in every stage but the chains `CHAIN_FIELDS`
(`pipeline.*`, `sweep.*`). The chains' own summaries are never reused but made again from
their stages (`write_chain_summary`). Otherwise the stage stops before any work with a
`StaleWorkdirError` listing the differing fields; a folder with work but no
run_config.json (an older jaxstep's) is treated the same. The ways on: another
`--workdir`, or `--config.overwrite=True`, which moves the folder aside
(`<folder>.old-<n>`, never deleted) and runs afresh. A folder holding nothing but
run_config.json (its stage failed before doing anything) is simply started again.

A workdir is a local path or a URL (`gs://bucket/run`); every file goes through
`jaxstep.paths`. Only process 0 writes; the others wait at a barrier, and whether a
stage is done or stale is decided on process 0 and broadcast (`jaxstep.paths.agree`).
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


# ----------------------------------------------------------------------------- the recorded config

# Not config.json: a stage folder given by mistake as a model path must not pass for an HF folder.
CONFIG_FILE = "run_config.json"

# Fields left out when a folder's recorded config is compared with a new one, because they
# do not change what the stage computes ("<section>.*": a whole section). Every other field
# is compared, however unlikely it is to matter (mesh.* too: the data-parallel size rounds
# decode batches, jaxstep.parallel.placement.round_batch, and batch i samples with its own key).
EXCLUDED_FIELDS = (
    "name",  # the run's name: only the default workdir
    "workdir",  # where the run lives, not what it computes
    "overwrite",  # what to do with a stale folder
    # Metrics cadence: which steps' means reach metrics.jsonl (and the summary's final_loss or
    # last row); never the weights, the data order or a random key.
    "sft.log_every", "rm.log_every", "ppo.log_every",
    # When checkpoints are saved and how many are kept: a resumed run is bitwise the
    # uninterrupted one (tests/test_fault_resume.py).
    "checkpoint.every_steps", "checkpoint.keep",
    "eval.plots",  # PNGs beside report.md
    # How the processes find each other (distributed.num_processes is compared: the process
    # count rounds decode batches too).
    "distributed.enabled", "distributed.coordinator_address", "distributed.process_id",
    "plan.*",  # read by stage plan only, which reuses nothing
)

# The final evals' decode batch: greedy tokens are the same in any batch
# (tests/test_rollout_chunks.py), sampled ones (eval.pass_k > 0) are not, as batch i samples
# with fold_in(key, i). Read only by the stages below, so excluded everywhere else.
EVAL_BATCH_FIELDS = ("eval.batch_size", "pipeline.eval_batch_size")
EVAL_STAGES = ("eval", "pipeline", "sweep")

WAYS_ON = ("Run it in a new folder (--workdir=...), or pass --config.overwrite=True to move this "
           "folder aside (renamed <folder>.old-<n>, nothing is deleted) and run afresh.")

MAX_LISTED = 10  # differing fields named in the error (then "and N more")


class StaleWorkdirError(ValueError):
    """A run folder holds work done under another config than the one given."""


def config_path(workdir: str) -> str:
    return paths.join(workdir, CONFIG_FILE)


def resolved_config(config) -> dict:
    """`config` as run_config.json holds it (`config.to_dict()` made JSON-able)."""
    return json.loads(json.dumps(jsonable(config.to_dict()), sort_keys=True))


def record_config(workdir: str, config) -> str:
    """Writes `<workdir>/run_config.json`, the resolved config of the stage run there (process
    0; the others wait at a barrier); returns its path."""
    if is_main_process():
        paths.write_text(config_path(workdir), json.dumps(resolved_config(config), indent=2, sort_keys=True))
    sync("jaxstep_record_config")
    return config_path(workdir)


def read_config(workdir: str) -> dict | None:
    """The config recorded in `workdir` (None when it holds no run_config.json)."""
    path = config_path(workdir)
    return json.loads(paths.read_text(path)) if paths.isfile(path) else None


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"sft": {"steps": 2}} -> {"sft.steps": 2} (lists are values)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Read only by the chains (stages pipeline and sweep: which stages run, how many seeds),
# which hand each chained stage what it needs through that stage's own sections; so a
# chained stage's result never depends on them, and adding a scheme or a seed to a sweep
# reuses the runs it already has.
CHAIN_FIELDS = ("pipeline.*", "sweep.*")
CHAIN_STAGES = ("pipeline", "sweep")


def excluded_fields(config) -> tuple[str, ...]:
    """`EXCLUDED_FIELDS`, plus `EVAL_BATCH_FIELDS` unless the stage samples in a final eval,
    plus `CHAIN_FIELDS` in every stage but the chains."""
    stage = config.get("stage")
    samples = stage in EVAL_STAGES and "eval" in config and config.eval.get("pass_k", 0) > 0
    return (EXCLUDED_FIELDS + (() if samples else EVAL_BATCH_FIELDS)
            + (() if stage in CHAIN_STAGES else CHAIN_FIELDS))


def _excluded(field: str, excluded: tuple[str, ...]) -> bool:
    return any(field == x or (x.endswith(".*") and field.startswith(x[:-1])) for x in excluded)


ABSENT = "(absent)"


def config_differences(recorded: dict, config) -> list[tuple[str, Any, Any]]:
    """(field, recorded value, new value) of every compared field where `config` differs
    from the `recorded` run_config.json (a field only one of them has: `ABSENT` on the other)."""
    old, new = flatten(recorded), flatten(resolved_config(config))
    excluded = excluded_fields(config)
    return [(f, old.get(f, ABSENT), new.get(f, ABSENT)) for f in sorted(old.keys() | new.keys())
            if not _excluded(f, excluded) and old.get(f, ABSENT) != new.get(f, ABSENT)]


def _shown(value) -> str:
    text = value if value is ABSENT else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def has_work(workdir: str) -> bool:
    """Whether `workdir` holds anything but its run_config.json (a summary, checkpoints, cached
    data, metrics, the folders of a chain's stages)."""
    if not paths.isdir(workdir):
        return False
    return any(child.name not in (CONFIG_FILE, CONFIG_FILE + ".tmp") for child in paths.as_path(workdir).iterdir())


def stale_reason(workdir: str, config) -> str | None:
    """Why the work in `workdir` cannot be reused or resumed under `config` (the message
    of `StaleWorkdirError`), or None when it can (or there is none). Decided by the caller's
    process alone: `reuse_if_done` asks on process 0 and broadcasts."""
    if not has_work(workdir):
        return None
    done = paths.isfile(summary_path(workdir))
    what, verb = ("a finished run", "reused") if done else ("a started run (no summary.json yet)", "resumed")
    recorded = read_config(workdir)
    if recorded is None:
        return (f"{workdir} holds {what} but no {CONFIG_FILE} (an older jaxstep wrote it), so whether "
                f"it was made with this config is unknown; it is not {verb}.")
    diffs = config_differences(recorded, config)
    if not diffs:
        return None
    lines = [f"  --config.{f}: recorded {_shown(old)}, now {_shown(new)}" for f, old, new in diffs[:MAX_LISTED]]
    if len(diffs) > MAX_LISTED:
        lines.append(f"  and {len(diffs) - MAX_LISTED} more")
    return (f"{workdir} holds {what} of another config; it is not {verb}. Fields that differ from "
            f"its {CONFIG_FILE}:\n" + "\n".join(lines))


def is_stale(workdir: str, config) -> bool:
    """Whether `workdir` holds work of another config (`stale_reason`), as process 0 sees it."""
    return paths.agree(is_main_process() and stale_reason(workdir, config) is not None)


def move_aside(workdir: str) -> str:
    """Renames `workdir` to the first free `<workdir>.old-<n>` on process 0 (the others
    wait at a barrier); returns that path there ("" on the others). Nothing is deleted."""
    aside = ""
    if is_main_process():
        folder = paths.absolute(workdir)
        n = 1
        while paths.exists(f"{folder}.old-{n}"):
            n += 1
        aside = f"{folder}.old-{n}"
        paths.move(folder, aside)
        logger.warning("%s holds another config's work: moved it to %s (config.overwrite)", folder, aside)
    sync("jaxstep_move_aside")
    return aside


def write_chain_summary(workdir: str, config, summary: dict) -> dict:
    """The chains' epilogue (stages pipeline and sweep): records `config` and writes the
    summary in the root folder. A chain's own summary is never reused: it is made again
    from its stages, each reused only under its own recorded config (`reuse_if_done`), so
    a changed field stops the chain at the first stage it changes, and a sweep given
    another scheme or seed runs only what it lacks."""
    record_config(workdir, config)
    return write_summary(workdir, summary)


def reuse_if_done(workdir: str, stage: str, config) -> dict | None:
    """Every stage's prologue: the summary of the finished stage in `workdir` when its
    recorded config matches `config` (logged as reused), or None when the stage has to
    run, after recording `config` in `<workdir>/run_config.json`. A folder holding another
    config's work (`stale_reason`) raises `StaleWorkdirError` before anything is done, or
    with `config.overwrite` is moved aside first (`move_aside`). Every process gets the
    same answer (decided on process 0).

        if (done := reuse_if_done(workdir, "sft", config)) is not None:
            return done
    """
    reason = stale_reason(workdir, config) if is_main_process() else None
    if paths.agree(reason is not None):
        if not config.get("overwrite", False):
            raise StaleWorkdirError(
                f"{stage}: {reason or f'{workdir} holds the work of another config (process 0 lists the fields)'}"
                f"\n{WAYS_ON}")
        move_aside(workdir)
    elif is_done(workdir):
        logger.info("%s: %s is done; reusing it.", stage, workdir)
        return read_summary(workdir)
    record_config(workdir, config)
    return None


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
