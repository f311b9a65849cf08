"""Compile-only NVIDIA GPUs for the plan stage: no GPU and no CUDA libraries needed.

The CUDA PJRT plugin (`pip install "jaxstep[gpu-plan]"`: jax-cuda12-plugin, about
180 MB, without the CUDA wheels) compiles a program for GPUs that are not attached when
it is given their description, an XLA `GpuTargetConfigProto` in text format, and a
topology `"<slices>x<hosts>x<gpus per host>"`:

    devices = compile_only_devices("h100", num_gpus=8)        # one 8-GPU host
    mesh = jax.make_mesh((8,), ("fsdp",), devices=devices, axis_types=...)
    jax.jit(step).lower(<ShapeDtypeStructs on mesh>).compile().memory_analysis()

The description is written here from published figures (`GPUS`); `target_config_file`
takes another one instead (e.g. a GPU not listed). The compiled program reports its
memory per GPU (`memory_analysis`); the GPU compiler gives no cost analysis, so the plan
counts FLOPs analytically for GPUs. cuDNN attention (`model.attention="cudnn"`) needs
the cuDNN library at compile time and splash attention is a TPU kernel: plan GPUs with
`model.attention="xla"` or "einsum".
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re

import jax

PLUGIN_MODULE = "jax_plugins.xla_cuda12"  # what `pip install jax-cuda12-plugin` provides

# Hopper (compute capability 9.0) limits, from the CUDA C++ Programming Guide's table of
# technical specifications per compute capability: 1024 threads per block, warps of 32,
# 2048 threads and 64 K 32-bit registers per SM (64 K per block), 228 KB of shared memory
# per SM of which 227 KB opt-in per block (48 KB without opting in), grid limits
# 2^31-1 x 65535 x 65535.
_HOPPER = dict(
    threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=48 * 1024,
    shared_memory_per_core=228 * 1024, shared_memory_per_block_optin=227 * 1024,
    threads_per_core_limit=2048, registers_per_core_limit=65536, registers_per_block_limit=65536,
    block_dim_limit_x=2 ** 31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535)


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """One GPU model, from its data sheet.

    name: the device name; memory_bytes: HBM as published (decimal GB); bandwidth: HBM
    bytes/s; peak_flops: dense bf16 tensor-core FLOP/s (without sparsity); sms: streaming
    multiprocessors; fp32_per_sm: FP32 cores per SM; clock_ghz: boost clock; l2_bytes:
    L2 cache; compute_capability: (major, minor).
    """

    name: str
    memory_bytes: int
    bandwidth: float
    peak_flops: float
    sms: int
    fp32_per_sm: int
    clock_ghz: float
    l2_bytes: int
    compute_capability: tuple[int, int]
    limits: tuple = tuple(sorted(_HOPPER.items()))


# NVIDIA H100 (SXM5) and H200 (SXM) data sheets: 132 SMs of 128 FP32 cores, 1.98 GHz
# boost, 50 MB L2, 989 TFLOP/s dense bf16; H100 80 GB HBM3 at 3.35 TB/s, H200 141 GB
# HBM3e at 4.8 TB/s.
GPUS = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", 80 * 10 ** 9, 3.35e12, 989e12, 132, 128, 1.98,
                    50 * 2 ** 20, (9, 0)),
    "h200": GpuSpec("NVIDIA H200 141GB HBM3e", 141 * 10 ** 9, 4.8e12, 989e12, 132, 128, 1.98,
                    50 * 2 ** 20, (9, 0)),
}


def target_config(spec: GpuSpec) -> str:
    """The `GpuTargetConfigProto` text of `spec` (what the plugin's `target_config` takes)."""
    major, minor = spec.compute_capability
    fields = dict(spec.limits, core_count=spec.sms, fpus_per_core=spec.fp32_per_sm,
                  memory_bandwidth=int(spec.bandwidth), l2_cache_size=spec.l2_bytes,
                  clock_rate_ghz=spec.clock_ghz, device_memory_size=spec.memory_bytes)
    lines = [f"  {key}: {value}" for key, value in fields.items()]
    lines += ["  cuda_compute_capability {", f"    major: {major}", f"    minor: {minor}", "  }"]
    return "\n".join(["gpu_device_info {", *lines, "}", 'platform_name: "CUDA"',
                      f'device_description_str: "{spec.name}"', ""])


def memory_bytes(text: str) -> int | None:
    """`gpu_device_info.device_memory_size` of a target config's text, or None."""
    m = re.search(r"device_memory_size:\s*(\d+)", text)
    return int(m[1]) if m else None


def plugin_available() -> bool:
    """Whether the CUDA PJRT plugin (`jax-cuda12-plugin`) is installed."""
    try:
        return importlib.util.find_spec(PLUGIN_MODULE) is not None
    except ModuleNotFoundError:  # no jax_plugins namespace at all
        return False


def topology_shape(num_gpus: int, per_host: int = 8) -> str:
    """The plugin's topology string: one host up to `per_host` GPUs, else hosts of
    `per_host` (16 -> "1x2x8"). Raises ValueError when the count does not split so."""
    if num_gpus < 1 or (num_gpus > per_host and num_gpus % per_host):
        raise ValueError(f"{num_gpus} GPUs: expected up to {per_host} on one host or a multiple "
                         f"of {per_host} (hosts of {per_host}).")
    hosts = max(1, num_gpus // per_host)
    return f"1x{hosts}x{num_gpus // hosts}"


@functools.lru_cache(maxsize=None)
def compile_only_devices(kind: str, num_gpus: int, target_config_file: str = "") -> tuple:
    """`num_gpus` compile-only devices of GPU `kind` (a `GPUS` key), described by
    `target_config_file` when given. Raises RuntimeError when the plugin is missing."""
    if not plugin_available():
        raise RuntimeError(f"compiling for {kind} GPUs needs the CUDA PJRT plugin (no GPU or CUDA "
                           f'libraries): pip install "jaxstep[gpu-plan]" (jax-cuda12-plugin=={jax.__version__}).')
    from jaxstep import paths
    text = paths.read_text(target_config_file) if target_config_file else target_config(GPUS[kind])
    from jax.experimental import topologies
    shape = topology_shape(num_gpus)
    return tuple(topologies.get_topology_desc(platform="cuda", topology_name=shape, topology=shape,
                                              target_config=text).devices)
