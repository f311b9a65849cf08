"""Command line: `python -m jaxstep.main --config=configs/ppo_prm_max.py [--workdir=...]`.

The config (an ml_collections file, preset after a colon, dotted overrides such as
`--config.ppo.kl_coef=0.05`) names a `stage`; this module only dispatches to
`jaxstep.stages.<stage>.run(config, workdir)`. Run as a program, it first re-executes itself
once with glibc's huge-page malloc tunable (`jaxstep.host_memory`; `JAXSTEP_MALLOC_HUGEPAGES=0`
leaves malloc as it is).
"""
from __future__ import annotations

if __name__ == "__main__":  # first, before JAX is imported: malloc on huge pages (jaxstep.host_memory)
    from jaxstep import host_memory
    host_memory.reexec_with_huge_pages()

import importlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxstep import config_lib, paths  # noqa: E402
from jaxstep.parallel import distributed  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file, optionally `path:preset`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder for checkpoints, metrics and reports "
    "(default: config.workdir, else runs/<config name>).")

# stage name -> module under jaxstep.stages exposing `run(config, workdir)`.
STAGES = {
    "sft": "sft",
    "eval": "evaluate",
    "orm": "reward_model",
    "prm": "reward_model",
    "ppo": "ppo",
    "pipeline": "pipeline",
    "sweep": "sweep",
    "plan": "plan",
}


def resolve_workdir(config, workdir_flag: str | None) -> str:
    if workdir_flag:
        return workdir_flag
    if "workdir" in config and config.workdir:
        return config.workdir
    return os.path.join("runs", config.get("name", config.stage))


def dispatch(config, workdir: str):
    """Runs `config.stage` in `workdir`; returns the stage's summary dict."""
    stage = config.stage
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r} in config; expected one of {sorted(STAGES)}.")
    module = importlib.import_module(f"jaxstep.stages.{STAGES[stage]}")
    return module.run(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/ppo_prm_max.py")
    logging.getLogger().setLevel(logging.INFO)
    if config.stage == "plan":  # before jax starts: cpu-N needs N host devices
        importlib.import_module("jaxstep.stages.plan").prepare(config)
    distributed.maybe_initialize(config)
    config_lib.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    workdir = resolve_workdir(config, _WORKDIR.value)
    paths.makedirs(workdir)  # a gs:// workdir is a URL: os.makedirs would create a local `gs:` folder
    dispatch(config, workdir)


def run_main():
    app.run(main)


if __name__ == "__main__":
    run_main()
