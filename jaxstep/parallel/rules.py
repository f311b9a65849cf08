"""Logical-axis sharding rules (MaxText style) and helpers to place params and batches.

Parameters carry logical axis names (`jaxstep.models.logical_specs`); the rules, a list
of `(logical name, mesh axis | tuple of mesh axes | None)` pairs kept in the config
(`config.mesh.rules`), map them to mesh axes. A logical name may appear in several rules:
the first whose mesh axes are still free in that array wins (so activations
`("batch", "length", "embed")` put fsdp on the batch, not on embed).

    mesh = make_mesh(config.mesh)
    params = shard_params(params, models.logical_specs(model), mesh, config.mesh.rules)
    batch = shard_batch(batch, mesh)
    with activation_sharding(mesh, rules):     # enables the model's logical constraints
        out = jax.jit(step)(params, batch)
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

# The default rules (`config.mesh.rules`): (logical axis name, mesh axis or axes or None).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
)

Rules = tuple[tuple[str, Any], ...]
BATCH_AXES = ("data", "fsdp")

__all__ = ["DEFAULT_RULES", "normalize_rules", "logical_to_mesh_spec", "param_shardings",
           "shard_params", "batch_sharding", "shard_batch", "replicated", "activation_sharding"]


def normalize_rules(rules: Any = None) -> Rules:
    """Rules as a tuple of `(name, None | str | tuple[str, ...])` (lists from configs ok)."""
    if rules is None:
        return tuple(DEFAULT_RULES)
    out = []
    for name, axes in rules:
        if axes is not None and not isinstance(axes, str):
            axes = tuple(axes)
        out.append((str(name), axes))
    return tuple(out)


def axes_size(mesh: Mesh, axes) -> int:
    """Devices along mesh `axes` (a name, a tuple of names, or None = 1)."""
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh_spec(logical: PartitionSpec, mesh: Mesh, rules: Any = None,
                         shape: Sequence[int] | None = None) -> PartitionSpec:
    """Mesh PartitionSpec of one array's logical spec.

    With `shape`, a dimension that the assigned mesh axes do not divide is replicated
    instead (e.g. 2 KV heads on a tensor axis of 4).
    """
    rules = normalize_rules(rules)
    spec = list(nn.logical_to_mesh_axes(tuple(logical), rules))
    spec = [a if (a is None or all(x in mesh.shape for x in ((a,) if isinstance(a, str) else a)))
            else None for a in spec]
    if shape is not None:
        for i, axes in enumerate(spec):
            if axes is not None and shape[i] % axes_size(mesh, axes):
                log.debug("replicating dim %d of %s (size %d not divisible by %s)", i,
                          logical, shape[i], axes)
                spec[i] = None
    return PartitionSpec(*spec)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def param_shardings(params_or_shapes: Any, specs: Any, mesh: Mesh, rules: Any = None) -> Any:
    """NamedSharding tree for params (arrays or ShapeDtypeStructs) with logical `specs`."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, mesh, rules, x.shape)),
        specs, params_or_shapes, is_leaf=_is_spec)


def shard_params(params: Any, specs: Any, mesh: Mesh, rules: Any = None) -> Any:
    """Places `params` on `mesh` by their logical `specs` (same tree) and `rules`."""
    return jax.device_put(params, param_shardings(params, specs, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose dim 0 is the batch (split over data and fsdp)."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes or None, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places every array of `batch` with dim 0 split over (data, fsdp); scalars replicated.

    Raises ValueError naming the leaf when its batch size is not divisible.
    """
    ways = axes_size(mesh, tuple(a for a in BATCH_AXES if a in mesh.shape))

    def place(path, x):
        if getattr(x, "ndim", 0) == 0:
            return jax.device_put(x, replicated(mesh))
        if x.shape[0] % ways:
            raise ValueError(f"shard_batch: {jax.tree_util.keystr(path)} has batch size "
                             f"{x.shape[0]}, not divisible by the {ways} data-parallel shards.")
        return jax.device_put(x, batch_sharding(mesh, x.ndim))

    return jax.tree_util.tree_map_with_path(place, batch)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Any = None) -> Iterator[None]:
    """Sets the mesh and logical rules so the model's activation constraints apply.

    Trace (first call of) jitted functions inside this context.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(normalize_rules(rules)):
        yield
