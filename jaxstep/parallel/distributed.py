"""Multi-host runs: when to call `jax.distributed.initialize()`, and per-host data helpers.

One JAX process runs per host (TPU VM worker, SLURM task). `maybe_initialize(config)`
starts the distributed runtime when the config or the environment says the run spans
several processes; every other helper here also works unchanged in a single process.

Decision order (first match wins; see `initialize_kwargs`):

1. `JAXSTEP_DISTRIBUTED=0` in the environment: never initialize.
2. `config.distributed.coordinator_address` / `num_processes` / `process_id` set: use them.
3. `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID` in the environment
   (what `launch/slurm_gpu.sh` exports): use them.
4. `config.distributed.enabled` or `JAXSTEP_DISTRIBUTED=1` (what `launch/tpu.sh`
   exports), a TPU pod (`TPU_WORKER_HOSTNAMES` with several hosts, `MEGASCALE_*`,
   `CLOUD_TPU_TASK_ID`), or a SLURM step with several tasks (`SLURM_STEP_NUM_TASKS` or
   `SLURM_NTASKS` > 1, with `SLURM_PROCID`): `jax.distributed.initialize()` with jax's
   own cluster auto-detection filling in what is not given.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on", "auto"}
_FALSE = {"0", "false", "no", "off"}


def _get(section: Any, name: str, default: Any = None) -> Any:
    """`section.get(name)` for ConfigDicts and dicts; `default` for None or missing."""
    if section is None:
        return default
    getter = getattr(section, "get", None)
    value = getter(name, default) if getter else getattr(section, name, default)
    return default if value is None else value


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from err


def initialize_kwargs(config: Any = None,
                      environ: Mapping[str, str] | None = None) -> dict | None:
    """Arguments for `jax.distributed.initialize`, or None for a single-process run.

    Pure: reads only `config.distributed` (may be absent) and `environ` (default
    `os.environ`). An empty dict means "initialize, auto-detecting everything".
    """
    environ = os.environ if environ is None else environ
    dist = _get(config, "distributed") if config is not None else None
    override = environ.get("JAXSTEP_DISTRIBUTED", "").strip().lower()
    if override in _FALSE:
        return None
    if override and override not in _TRUE:
        raise ValueError(f"environment variable JAXSTEP_DISTRIBUTED={override!r}: expected "
                         f"one of {sorted(_TRUE | _FALSE)}")

    # 2. Explicit coordinates in the config ("" / 0 / -1 mean unset).
    explicit = {}
    if _get(dist, "coordinator_address", ""):
        explicit["coordinator_address"] = str(_get(dist, "coordinator_address"))
    if int(_get(dist, "num_processes", 0)) > 0:
        explicit["num_processes"] = int(_get(dist, "num_processes"))
    if int(_get(dist, "process_id", -1)) >= 0:
        explicit["process_id"] = int(_get(dist, "process_id"))
    for optional in ("local_device_ids", "initialization_timeout"):
        if _get(dist, optional) not in (None, "", -1):
            explicit[optional] = _get(dist, optional)
    if "coordinator_address" in explicit:
        if explicit.get("num_processes") == 1:
            return None
        return explicit

    # 3. Explicit coordinates in the environment.
    address = environ.get("JAX_COORDINATOR_ADDRESS", "").strip()
    num_processes = _env_int(environ, "JAX_NUM_PROCESSES")
    process_id = _env_int(environ, "JAX_PROCESS_ID")
    if address and num_processes is not None and process_id is not None:
        if num_processes == 1:
            return None
        return {"coordinator_address": address, "num_processes": num_processes,
                "process_id": process_id, **explicit}

    # 4. Forced, or a multi-host cluster jax can auto-detect.
    forced = bool(_get(dist, "enabled", False)) or override in _TRUE
    tpu_hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    tpu_pod = (len(tpu_hosts) > 1 or bool(environ.get("MEGASCALE_COORDINATOR_ADDRESS"))
               or "CLOUD_TPU_TASK_ID" in environ)
    slurm_tasks = _env_int(environ, "SLURM_STEP_NUM_TASKS")
    if slurm_tasks is None:
        slurm_tasks = _env_int(environ, "SLURM_NTASKS")
    slurm = slurm_tasks is not None and slurm_tasks > 1 and "SLURM_PROCID" in environ
    if forced or tpu_pod or slurm:
        return explicit
    return None


def maybe_initialize(config: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize` if this run spans several processes.

    Idempotent; must run before any other JAX call (backends are created on first use).
    Returns whether the distributed runtime is initialized.
    """
    if jax.distributed.is_initialized():
        return True
    kwargs = initialize_kwargs(config, environ)
    if kwargs is None:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        # Cross-process collectives of CPU devices (tests, CPU clusters) need gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logger.info("jax.distributed.initialize(%s)",
                ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "auto-detect")
    jax.distributed.initialize(**kwargs)
    logger.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main_process() -> bool:
    """True on process 0, the one that writes reports, plots and metric files."""
    return jax.process_index() == 0


