"""Stage plan for NVIDIA GPUs without a GPU (`jaxstep.parallel.gpu_targets`): the CUDA
plugin compiles the experiment's programs for h100-N / h200-N from the GPUs' published
figures. The compile tests need the plugin (the `[gpu-plan]` extra): they skip without
it and fail when CI=true."""
from __future__ import annotations

import json
import subprocess

import pytest

from jaxstep import config_lib
from jaxstep.parallel import aot, gpu_targets
from jaxstep.stages import plan

import run_helpers


def test_gpu_topologies_by_hand():
    h100 = aot.parse_topology("h100-8")
    assert (h100.kind, h100.num_chips, h100.topology_name, h100.is_gpu) == ("h100", 8, "1x1x8", True)
    assert (h100.hbm_bytes, h100.peak_flops) == (80 * 10 ** 9, 989e12)
    h200 = aot.parse_topology("H200-16")
    assert (h200.num_chips, h200.topology_name, h200.hbm_bytes) == (16, "1x2x8", 141 * 10 ** 9)
    assert aot.parse_topology("h100-4").topology_name == "1x1x4"
    with pytest.raises(ValueError, match="multiple of 8"):
        aot.parse_topology("h100-12")
    assert not aot.parse_topology("v5e-8").is_gpu
    text = gpu_targets.target_config(gpu_targets.GPUS["h100"])
    for line in ("core_count: 132", "major: 9", "device_memory_size: 80000000000", 'platform_name: "CUDA"',
                 "shared_memory_per_block_optin: 232448"):
        assert line in text
    assert gpu_targets.memory_bytes(text) == 80 * 10 ** 9 and gpu_targets.memory_bytes("x: 1") is None


def _main_job(topology: str, **overrides):
    """The README's CPU main job (configs/ppo_prm_max.py) as a plan."""
    c = config_lib.ppo_experiment("prm_max")
    c.stage = "plan"
    c.plan.topology = topology
    c.model.attention = "xla"  # splash is a TPU kernel; cudnn needs the cuDNN library
    for key, value in overrides.items():
        section, field = key.split("__")
        c[section][field] = value
    config_lib.validate(c)
    return c


@pytest.mark.slow
@pytest.mark.usefixtures("cuda_plugin")
def test_plan_compiles_every_program_for_h100(tmp_path):
    """Every program of the main job compiles for h100-8 and fits; the per-GPU argument
    bytes equal those of the same shardings compiled for 8 host CPU devices (an
    independent compiler); without the compiler's FLOPs, the update and SFT rooflines are
    the analytic count and no MFU is claimed."""
    gpu = plan.run(_main_job("h100-8"), str(tmp_path / "gpu"))
    cpu = plan.run(_main_job("cpu-8"), str(tmp_path / "cpu"))
    assert gpu["fits"] and set(gpu["programs"]) == {"sft", "rm", "sampler", "scorer", "update"}
    for name, rep in gpu["programs"].items():
        assert rep["error"] is None and rep["peak_bytes"] > 0 and rep["hbm_bytes"] == 80 * 10 ** 9
        assert rep["argument_bytes"] == cpu["programs"][name]["argument_bytes"], name
    for name in ("sft", "update"):
        rep = gpu["programs"][name]
        assert rep["flops"] is None and rep["analytic_flops_per_call"] > 0
        assert rep["roofline_seconds"] == pytest.approx(rep["analytic_flops_per_call"] / 989e12)
    assert gpu["programs"]["scorer"]["roofline_seconds"] is None
    assert "update_mfu_estimate" not in gpu["run"]
    written = (tmp_path / "gpu" / "plan.md").read_text()
    assert "# Plan for h100-8" in written and "MFU: no estimate" in written
    assert json.loads((tmp_path / "gpu" / "plan.json").read_text())["fits"]


@pytest.mark.usefixtures("cuda_plugin")
def test_plan_reports_a_gpu_too_small_and_rejects_cudnn_without_the_library(tmp_path):
    """A target config describing a GPU of 8 MiB (`plan.gpu_target_config`): the update
    does not fit, the plan exits non-zero naming it; cudnn attention without cuDNN: an
    error that says to use xla."""
    small = tmp_path / "small_gpu.txtpb"
    small.write_text(gpu_targets.target_config(gpu_targets.GPUS["h100"]).replace(
        "device_memory_size: 80000000000", f"device_memory_size: {8 * 2 ** 20}"))
    config = _main_job("h100-8", plan__programs="update", plan__gpu_target_config=str(small))
    with pytest.raises(SystemExit, match="update does not fit h100-8"):
        plan.run(config, str(tmp_path / "small"))
    report = json.loads((tmp_path / "small" / "plan.json").read_text())["programs"]["update"]
    assert not report["fits"] and report["hbm_bytes"] == 8 * 2 ** 20 < report["peak_bytes"]
    try:
        import nvidia.cudnn  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="attention=xla"):
            plan.run(_main_job("h100-8", model__attention="cudnn", plan__programs="sft"), str(tmp_path / "c"))


@pytest.mark.usefixtures("cuda_plugin")
def test_plan_for_h100_from_the_command_line_without_jax_platforms(tmp_path):
    """`python -m jaxstep.main ... --config.plan.topology=h100-8` as a user types it, with
    no JAX_PLATFORMS in the environment: the CUDA plugin's start-up check (no CUDA
    libraries here) must not leave the plan without a GPU compiler."""
    env = {k: v for k, v in run_helpers.child_env(devices=1).items() if k != "JAX_PLATFORMS"}
    cmd = run_helpers.command("configs/ppo_prm_max.py", tmp_path, {
        "stage": "plan", "plan.topology": "h100-8", "plan.programs": "sampler"})
    proc = subprocess.run(cmd, env=env, cwd=run_helpers.REPO_ROOT, capture_output=True, text=True,
                          timeout=run_helpers.LAUNCH_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["fits"] and report["programs"]["sampler"]["error"] is None
    assert report["programs"]["sampler"]["hbm_bytes"] == 80 * 10 ** 9


def test_plan_runs_on_the_host_cpu_unless_the_user_chose_platforms(monkeypatch):
    """`plan.prepare` pins jax to the CPU before it starts, and keeps a JAX_PLATFORMS the
    user set."""
    calls = []
    monkeypatch.setattr(plan.jax.config, "update", lambda name, value: calls.append((name, value)))
    config = _main_job("h100-8")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    plan.prepare(config)
    assert calls == [("jax_platforms", "cpu")]
    calls.clear()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu,tpu")
    plan.prepare(config)
    assert calls == []
    plan.prepare(_main_job("cpu-4"))
    assert calls == [("jax_num_cpu_devices", 4)]
