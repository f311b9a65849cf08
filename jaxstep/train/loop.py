"""The one training loop of every stage that trains (SFT, reward models, PPO).

    ckpt = make_checkpointer(config, workdir)
    hooks = Hooks(step=..., log=..., checkpoint=..., evaluate=...)
    state, step, stopped = train("sft", state, start_step=step, total_steps=N, hooks=hooks,
                                 checkpointer=ckpt, writer=writer, log_every=25)
    if stopped:
        return stopped_summary("sft", step)

Per step, in this order: `hooks.step` (one optimizer step, or one PPO iteration),
a metrics line every `log_every` steps and at the last one (`hooks.log` turns the
metrics since the last line into the values written), the periodic evaluation every
`eval_every` steps (not at the last step: the stage evaluates the final state itself),
a checkpoint every `checkpoint.every_steps` (the checkpointer decides), the progress
bar, then the stop check: SIGTERM (or a preemption notice, or `stop_after` in drills
and tests) saves a checkpoint at once and leaves the loop; the next run resumes from
it. The final state is always checkpointed.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxstep import checkpoint as checkpoint_lib
from jaxstep import workdir as workdir_lib
from jaxstep.metrics import MetricWriter
from jaxstep.parallel.placement import is_main_process

logger = logging.getLogger(__name__)


def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO lines (absl logger) out of the progress bars."""
    logging.getLogger("absl").setLevel(logging.WARNING)


def make_checkpointer(config, workdir: str) -> checkpoint_lib.Checkpointer:
    """The stage's Orbax checkpointer in `<workdir>/checkpoints` (`config.checkpoint`)."""
    return checkpoint_lib.Checkpointer(
        os.path.join(workdir, workdir_lib.CHECKPOINT_DIR), max_to_keep=config.checkpoint.keep,
        save_interval_steps=config.checkpoint.every_steps)


@dataclasses.dataclass
class Hooks:
    """What a stage plugs into `train`.

    Attributes:
      step: `(state, step) -> (state, metrics)`: one step from `step` (0-based) to
        `step + 1`; metrics are scalars (device or host).
      log: `(step, history, seconds) -> values`: the metrics line written after `step`,
        from the metrics of the steps since the last line (`history`, oldest first) and
        the wall time they took.
      checkpoint: `state -> (tree, extra)`: what a checkpoint holds (arrays, and JSON
        such as the data iterator's position).
      evaluate: `state -> metrics` for the periodic evaluation (None: none).
      postfix: `values -> {name: text}` shown on the progress bar after a metrics line.
    """

    step: Callable[[Any, int], tuple[Any, dict]]
    log: Callable[[int, list[dict], float], dict]
    checkpoint: Callable[[Any], tuple[Any, dict]]
    evaluate: Callable[[Any], dict] | None = None
    postfix: Callable[[dict], dict] = lambda values: {}


def train(name: str, state: Any, *, start_step: int, total_steps: int, hooks: Hooks,
          checkpointer: checkpoint_lib.Checkpointer, writer: MetricWriter, log_every: int,
          eval_every: int = 0, stop_after: int | None = None, unit: str = "step",
          desc: str | None = None) -> tuple[Any, int, bool]:
    """Runs steps `start_step .. total_steps` (or until a stop); returns `(state, step, stopped)`.

    `stopped` is True when the loop left early (SIGTERM, preemption, `stop_after`); the
    state is checkpointed and the writer stays open only when it did not stop.
    """
    step = start_step
    history: list[dict] = []
    window_start = time.time()
    bar = tqdm(total=total_steps, initial=step, desc=desc or name, unit=unit, dynamic_ncols=True,
               disable=not is_main_process())
    postfix: dict[str, str] = {}

    def save(force: bool = False) -> None:
        tree, extra = hooks.checkpoint(state)
        checkpointer.save(step, tree, extra=extra, force=force)

    stopped = False
    while step < total_steps:
        state, metrics = hooks.step(state, step)
        step += 1
        history.append(metrics)
        if step % log_every == 0 or step == total_steps:
            values = hooks.log(step, history, time.time() - window_start)
            history = []
            window_start = time.time()
            writer.write(step, values)
            postfix.update(hooks.postfix(values))
            bar.set_postfix(postfix, refresh=False)
        if hooks.evaluate is not None and eval_every and step % eval_every == 0 and step < total_steps:
            values = hooks.evaluate(state)
            writer.write(step, values)
            if "eval_accuracy" in values:
                postfix["acc"] = f"{values['eval_accuracy']:.2f}"
            bar.set_postfix(postfix, refresh=False)
        save()
        bar.update(1)
        if checkpointer.should_stop(step) or (stop_after is not None and step >= stop_after):
            save(force=True)
            stopped = step < total_steps
            break
    bar.close()
    if step >= total_steps:  # the final state is always checkpointed
        save(force=True)
    checkpointer.close()
    if stopped:
        writer.close()
        logger.info("%s: stopped at step %d; run again to resume.", name, step)
    return state, step, stopped


def stopped_summary(step: int) -> dict:
    """What a stage returns when its loop stopped early (no summary.json is written)."""
    return {"stopped_at": step, "done": False}


def mean_values(history: list[dict]) -> dict[str, float]:
    """The mean of each metric over `history` (device or host scalars), as floats."""
    keys: dict[str, None] = {}
    for metrics in history:
        keys.update(dict.fromkeys(metrics))
    return {k: float(np.mean(jax.device_get([m[k] for m in history if k in m]))) for k in keys}