def process_shard(items: Sequence, *, drop_remainder: bool = False,
                  process_index: int | None = None, process_count: int | None = None):
    """This process's contiguous slice of `items` (a list, tuple or array).

    Process p of P gets items[p * n / P : (p + 1) * n / P] (sizes differ by at most one;
    with `drop_remainder` every process gets exactly n // P items so that all run the
    same number of steps). Contiguous blocks match `global_batch_from_local`: rows of a
    global batch sharded over the batch axis are laid out process by process.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} outside [0, {count})")
    n = len(items)
    if drop_remainder:
        per = n // count
        return items[index * per:(index + 1) * per]
    return items[index * n // count:(index + 1) * n // count]


def _default_batch_spec(mesh: Mesh) -> PartitionSpec:
    batch_axes = tuple(a for a in mesh.axis_names if a in ("data", "fsdp"))
    if not batch_axes:
        raise ValueError(f"mesh axes {mesh.axis_names} have no 'data'/'fsdp' axis; pass "
                         "the batch sharding explicitly")
    return PartitionSpec(batch_axes if len(batch_axes) > 1 else batch_axes[0])


def global_batch_from_local(local_arrays: Any, mesh: Mesh,
                            sharding: NamedSharding | PartitionSpec | Any = None) -> Any:
    """Assembles global jax.Arrays from each process's rows of the batch.

    Args:
      local_arrays: pytree of this process's arrays, `[local_batch, ...]` each (rows
        in process order, e.g. from `process_shard`).
      mesh: the global mesh.
      sharding: a NamedSharding or PartitionSpec for every leaf, or a pytree of them
        matching `local_arrays`; default shards dim 0 over the mesh's 'data'/'fsdp' axes.
    Returns:
      pytree of global arrays `[local_batch * process_count, ...]`.
    """
    if sharding is None:
        sharding = _default_batch_spec(mesh)

    def to_named(s):
        return NamedSharding(mesh, s) if isinstance(s, PartitionSpec) else s

    def is_sharding_leaf(s):
        return isinstance(s, (PartitionSpec, jax.sharding.Sharding))

    if is_sharding_leaf(sharding):
        named = to_named(sharding)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(named, np.asarray(x)),
            local_arrays)
    return jax.tree.map(
        lambda s, x: jax.make_array_from_process_local_data(to_named(s), np.asarray(x)),
        sharding, local_arrays, is_leaf=is_sharding_leaf)


def _is_prng_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def put_global(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` that also works when a sharding spans devices of
    other processes (multi-host), for values every process holds in full.

    Leaves whose target sharding is fully addressable, and global arrays (resharded),
    go through `jax.device_put`. Any other leaf (numpy, a single-device or uncommitted
    jax array, a typed PRNG key) must hold the same value on every process (params
    loaded from one checkpoint, keys from one seed): each process builds its own shards
    from it with `jax.make_array_from_callback`, without cross-host traffic.

    Args:
      tree: pytree of arrays (typed PRNG keys allowed).
      shardings: one Sharding for every leaf, or a pytree of Shardings matching `tree`.
    """
    def put(x, sharding):
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        if _is_prng_key(x):
            data = put(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: put(x, shardings), tree)
    return jax.tree.map(put, tree, shardings)


def sync_hosts(name: str) -> None:
    """Barrier: every process waits here until all reach the same `name`."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
