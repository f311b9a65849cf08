"""Ahead-of-time compilation for a TPU slice, NVIDIA GPUs (or N host CPU devices) on any machine.

The TPU compiler (the `libtpu` package, `pip install "jaxstep[tpu]"`) can compile a
program for a slice that is not attached: `jax.experimental.topologies` gives
compile-only devices of the slice, and the compiled program reports its per-chip memory
(`memory_analysis`) and FLOPs (`cost_analysis`). A program that does not fit in HBM
fails to compile with RESOURCE_EXHAUSTED, which `compile_program` turns into an
`OutOfMemory` result instead of an exception.

    topo = parse_topology("v5e-8")                       # 8 v5e chips, "v5e:2x4"
    mesh = make_abstract_mesh(topo, {"data": 1, "fsdp": -1, "tensor": 1})
    abs_params = models.abstract_params(model)
    params = with_shardings(abs_params, rules.param_shardings(
        abs_params, models.logical_specs(model), mesh))
    out = compile_program(step, params, ids, mesh=mesh, name="sft_step")
    report = analyze(out, topo)       # {"peak_bytes": ..., "fits": ..., "flops": ...}

All byte and FLOP figures are per chip (per device); the SPMD-partitioned program one
chip runs. `cpu-N` runs the same path on N fake host CPU devices (jax must be started
with `XLA_FLAGS=--xla_force_host_platform_device_count=N`), which checks sharding and
compiles without libtpu, with host-compiler figures. `h100-N` / `h200-N` compile for N
GPUs with the CUDA PJRT plugin and no GPU (`jaxstep.parallel.gpu_targets`; hosts of 8).

Compile time grows with the model: a Qwen2-1.5B training step for v5e-8 takes minutes on
a 2-core host. Loading the TPU compiler sets `ALLOW_MULTIPLE_LIBTPU_LOAD=1` (unless set),
so several compile-only processes can run at once.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import math
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jaxstep.parallel import gpu_targets
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib

log = logging.getLogger(__name__)

GiB = 2 ** 30

# Per-chip published figures: (HBM bytes, bf16 peak FLOP/s, topology dims).
# Sources: Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
# /v6e): v4 32 GiB HBM2, 275 TFLOP/s; v5e 16 GB HBM2, 197 TFLOP/s; v5p 95 GB HBM2e,
# 459 TFLOP/s; v6e (Trillium) 32 GB HBM, 918 TFLOP/s. HBM sizes are the chips' binary
# capacities (the compiler reports e.g. "available HBM (15.75G)" on v5e: 16 GiB minus
# its reservation). v4 and v5p slices are 3D tori whose accelerator-type number counts
# TensorCores (2 per chip); v5e and v6e are 2D tori counted in chips.
_CHIPS = {
    "v4": (32 * GiB, 275e12, 3),
    "v5e": (16 * GiB, 197e12, 2),
    "v5p": (95 * GiB, 459e12, 3),
    "v6e": (32 * GiB, 918e12, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}
_CORES_PER_CHIP_IN_NAME = {"v4": 2, "v5p": 2}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice to compile for.

    Attributes:
      name: the accelerator type as given, e.g. "v5e-8", "h100-8" or "cpu-8".
      kind: "v4" | "v5e" | "v5p" | "v6e" | "h100" | "h200" | "cpu".
      num_chips: chips or GPUs (JAX devices; v4/v5p run one device per chip, "megacore").
      topology_name: for `get_topology_desc`, e.g. "v5e:2x4" or "1x1x8" (GPUs); None for cpu.
      hbm_bytes: memory per chip in bytes (cpu: the host's RAM / num_chips).
      peak_flops: published bf16 peak FLOP/s per chip; None for cpu.
      target_config_file: GPUs only: a `GpuTargetConfigProto` text file describing them
        instead of `gpu_targets.GPUS` ("" = the built-in description).
    """

    name: str
    kind: str
    num_chips: int
    topology_name: str | None
    hbm_bytes: int
    peak_flops: float | None
    target_config_file: str = ""

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def is_gpu(self) -> bool:
        return self.kind in gpu_targets.GPUS


