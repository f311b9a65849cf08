"""Placing params, batches and state on the mesh; processes; host copies.

    params = shard_params(params, model, mesh, rules)        # by logical axis names
    batch = shard_batch(local_numpy_batch, mesh)              # rows split over the data axes
    step = jit_step(train_step, mesh, rules)                  # jitted, run under the rules
    host = to_host(tree)                                      # numpy, gathered across hosts

Every process runs the same code; `is_main_process()` is the one that writes files.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxstep import models
from jaxstep.parallel import distributed
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib
from jax.experimental import multihost_utils


def is_main_process() -> bool:
    """True on process 0, the one that writes reports, exports and summaries."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def round_batch(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """`batch_size` rounded up to a multiple of the data-parallel size (and of the
    process count), so every batch splits evenly over the mesh."""
    ways = math.lcm(mesh_lib.data_parallel_size(mesh), jax.process_count())
    return max(ways, -(-batch_size // ways) * ways)


def _on_mesh(x, mesh) -> bool:
    sharding = getattr(x, "sharding", None)
    return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh


def place_on_mesh(tree, mesh: jax.sharding.Mesh):
    """Leaves not yet placed on `mesh` (step counters, RNG keys, ...) replicated on it."""
    replicated = rules_lib.replicated(mesh)
    return jax.tree.map(lambda x: x if _on_mesh(x, mesh) else distributed.put_global(x, replicated), tree)


def shard_params(params, model, mesh: jax.sharding.Mesh, rules=None):
    """Places `params` of `model` (a Decoder or ScalarModel) on `mesh` by its logical
    axis names and `rules` (default: `DEFAULT_RULES`). Multi-host: every process passes
    the same params and keeps its own shards."""
    shardings = rules_lib.param_shardings(params, models.logical_specs(model), mesh, rules)
    return distributed.put_global(params, shardings)


def frozen_dtype(compute_dtype) -> jnp.dtype:
    """The param dtype of a frozen model (reference policy, reward model): the compute
    dtype when it is a 16-bit float (no f32 master copy is needed for weights that are
    never updated: half the memory), else float32."""
    compute_dtype = jnp.dtype(compute_dtype)
    return compute_dtype if compute_dtype in (jnp.bfloat16, jnp.float16) else jnp.dtype(jnp.float32)


def cast_params(params, dtype):
    """A copy of `params` (new buffers, shardings kept) with every floating leaf in
    `dtype`; integer leaves are copied unchanged."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.copy(x)
    return jax.jit(lambda tree: jax.tree.map(cast, tree))(params)


def shard_batch(batch: dict, mesh: jax.sharding.Mesh, keys: Sequence[str] | None = None) -> dict:
    """This process's rows of `batch` (numpy, `[local_batch, ...]`) as global arrays
    split over the mesh's data axes; `keys` selects the entries to keep."""
    if keys is not None:
        batch = {k: batch[k] for k in keys}
    if jax.process_count() > 1:
        return distributed.global_batch_from_local(batch, mesh)
    return rules_lib.shard_batch(batch, mesh)


def jit_step(fn, mesh: jax.sharding.Mesh, rules=None, *, donate_argnums=(0,)):
    """`jax.jit(fn)` (first argument donated) run under `mesh` and the logical `rules`,
    so the model's activation constraints apply."""
    jitted = jax.jit(fn, donate_argnums=donate_argnums)

    def call(*args, **kwargs):
        with rules_lib.activation_sharding(mesh, rules):
            return jitted(*args, **kwargs)

    call.jitted = jitted
    return call


def to_host(tree):
    """Arrays (possibly sharded over several processes) as host numpy arrays."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
