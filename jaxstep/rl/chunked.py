"""The rollout scorer over a rollout of any size, `sampler.batch_size` rows per call.

    scored = score_chunked(scorer, params, host_batch, batch, mesh, chunk_size)

The scorer (`jaxstep.rl.scorer.make_scorer`) is row-wise: every output row depends on
its own input row only (log-probs, values, reward-model scores, shaping), so chunked
scores equal one call's exactly (tests/test_rollout_chunks.py). The sampler side is
`jaxstep.generation.generate_chunked`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep import generation
from jaxstep.parallel import distributed, placement
from jaxstep.parallel import rules as rules_lib


def score_chunked(scorer: Callable, params: dict, host_batch: dict[str, np.ndarray], batch: dict | None,
                  mesh: jax.sharding.Mesh, chunk_size: int) -> dict:
    """`scorer(params, batch)` in chunks of `generation.chunk_rows(rows, chunk_size, mesh)` rows.

    Args:
      scorer: the rollout scorer, `(params, sharded batch) -> dict of [rows, ...]`.
      host_batch: the whole rollout batch, numpy `[rows, ...]` (the same on every process).
      batch: `host_batch` already sharded on the mesh (as the update uses it), or None.
        One chunk (`chunk_size` 0 or >= rows) scores it as is: bitwise one call.
      chunk_size: `sampler.batch_size`; 0 = one call.

    Returns:
      the scorer's outputs for all rows, in row order, split over the data axes.
    """
    rows = len(next(iter(host_batch.values())))
    size = generation.chunk_rows(rows, chunk_size, mesh)
    if size == rows:
        if batch is None:
            local = distributed.process_shard(np.arange(rows))
            batch = placement.shard_batch({k: v[local] for k, v in host_batch.items()}, mesh)
        return scorer(params, batch)
    local = distributed.process_shard(np.arange(size))  # this process's rows of each chunk
    outs = []
    for part in generation.chunk_slices(rows, size):
        chunk = {k: generation.pad_rows(v[part], size)[local] for k, v in host_batch.items()}
        outs.append(scorer(params, placement.shard_batch(chunk, mesh)))
    return _join(outs, rows, mesh)


def _join(outs: list[dict], rows: int, mesh) -> dict:
    """The chunks' outputs concatenated along rows (padding rows dropped), on the data axes."""
    shardings = {k: rules_lib.batch_sharding(mesh, v.ndim) for k, v in outs[0].items()}

    def join(parts):
        return {k: jnp.concatenate([p[k] for p in parts])[:rows] for k in parts[0]}
    return jax.jit(join, out_shardings=shardings)(outs)