def _dims(num_chips: int, ndim: int) -> tuple[int, ...]:
    """Torus dims of a power-of-two slice, as Cloud TPU shapes them: 2D 2x4, 4x4, 4x8 ...;
    3D 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8 ... (each axis once, then the last first)."""
    if num_chips < 1 or num_chips & (num_chips - 1):
        raise ValueError(f"topology: {num_chips} chips is not a power of two.")
    dims = [1] * ndim
    cycle = list(reversed(range(ndim)))
    for i in range(int(math.log2(num_chips))):
        dims[i if i < ndim else cycle[(i - ndim) % ndim]] *= 2
    return tuple(dims)


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_topology(name: str | Topology) -> Topology:
    """A `Topology` from a Cloud TPU accelerator type, `h100-N` / `h200-N` or `cpu-N`.

    Accepts "v4-8" (TensorCores: 4 chips), "v5p-8" (cores: 4 chips), "v5e-8" /
    "v5litepod-8" (chips), "v6e-8" (chips), larger slices ("v5e-16", "v4-32", ...), an
    explicit shape ("v5e:2x4", "v4:2x2x2"), "h100-8" / "h200-16" (N GPUs, hosts of 8)
    and "cpu-N" (N host CPU devices). Raises ValueError for anything else.
    """
    if isinstance(name, Topology):
        return name
    text = name.strip().lower()
    if m := re.fullmatch(r"cpu-(\d+)", text):
        n = int(m[1])
        if n < 1:
            raise ValueError(f"topology {name!r}: need at least one device.")
        return Topology(name, "cpu", n, None, _host_memory_bytes() // n, None)
    if (m := re.fullmatch(r"([a-z0-9]+)-(\d+)", text)) and m[1] in gpu_targets.GPUS:
        spec, n = gpu_targets.GPUS[m[1]], int(m[2])
        return Topology(name, m[1], n, gpu_targets.topology_shape(n), spec.memory_bytes, spec.peak_flops)
    if m := re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text):
        kind = _ALIASES.get(m[1], m[1])
        dims = tuple(int(d) for d in m[2].split("x"))
        if kind not in _CHIPS or len(dims) != _CHIPS[kind][2]:
            raise ValueError(f"topology {name!r}: expected e.g. v5e:2x4 or v4:2x2x1.")
        chips = math.prod(dims)
    elif m := re.fullmatch(r"([a-z0-9]+)-(\d+)", text):
        kind = _ALIASES.get(m[1], m[1])
        if kind not in _CHIPS:
            raise ValueError(f"topology {name!r}: unknown TPU {m[1]!r}; known: "
                             f"{', '.join(_CHIPS)}, v5litepod, {', '.join(gpu_targets.GPUS)} (GPUs), cpu-N.")
        count = int(m[2])
        per = _CORES_PER_CHIP_IN_NAME.get(kind, 1)
        if count % per:
            raise ValueError(f"topology {name!r}: {kind}-N counts TensorCores ({per} per chip).")
        chips = count // per
        dims = _dims(chips, _CHIPS[kind][2])
    else:
        raise ValueError(f"topology {name!r}: expected an accelerator type such as v5e-8, "
                         "v4-8, v5p-8, v6e-8, a shape such as v5e:2x4, h100-8, h200-8 or cpu-N.")
    hbm, peak, _ = _CHIPS[kind]
    return Topology(name, kind, chips, f"{kind}:{'x'.join(map(str, dims))}", hbm, peak)


def libtpu_available() -> bool:
    """Whether the TPU compiler (the `libtpu` package) is installed."""
    return importlib.util.find_spec("libtpu") is not None


@functools.lru_cache(maxsize=None)
def _tpu_devices(topology_name: str, kind: str) -> tuple:
    if not libtpu_available():
        raise RuntimeError(f"compiling for {topology_name} needs the TPU compiler: "
                           f'pip install "jax[tpu]=={jax.__version__}" (or jaxstep[tpu]).')
    # Compile-only use: let several processes load libtpu at once (each otherwise takes
    # an exclusive lock on /tmp/libtpu_lockfile, meant for processes driving real chips).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    # v4 defaults to one device per TensorCore here; real v4 hosts run one per chip.
    extra = {"chip_config_name": "megacore"} if kind == "v4" else {}
    return tuple(topologies.get_topology_desc(platform="tpu", topology_name=topology_name,
                                              **extra).devices)


def abstract_devices(topology: str | Topology) -> list:
    """The `num_chips` devices of `topology`: compile-only TPU or GPU devices, or for cpu-N
    the first N host CPU devices. Raises RuntimeError (saying how to fix it) when libtpu
    or the CUDA plugin is missing or jax has fewer than N CPU devices."""
    topo = parse_topology(topology)
    if topo.is_gpu:
        return list(gpu_targets.compile_only_devices(topo.kind, topo.num_chips, topo.target_config_file))
    if topo.is_cpu:
        devices = jax.devices("cpu")
        if len(devices) < topo.num_chips:
            raise RuntimeError(
                f"{topo.name}: jax has {len(devices)} CPU device(s). Start python with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={topo.num_chips} (before jax "
                f"is imported) or call jax.config.update('jax_num_cpu_devices', "
                f"{topo.num_chips}) before jax first runs anything.")
        return list(devices[:topo.num_chips])
    devices = list(_tpu_devices(topo.topology_name, topo.kind))
    if len(devices) != topo.num_chips:
        raise RuntimeError(f"{topo.name}: the compiler's {topo.topology_name} has "
                           f"{len(devices)} devices, expected {topo.num_chips}.")
    return devices


def make_abstract_mesh(topology: str | Topology, shape: Any = None,
                       axis_names: Sequence[str] = mesh_lib.MESH_AXES) -> Mesh:
    """A `Mesh` with Auto axes over `topology`'s devices.

    `shape` is a sequence of ints matching `axis_names`, or a mesh config section /
    dict `{"data", "fsdp", "tensor"}` (one size may be -1), or None (all on `data`).
    Device order follows the torus (`jax.make_mesh`, splitting a torus axis if the shape
    needs it), as on a real slice; GPUs in host order.
    """
    topo = parse_topology(topology)
    devices = abstract_devices(topo)
    if shape is None or not isinstance(shape, Sequence):
        resolved = mesh_lib.mesh_shape(shape, len(devices))
        axis_names = mesh_lib.MESH_AXES
        shape = tuple(resolved[a] for a in axis_names)
    shape, axis_names = tuple(int(s) for s in shape), tuple(axis_names)
    if len(shape) != len(axis_names) or math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(axis_names, shape))} does not fit "
                         f"{len(devices)} devices.")
    axis_types = (AxisType.Auto,) * len(shape)
    if topo.is_gpu:  # hosts of GPUs in order: no torus to follow
        return Mesh(np.asarray(devices).reshape(shape), axis_names, axis_types=axis_types)
    try:
        return jax.make_mesh(shape, axis_names, axis_types=axis_types, devices=devices)
    except NotImplementedError:  # a mesh axis that splits a torus axis (e.g. 32 on 4x4x4)
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, axis_names, axis_types=axis_types)


