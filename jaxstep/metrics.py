"""Metrics a researcher can plot: one JSON line per step plus TensorBoard events.

`MetricWriter(workdir)` appends `{"step": s, **metrics}` lines to
`<workdir>/metrics.jsonl` (flushed per write, so a killed run keeps what it logged)
and the same scalars to TensorBoard event files under `<workdir>/tb`. Only process 0
writes; other processes get a writer that does nothing. A remote workdir (`gs://...`)
is written through local copies (`jaxstep.paths.Staged`) pushed on `flush`, on `close`
and at most every `push_seconds` while writing.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np

from jaxstep import paths


def _to_scalar(value: Any) -> float | int | None:
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - non-numeric metrics are dropped from TB only
        return None
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        return None
    item = arr.reshape(()).item()
    return item


UNDEFINED = "undefined"


def mark_undefined(values: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """`values` with each undefined number (NaN: how the evaluation code marks a metric it
    cannot compute on the data at hand, e.g. an AUC over one class) replaced by None
    (JSON null, no TensorBoard point) and named with `reason` under `"undefined"`:
    `{name: reason}` (absent when all are defined). Infinities and every other value are
    kept: they are a result, not "undefined".

        {"auc": nan, "acc": 0.5} -> {"auc": None, "acc": 0.5, "undefined": {"auc": reason}}
    """
    out: dict[str, Any] = {}
    undefined: dict[str, str] = {}
    for key, value in values.items():
        scalar = _to_scalar(value)
        if isinstance(scalar, float) and math.isnan(scalar):
            out[key] = None
            undefined[key] = reason
        else:
            out[key] = value
    if undefined:
        out[UNDEFINED] = undefined
    return out


class MetricWriter:
    """Writes scalar metrics as JSON lines and TensorBoard events.

    Args:
      workdir: run folder; created if missing.
      filename: JSON-lines file name inside `workdir`.
      tensorboard: also write TensorBoard event files under `<workdir>/tb/<prefix>`.
      prefix: TensorBoard subfolder and tag prefix (e.g. "sft", "ppo").
      enabled: if False (non-zero processes), every call is a no-op.
    """

    def __init__(self, workdir: str, filename: str = "metrics.jsonl", *,
                 tensorboard: bool = True, prefix: str = "", enabled: bool | None = None,
                 push_seconds: float = 60.0):
        if enabled is None:
            import jax
            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.prefix = prefix
        self.path = paths.join(workdir, filename)
        self._tb = None
        if not enabled:
            return
        paths.makedirs(workdir)
        self._staged = paths.Staged(self.path)
        self._file = open(self._staged.local, "a", encoding="utf-8")
        self._push_seconds, self._pushed = push_seconds, time.time()
        if tensorboard:
            from tensorboardX import SummaryWriter
            tb_dir = paths.join(workdir, "tb", prefix) if prefix else paths.join(workdir, "tb")
            self._tb_remote = tb_dir if paths.is_remote(tb_dir) else ""
            self._tb_local = paths.local_dir("jaxstep_tb_") if self._tb_remote else tb_dir
            self._tb = SummaryWriter(self._tb_local)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs `metrics` at `step`; non-scalar values go to JSON only."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            scalar = _to_scalar(value)
            if scalar is None:
                record[key] = value if isinstance(value, (str, list, dict, bool)) or value is None else str(value)
                continue
            if isinstance(scalar, float) and not math.isfinite(scalar):
                record[key] = str(scalar)  # JSON has no NaN/inf
            else:
                record[key] = scalar
            if self._tb is not None:
                tag = f"{self.prefix}/{key}" if self.prefix else key
                self._tb.add_scalar(tag, float(scalar), int(step))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._staged.remote and time.time() - self._pushed >= self._push_seconds:
            self.flush()

    def _push(self) -> None:
        self._pushed = time.time()
        self._staged.push()
        if self._tb is not None and self._tb_remote:
            for name in os.listdir(self._tb_local):
                paths.makedirs(self._tb_remote)
                paths.copy_file(os.path.join(self._tb_local, name), paths.join(self._tb_remote, name))

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self._tb is not None:
                self._tb.flush()
            self._push()

    def close(self) -> None:
        if self.enabled and not self._file.closed:
            self._file.close()
            if self._tb is not None:
                self._tb.close()
            self._push()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file back into a list of dicts (for plots and reports)."""
    rows = []
    with paths.open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows
