"""Device mesh with axes (data, fsdp, tensor) from the config's `mesh` section.

    mesh = make_mesh(config.mesh)          # {"data": -1, "fsdp": 1, "tensor": 1}
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

Axes are Auto (jax.make_mesh's default is Explicit, which rejects
`with_sharding_constraint`). One size may be -1: it takes the remaining devices.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_MESH_SHAPE = {"data": -1, "fsdp": 1, "tensor": 1}


def _section_get(section: Any, name: str, default: Any) -> Any:
    if section is None:
        return default
    if isinstance(section, Mapping):
        return section.get(name, default)
    return getattr(section, name, default)


def mesh_shape(mesh_config: Any = None, num_devices: int | None = None) -> dict[str, int]:
    """Resolves `{"data", "fsdp", "tensor"}` sizes (one may be -1) for `num_devices`.

    Raises ValueError when the sizes do not multiply to the device count.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    shape = {a: int(_section_get(mesh_config, a, DEFAULT_MESH_SHAPE[a])) for a in MESH_AXES}
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {shape}.")
    known = math.prod(n for n in shape.values() if n != -1)
    if any(n == 0 or n < -1 for n in shape.values()):
        raise ValueError(f"mesh: sizes must be positive or -1, got {shape}.")
    if free:
        if num_devices % known:
            raise ValueError(f"mesh: {shape} does not divide {num_devices} devices.")
        shape[free[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise ValueError(f"mesh: {shape} needs {math.prod(shape.values())} devices, "
                         f"have {num_devices}.")
    return shape


def make_mesh(mesh_config: Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all).

    `mesh_config` is the config's `mesh` section (ConfigDict), a dict, or None for
    all devices on `data`.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (product of the `data` and `fsdp` axes)."""
    return math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
