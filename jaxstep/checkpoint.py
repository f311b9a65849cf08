"""Orbax checkpoints for every stage: save, keep-N, preemption, resume from the newest valid one.

A checkpoint is one Orbax step folder `<directory>/<step>/` holding two items:

- `state`: the training state pytree (params, optimizer state, step counter, RNG keys,
  KL-controller state, ...), saved with `ocp.args.StandardSave`. Typed PRNG keys
  (`jax.random.key`) are stored as their uint32 `key_data` and re-wrapped on restore;
  numpy scalar leaves (which Orbax rejects) are stored as 0-d arrays.
- `meta`: JSON with the step, the save time and the caller's `extra` dict (data-iterator
  position, free-form metadata). `bytes` values (a grain `DataLoaderIterator.get_state()`)
  are stored base64-encoded and come back as `bytes`.

Saves are atomic (Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when
complete), so a process killed mid-save leaves the previous checkpoints untouched.
Restoring walks the steps newest first; a checkpoint that fails to restore (truncated or
missing files) is logged, and once an older one restores the bad ones are renamed to
`<step>.corrupt` (never deleted) so later saves at those steps are possible.

Typical loop::

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=100)
    restored = ckpt.restore_latest(abstract_state)      # None on a fresh run
    step, state, extra = restored if restored else (0, init_state, {})
    while step < num_steps:
        state, metrics = update(state, batch); step += 1
        ckpt.save(step, state, extra={"data": it.get_state()})
        if ckpt.should_stop(step):                      # SIGTERM / preemption
            ckpt.save(step, state, extra={"data": it.get_state()}, force=True)
            break
    ckpt.close()
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxstep import tree_codec

logger = logging.getLogger(__name__)

_STATE = "state"
_META = "meta"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- JSON extras


# ----------------------------------------------------------------------------- paths, hosts

def _as_path(directory) -> epath.Path:
    """Local paths are made absolute (Orbax requires it); URLs (gs://...) kept as is."""
    directory = os.fspath(directory)
    if "://" not in directory:
        directory = os.path.abspath(directory)
    return epath.Path(directory)


def _all_processes_agree(flag: bool) -> bool:
    """True when `flag` is True on every process (a collective when multi-process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _any_process(flag: bool) -> bool:
    """True when `flag` is True on any process (a collective when multi-process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _jax_preemption_service_active() -> bool:
    """Whether jax.distributed's preemption sync manager (which owns SIGTERM) is running."""
    try:
        from jax._src import distributed as jax_distributed
        return jax_distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


# ----------------------------------------------------------------------------- manager

class Checkpointer:
    """Keeps the last `max_to_keep` training checkpoints of one run in `directory`.

    Args:
      directory: folder of step subfolders (local path or a gs:// URL); created if needed.
      max_to_keep: how many of the newest checkpoints to keep (None keeps all).
      save_interval_steps: `save(step, ...)` saves when `step % save_interval_steps == 0`
        (or when forced, or at a preemption sync point).
      async_save: write in a background thread; `wait()`/`close()` finish the write.
      handle_sigterm: install a SIGTERM handler that makes `should_stop()` return True.
        Skipped off the main thread and when jax.distributed's preemption service owns
        SIGTERM (multi-host); then `should_stop` asks that service instead.
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 100, async_save: bool = True,
                 handle_sigterm: bool = True):
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        self.directory = _as_path(directory)
        self.save_interval_steps = save_interval_steps
        policy = ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
        ])
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_decision_policy=policy,
            enable_async_checkpointing=async_save,
            # Leftovers of saves killed midway (<step>.orbax-checkpoint-tmp-*) are not
            # checkpoints; Orbax removes them when the manager starts.
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _META))
        self._stop_requested = threading.Event()
        self._previous_handler = None
        self._handler_installed = False
        if handle_sigterm:
            self._install_sigterm_handler()

    # -- preemption --------------------------------------------------------------------

    def _install_sigterm_handler(self) -> None:
        if _jax_preemption_service_active():
            logger.info("jax.distributed preemption service handles SIGTERM; "
                        "Checkpointer.should_stop() will ask it.")
            return
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Checkpointer created off the main thread: no SIGTERM handler "
                           "installed; preemption will not be noticed.")
            return

        def handler(signum, frame):
            del frame
            logger.warning("Received signal %d: will save a checkpoint and stop at the "
                           "next step boundary.", signum)
            self._stop_requested.set()

        self._previous_handler = signal.signal(signal.SIGTERM, handler)
        self._handler_installed = True

    def _restore_sigterm_handler(self) -> None:
        if self._handler_installed:
            previous = self._previous_handler
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self._handler_installed = False

    def request_stop(self) -> None:
        """Makes `should_stop()` return True, as SIGTERM does."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        """Whether this process received SIGTERM (or `request_stop()`); no collectives."""
        return self._stop_requested.is_set()

    def should_stop(self, step: int) -> bool:
        """True when the loop should save (force=True) and exit: SIGTERM or preemption.

        Multi-process: all processes must call this at every step; they get the same
        answer (any process's SIGTERM, or jax's preemption sync point, stops them all).
        """
        stop = self._stop_requested.is_set()
        if jax.process_count() > 1:
            stop = _any_process(stop) or self._manager.reached_preemption(step)
        return stop

    # -- saving ------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without force would write a checkpoint."""
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, extra: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Saves `state` (pytree) and `extra` (JSON-able dict) as checkpoint `step`.

        Saves when `step` is a multiple of `save_interval_steps`, at a preemption sync
        point, or when `force` is True; returns whether a save was started. A step that
        already has a checkpoint is never overwritten (returns False).
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        if not force and not self._manager.should_save(step):
            return False
        meta = {"format_version": _FORMAT_VERSION, "step": step, "saved_at": time.time(),
                "process_count": jax.process_count(), "extra": tree_codec.json_encode(dict(extra or {}))}
        args = ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(tree_codec.to_savable(state)),
            _META: ocp.args.JsonSave(meta),
        })
        return bool(self._manager.save(step, args=args, force=force))

    # -- restoring ---------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """Newest finalized checkpoint step (not checked for validity), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Finalized checkpoint steps, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int, abstract_state: Any = None) -> tuple[Any, dict]:
        """Restores checkpoint `step` -> (state, extra); raises if it is unreadable.

        `abstract_state` gives the structure, dtypes and shardings to restore into: a
        pytree of `jax.ShapeDtypeStruct` (with `sharding=` to restore sharded under a
        mesh), or of concrete arrays (their shardings are used), or `None` to get the
        saved tree back as nested dicts/lists of arrays (namedtuples become dicts, keys
        stay uint32 key_data).
        """
        if abstract_state is None:
            state_args = ocp.args.StandardRestore()
        else:
            state_args = ocp.args.StandardRestore(tree_codec.to_restore_target(abstract_state))
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**{
            _STATE: state_args, _META: ocp.args.JsonRestore()}))
        state = restored[_STATE]
        if abstract_state is not None:
            state = tree_codec.from_restored(state, abstract_state)
        meta = restored[_META]
        if not isinstance(meta, dict) or "extra" not in meta:
            raise ValueError(f"{self.directory}/{step}/{_META}: not a jaxstep checkpoint "
                             f"metadata record (got {type(meta).__name__})")
        return state, tree_codec.json_decode(meta["extra"])

    def restore_to_host(self, step: int) -> tuple[Any, dict]:
        """Restores checkpoint `step` as host numpy arrays -> (state, extra), whatever
        topology wrote it (e.g. a multi-host run's checkpoint read in one process to
        inspect or compare it). Nested dicts/lists; typed keys stay uint32 key_data."""
        path = self.directory / str(int(step)) / _STATE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        handler = ocp.StandardCheckpointHandler()
        try:
            metadata = handler.metadata(path)
        finally:
            handler.close()
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                              metadata.tree)
        state, extra = self.restore(step, target)
        return jax.device_get(state), extra

    def restore_latest(self, abstract_state: Any = None) -> tuple[int, Any, dict] | None:
        """Restores the newest checkpoint that restores cleanly -> (step, state, extra).

        Returns None when the directory holds no checkpoint. Checkpoints newer than the
        one restored that failed (truncated or missing files) are logged and renamed to
        `<step>.corrupt`. If every checkpoint fails, nothing is renamed (the cause may be
        a wrong `abstract_state` rather than corruption) and the newest error is raised.
        """
        self.wait()
        self._manager.reload()
        failed: list[tuple[int, BaseException]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, extra = self.restore(step, abstract_state)
                ok = True
            except Exception as err:  # Orbax/tensorstore raise many types on bad files.
                ok, state, extra = False, None, None
                local_error = err
            if _all_processes_agree(ok):
                if failed:
                    self._quarantine([s for s, _ in failed])
                    logger.warning("Resumed from checkpoint %d in %s instead of the newer "
                                   "unreadable %s.", step, self.directory,
                                   [s for s, _ in failed])
                return step, state, extra
            err = local_error if not ok else RuntimeError("failed on another process")
            logger.warning("Checkpoint %d in %s cannot be restored (%s: %s); trying an "
                           "older one.", step, self.directory, type(err).__name__,
                           str(err).splitlines()[0] if str(err) else "")
            failed.append((step, err))
        if failed:
            step, err = failed[0]
            raise RuntimeError(
                f"No checkpoint in {self.directory} could be restored (tried steps "
                f"{[s for s, _ in failed]}); newest error at step {step}: "
                f"{type(err).__name__}: {err}") from err
        return None

    def _quarantine(self, steps: list[int]) -> None:
        """Renames unreadable step folders to `<step>.corrupt` (kept for inspection)."""
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                if not source.exists():
                    continue
                target = self.directory / f"{step}.corrupt"
                suffix = 1
                while target.exists():
                    target = self.directory / f"{step}.corrupt.{suffix}"
                    suffix += 1
                try:
                    source.rename(target)
                except OSError as err:  # e.g. object stores without directory renames
                    logger.error("Could not move unreadable checkpoint %s aside (%s); saves "
                                 "at steps <= %d will be skipped until it is removed.",
                                 source, err, step)
                    continue
                logger.warning("Moved unreadable checkpoint %s to %s.", source, target)
        _sync("jaxstep_checkpoint_quarantine")
        self._manager.reload()

    # -- lifecycle ---------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until a background save has finished writing (and is finalized)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves, releases the manager and restores the SIGTERM handler."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        finally:
            self._restore_sigterm_handler()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- one-off pytrees

def save_pytree(path, tree: Any, *, overwrite: bool = False) -> None:
    """Saves one pytree (e.g. a finished stage's params) to folder `path`, synchronously.

    Raises FileExistsError when `path` exists unless `overwrite`. The write is atomic:
    `path` appears only once complete.
    """
    path = _as_path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree_codec.to_savable(tree), force=overwrite)
        checkpointer.wait_until_finished()


def load_pytree(path, target: Any = None) -> Any:
    """Loads a pytree saved by `save_pytree`; `target` as `abstract_state` in `restore`."""
    path = _as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved pytree there")
    with ocp.StandardCheckpointer() as checkpointer:
        if target is None:
            return checkpointer.restore(path)
        restored = checkpointer.restore(path, tree_codec.to_restore_target(target))
    return tree_codec.from_restored(restored, target)


def abstract_like(tree: Any, sharding_fn: Callable[[Any], Any] | None = None) -> Any:
    """ShapeDtypeStruct tree of `tree`; `sharding_fn(leaf) -> Sharding` overrides shardings."""
    def leaf(x):
        sharding = sharding_fn(x) if sharding_fn else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    return jax.tree.map(leaf, tree)