def with_shardings(abstract: Any, shardings: Any, dtype: Any = None) -> Any:
    """`jax.ShapeDtypeStruct`s of `abstract` (arrays or structs) carrying `shardings`
    (same tree), optionally cast to `dtype` (e.g. float32 master weights)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, dtype or a.dtype, sharding=s),
        abstract, shardings)


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """A program the compiler rejected with RESOURCE_EXHAUSTED (too big for HBM).

    `required_bytes` / `available_bytes` per chip are parsed from the message when it
    names them (else None).
    """

    name: str
    message: str
    required_bytes: int | None
    available_bytes: int | None
    compile_seconds: float


_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50}
_NUM = r"([\d.]+)\s*([KMGTP]?)i?B?"
_OOM_PATTERNS = (  # (required, available) as the TPU compiler words them
    re.compile(r"required for [^(]*\(" + _NUM + r"\) exceeds available HBM \(" + _NUM + r"\)"),
    re.compile(r"Used " + _NUM + r" of " + _NUM + r" hbm", re.IGNORECASE),
)


def parse_oom(message: str) -> tuple[int | None, int | None]:
    """`(required, available)` bytes from a RESOURCE_EXHAUSTED compile message (binary
    units, as XLA prints them: "40.00G" = 40 GiB), or `(None, None)`."""
    for pattern in _OOM_PATTERNS:
        if m := pattern.search(message):
            need = int(float(m[1]) * _UNITS[m[2]])
            have = int(float(m[3]) * _UNITS[m[4]])
            return need, have
    return None, None


def compile_program(fn: Callable, *abstract_args, in_shardings: Any = None,
                    out_shardings: Any = None, donate_argnums: int | Sequence[int] = (),
                    static_argnums: int | Sequence[int] = (), mesh: Mesh | None = None,
                    rules: Any = None, name: str | None = None):
    """`jax.jit(fn).lower(*abstract_args).compile()` for the devices the shardings name.

    `abstract_args` are `jax.ShapeDtypeStruct`s (with `sharding=`, or give
    `in_shardings`). With `mesh`, tracing runs under `rules.activation_sharding(mesh,
    rules)` so the model's logical activation constraints apply. Logs the program's name
    and compile seconds.

    Returns the `jax.stages.Compiled`, or an `OutOfMemory` when the compiler reports
    RESOURCE_EXHAUSTED; other errors propagate.
    """
    name = name or getattr(fn, "__name__", "program")
    kwargs = dict(donate_argnums=donate_argnums, static_argnums=static_argnums)
    if in_shardings is not None:
        kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
        kwargs["out_shardings"] = out_shardings
    jitted = jax.jit(fn, **kwargs)
    log.info("aot: compiling %s ...", name)
    start = time.perf_counter()
    try:
        if mesh is not None:
            with rules_lib.activation_sharding(mesh, rules):
                lowered = jitted.lower(*abstract_args)
        else:
            lowered = jitted.lower(*abstract_args)
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001  (jax raises JaxRuntimeError / XlaRuntimeError)
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        seconds = time.perf_counter() - start
        need, have = parse_oom(message)
        log.info("aot: %s does not fit (%.1f s): %s", name, seconds, message.splitlines()[0][:300])
        return OutOfMemory(name, message, need, have, seconds)
    log.info("aot: compiled %s in %.1f s", name, time.perf_counter() - start)
    return compiled


def analyze(compiled: Any, topology: str | Topology) -> dict[str, Any]:
    """Per-chip memory and FLOP figures of a `compile_program` result.

    Returns a dict (bytes per chip unless noted):
      argument_bytes, output_bytes, alias_bytes (outputs sharing a donated input's
      buffer), temp_bytes (scratch), generated_code_bytes: `memory_analysis()` fields.
      host_bytes: the same totals in pinned host memory (e.g. remat "offload").
      peak_bytes: argument + output - alias + temp + generated_code, i.e. everything
        resident at once, with no credit for temporaries dying before outputs are born
        (an upper bound, and how the TPU compiler sums its HBM check).
      compiler_peak_bytes: XLA's own `peak_memory_in_bytes` (buffer-assignment heap
        simulation; None when the backend does not report it).
      hbm_bytes: the chip's memory (`Topology.hbm_bytes`).
      fits: `max(peak_bytes, compiler_peak_bytes) <= hbm_bytes` (False for OutOfMemory).
      flops: `cost_analysis()["flops"]` of the partitioned program, per chip, incl. any
        remat recompute (a multiply-add counts 2); None without a cost analysis (GPUs).
      bytes_accessed: HBM traffic estimate from `cost_analysis()` (None likewise).
      seconds_at_peak: flops / bf16 peak FLOP/s (a lower bound on step time; None for cpu).
      compiler_seconds: the TPU cost model's `optimal_seconds` where it reports a
        positive one (rough; it came out negative for a 1.5B-parameter step).
      error: the compiler's message for OutOfMemory, else None.
    """
    topo = parse_topology(topology)
    base = dict(topology=topo.name, chips=topo.num_chips, hbm_bytes=topo.hbm_bytes)
    if isinstance(compiled, OutOfMemory):
        return dict(base, argument_bytes=None, output_bytes=None, alias_bytes=None,
                    temp_bytes=None, generated_code_bytes=None, host_bytes=None,
                    peak_bytes=compiled.required_bytes, compiler_peak_bytes=None, fits=False,
                    flops=None, bytes_accessed=None, seconds_at_peak=None,
                    compiler_seconds=None, error=compiled.message)
    m = compiled.memory_analysis()
    args, outs = m.argument_size_in_bytes, m.output_size_in_bytes
    alias, temp, code = m.alias_size_in_bytes, m.temp_size_in_bytes, m.generated_code_size_in_bytes
    peak = args + outs - alias + temp + code
    host = (m.host_argument_size_in_bytes + m.host_output_size_in_bytes
            - m.host_alias_size_in_bytes + m.host_temp_size_in_bytes)
    compiler_peak = getattr(m, "peak_memory_in_bytes", None) or None
    cost = compiled.cost_analysis()  # None from the GPU compiler: flops and bytes None
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    flops = float(cost["flops"]) if "flops" in cost else None
    optimal = cost.get("optimal_seconds")  # seen negative on large programs: then None
    return dict(
        base, argument_bytes=args, output_bytes=outs, alias_bytes=alias, temp_bytes=temp,
        generated_code_bytes=code, host_bytes=host, peak_bytes=peak,
        compiler_peak_bytes=compiler_peak,
        fits=max(peak, compiler_peak or 0) <= topo.hbm_bytes, flops=flops,
        bytes_accessed=float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
        seconds_at_peak=flops / topo.peak_flops if topo.peak_flops and flops is not None else None,
        compiler_seconds=optimal if optimal and optimal > 0 else None, error=None)


def compile_and_analyze(name: str, fn: Callable, *abstract_args, topology: str | Topology,
                        **compile_kwargs) -> dict[str, Any]:
    """`analyze(compile_program(fn, *abstract_args, name=name, ...), topology)` plus the
    program's `name` and `compile_seconds`."""
    start = time.perf_counter()
    result = compile_program(fn, *abstract_args, name=name, **compile_kwargs)
    return dict(name=name, compile_seconds=round(time.perf_counter() - start, 2),
                **analyze(result, topology))


def format_report(report: Mapping[str, Any]) -> str:
    """One line of an `analyze` / `compile_and_analyze` dict (per chip), for logs."""
    def size(b):
        return "?" if b is None else f"{b / GiB:.2f} GiB" if b >= GiB / 10 else f"{b / 2 ** 20:.1f} MiB"
    flops = report.get("flops")
    return (f"{report.get('name', 'program')} on {report['topology']}: peak "
            f"{size(report['peak_bytes'])} of {size(report['hbm_bytes'])} per chip "
            f"({'fits' if report['fits'] else 'DOES NOT FIT'}; args {size(report['argument_bytes'])}, "
            f"temp {size(report['temp_bytes'])}), "
            f"{'?' if flops is None else f'{flops / 1e12:.3g}'} TFLOP per chip")
