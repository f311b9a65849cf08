"""What a checkpoint holds, leaf by leaf: typed PRNG keys as raw key data (and back,
with their implementation), and JSON extras with bytes as base64.

    savable = to_savable(state)                      # Orbax-savable pytree
    state = from_restored(restored, target=state)    # typed keys again
    text = json.dumps(json_encode(extra)); extra = json_decode(json.loads(text))
"""
from __future__ import annotations

import base64
from typing import Mapping

import jax
import numpy as np


BYTES_TAG = "__bytes_b64__"


def is_prng_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def key_impl(x):
    """The PRNG implementation of a typed key array or of its ShapeDtypeStruct."""
    if isinstance(x, jax.Array):
        return jax.random.key_impl(x)
    return getattr(x.dtype, "_impl", None)


def to_savable(tree):
    """Typed keys -> uint32 key_data; numpy scalars -> 0-d arrays (Orbax rejects both)."""
    def leaf(x):
        if is_prng_key(x):
            return jax.random.key_data(x)
        if isinstance(x, np.generic):
            return np.asarray(x)
        return x
    return jax.tree.map(leaf, tree)


def to_restore_target(tree):
    """Abstract restore target: jax arrays -> ShapeDtypeStruct (with their sharding)."""
    def leaf(x):
        if is_prng_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.generic):
            return np.asarray(x)
        return x
    return jax.tree.map(leaf, tree)


def from_restored(restored, target):
    """Undoes `to_savable` leaf by leaf, guided by the caller's target tree."""
    def leaf(t, r):
        if is_prng_key(t):
            return jax.random.wrap_key_data(r, impl=key_impl(t))
        if isinstance(t, np.generic):
            return t.dtype.type(np.asarray(r))
        if isinstance(t, (bool, int, float)) and not isinstance(r, type(t)):
            return type(t)(np.asarray(r))
        return r
    return jax.tree.map(leaf, target, restored)


def json_encode(obj):
    """Makes `obj` JSON-safe: bytes -> {"__bytes_b64__": ...}, numpy -> Python."""
    if isinstance(obj, (bytes, bytearray)):
        return {BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint extra: JSON keys must be strings, got {key!r}")
            out[key] = json_encode(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [json_encode(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"checkpoint extra: cannot store {type(obj).__name__} value {obj!r} as JSON")


def json_decode(obj):
    if isinstance(obj, dict):
        if set(obj) == {BYTES_TAG}:
            return base64.b64decode(obj[BYTES_TAG])
        return {k: json_decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_decode(v) for v in obj]
    return obj
