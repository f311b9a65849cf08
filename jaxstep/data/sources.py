"""Problems for a stage from `config.data`: sources, splits, weighted mixes.

    problems = load_problems(config, "gsm8k:0.5,math:0.5", "train")   # a shuffled 1:1 mix
    problems = eval_problems(config, limit=100)                       # first eval source, test split
    skipped_count(problems)                   # unusable records the readers skipped (for summaries)

Every function returns a `jaxstep.data.problem.Records` list whose `.skipped` counts
the records its readers skipped (summed over the sources of a mix).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from jaxstep.data import synthetic
from jaxstep.data.problem import DataError, Problem, Records
from jaxstep.data.readers import load as load_source


# Synthetic test problems are drawn with this fixed seed, so that runs with different
# `config.seed` are compared on the same problems.
EVAL_SEED = 0


def synthetic_difficulty(config) -> dict[str, Any]:
    """`jaxstep.data.synthetic.Difficulty` fields from `config.data` (the synthetic_* knobs)."""
    d = config.data
    knobs = {"min_steps": d.synthetic_min_steps, "max_steps": d.synthetic_max_steps,
             "max_value": d.synthetic_max_value}
    for name in ("max_factor", "max_result", "ops"):  # optional knobs
        if f"synthetic_{name}" in d:
            knobs[name] = d[f"synthetic_{name}"]
    return knobs


def parse_sources(spec: str) -> list[tuple[str, float]]:
    """ "gsm8k:0.5,math:0.5" -> [("gsm8k", 0.5), ("math", 0.5)]; a missing weight is 1.

    A colon is read as a weight only when what follows it is a number (so Windows-free
    local paths and `hf:<name>` sources pass through).
    """
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep:
            try:
                weight = float(tail)
                name = head
            except ValueError:
                pass
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"source {part!r} in {spec!r}: the weight must be a finite number >= 0")
        out.append((name, weight))
    if not out:
        raise ValueError(f"no data source in {spec!r}")
    return out


def skipped_count(*problem_lists) -> int:
    """Records skipped while reading the given lists (their `.skipped`; 0 for a plain list)."""
    return int(sum(getattr(p, "skipped", 0) for p in problem_lists))


def load_source_problems(config, source: str, split: str, limit: int | None = None) -> Records:
    """Problems of one source and split. Synthetic: `limit` problems (default
    `data.num_train` for train, `data.num_eval` otherwise) with the config's knobs;
    real sets: the first `limit` (None or 0 = all)."""
    d = config.data
    if synthetic.is_synthetic(source):  # "synthetic" takes the config's knobs, LEVELS their own
        n = limit if limit else (d.num_train if split == "train" else d.num_eval)
        seed = config.seed if split == "train" else EVAL_SEED
        knobs = synthetic_difficulty(config) if source == "synthetic" else {}
        return Records(load_source(source, split, limit=n, seed=seed, **knobs))
    kw = {"data_dir": d.data_dir} if d.data_dir and source in ("gsm8k", "math", "math500") else {}
    records = load_source(source, split, limit=limit or None, skip_bad_records=d.skip_bad_records, **kw)
    if not records:  # an empty file, or every record skipped: never run on zero problems
        raise DataError(source, None, f"no problems in split {split!r} (an empty file or folder, "
                        f"or all {skipped_count(records)} records skipped as bad or unusable)")
    return Records(records, skipped=skipped_count(records))


def mix(groups: Sequence[Sequence[Problem]], weights: Sequence[float], key: jax.Array,
        total: int | None = None) -> list[Problem]:
    """A shuffled mixture holding `round(total * w_i / sum(w))` problems of group i.

    A group with fewer problems than its share is repeated (each copy reshuffled), a
    larger one subsampled. `total` defaults to the sum of the group sizes.
    """
    if len(groups) != len(weights):
        raise ValueError(f"{len(groups)} groups but {len(weights)} weights")
    weight_sum = float(sum(weights))
    if weight_sum <= 0:
        raise ValueError(f"source weights {list(weights)} sum to 0")
    total = sum(len(g) for g in groups) if total is None else total
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    mixed: list[Problem] = []
    for group, weight in zip(groups, weights):
        share = int(round(total * weight / weight_sum))
        if share and not group:
            raise ValueError("a data source with a positive weight has no problems")
        picked: list[int] = []
        while len(picked) < share:
            picked.extend(rng.permutation(len(group))[:share - len(picked)].tolist())
        mixed.extend(group[i] for i in picked)
    return [mixed[i] for i in rng.permutation(len(mixed))]


def load_problems(config, sources: str, split: str, *, limit: int | None = None,
                  key: jax.Array | None = None) -> Records:
    """Problems of a comma list of sources `"name[:weight],..."` for one split.

    One source: its problems (`limit` as in `load_source_problems`). Several: without
    weights, their concatenation; with weights, `mix` of them (`limit` total, default
    the sum of their sizes) shuffled with `key` (default from `config.seed`).
    """
    parsed = parse_sources(sources)
    if len(parsed) == 1:
        return load_source_problems(config, parsed[0][0], split, limit)
    weighted = any(w != 1.0 for _, w in parsed)
    groups = [load_source_problems(config, name, split, None if weighted else limit)
              for name, _ in parsed]
    skipped = skipped_count(*groups)
    if not weighted:
        return Records([p for g in groups for p in g], skipped=skipped)
    key = jax.random.fold_in(jax.random.key(config.seed), 17) if key is None else key
    return Records(mix(groups, [w for _, w in parsed], key, total=limit or None), skipped=skipped)


def eval_problems(config, limit: int) -> Records:
    """The first `limit` test problems of the first `data.eval_sources` source (the
    periodic evals of the training stages); `limit <= 0` gives none."""
    if limit <= 0:
        return Records()
    source = parse_sources(config.data.eval_sources)[0][0]
    return load_source_problems(config, source, "test", limit)
