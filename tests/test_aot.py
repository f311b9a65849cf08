"""AOT compilation for TPU slices and fake CPU devices (jaxstep.parallel.aot), and the
decoder's remat policies.

The TPU tests need the TPU compiler (`pip install -e ".[test,tpu]"`): they skip without
it, and fail when CI=true.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import models
from jaxstep.models.decoder import REMAT_POLICIES, remat_policy
from jaxstep.parallel import aot
from jaxstep.parallel import rules as R

GiB = 2 ** 30


# ----------------------------------------------------------------------------- topology


@pytest.mark.parametrize("name, kind, chips, topo, hbm_gib, peak", [
    ("v4-8", "v4", 4, "v4:2x2x1", 32, 275e12),
    ("v4-32", "v4", 16, "v4:2x2x4", 32, 275e12),
    ("v4-128", "v4", 64, "v4:4x4x4", 32, 275e12),
    ("v5e-8", "v5e", 8, "v5e:2x4", 16, 197e12),
    ("v5litepod-8", "v5e", 8, "v5e:2x4", 16, 197e12),
    ("v5e-4", "v5e", 4, "v5e:2x2", 16, 197e12),
    ("v5e-16", "v5e", 16, "v5e:4x4", 16, 197e12),
    ("V5E-256", "v5e", 256, "v5e:16x16", 16, 197e12),
    ("v5p-8", "v5p", 4, "v5p:2x2x1", 95, 459e12),
    ("v5p-16", "v5p", 8, "v5p:2x2x2", 95, 459e12),
    ("v6e-8", "v6e", 8, "v6e:2x4", 32, 918e12),
    ("v6e-32", "v6e", 32, "v6e:4x8", 32, 918e12),
    ("v5e:2x4", "v5e", 8, "v5e:2x4", 16, 197e12),
    ("v4:2x2x2", "v4", 8, "v4:2x2x2", 32, 275e12),
])
def test_parse_topology(name, kind, chips, topo, hbm_gib, peak):
    t = aot.parse_topology(name)
    assert (t.kind, t.num_chips, t.topology_name, t.hbm_bytes, t.peak_flops) == (
        kind, chips, topo, hbm_gib * GiB, peak)
    assert not t.is_cpu


def test_parse_topology_cpu():
    t = aot.parse_topology("cpu-8")
    assert (t.kind, t.num_chips, t.topology_name, t.peak_flops) == ("cpu", 8, None, None)
    assert t.is_cpu and 0 < t.hbm_bytes * 8 <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("name", ["v3-8", "v5e-6", "v4-7", "v5p-12", "gpu-8", "cpu-0", "v5e", "v5e:2x2x2"])
def test_parse_topology_rejects(name):
    with pytest.raises(ValueError):
        aot.parse_topology(name)


def test_parse_oom():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (40.00G) exceeds available HBM (15.75G).")
    assert aot.parse_oom(msg) == (40 * GiB, int(15.75 * GiB))
    msg = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.48G hbm."
    assert aot.parse_oom(msg) == (int(20.5 * GiB), int(15.48 * GiB))
    assert aot.parse_oom("RESOURCE_EXHAUSTED: something else") == (None, None)


def test_cpu_devices_need_the_flag():
    assert len(aot.abstract_devices("cpu-8")) == 8  # tests/conftest.py gives jax 8 CPU devices
    with pytest.raises(RuntimeError, match="xla_force_host_platform_device_count=4096"):
        aot.abstract_devices("cpu-4096")


# ----------------------------------------------------------------------------- programs


@functools.lru_cache(maxsize=None)
def _tiny_step(topology, remat="none", batch=8, seqlen=32):
    """A 2-layer tiny decoder's loss and gradients, fsdp over all devices, compiled and analysed."""
    model = models.Decoder(models.tiny(vocab_size=256, num_layers=2), remat=remat)
    mesh = aot.make_abstract_mesh(topology, {"data": 1, "fsdp": -1, "tensor": 1})
    abs_params = models.abstract_params(model)
    shardings = R.param_shardings(abs_params, models.logical_specs(model), mesh)
    params = aot.with_shardings(abs_params, shardings)
    ids = jax.ShapeDtypeStruct((batch, seqlen), jnp.int32, sharding=R.batch_sharding(mesh, 2))

    def loss_fn(p, ids):
        logits = model.apply({"params": p}, ids)
        lp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(lp, ids[:, 1:, None], -1).mean()

    def step(p, ids):
        return jax.value_and_grad(loss_fn)(p, ids)

    return aot.compile_and_analyze(f"tiny_step_{remat}", step, params, ids, topology=topology,
                                   mesh=mesh, out_shardings=(R.replicated(mesh), shardings))


def _check_fits(report, topology):
    assert report["error"] is None and report["fits"], report
    for key in ("argument_bytes", "output_bytes", "peak_bytes", "flops", "bytes_accessed"):
        assert report[key] > 0, (key, report)
    assert report["temp_bytes"] >= 0 and report["alias_bytes"] == 0
    assert report["peak_bytes"] == (report["argument_bytes"] + report["output_bytes"]
                                    + report["temp_bytes"] + report["generated_code_bytes"])
    assert report["hbm_bytes"] == aot.parse_topology(topology).hbm_bytes
    assert report["chips"] == aot.parse_topology(topology).num_chips


def test_tiny_step_cpu8():
    report = _tiny_step("cpu-8")
    _check_fits(report, "cpu-8")
    assert report["seconds_at_peak"] is None
    assert "fits" in aot.format_report(report)


def test_mesh_shape_tuple_and_errors():
    mesh = aot.make_abstract_mesh("cpu-8", (2, 4), ("data", "fsdp"))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    with pytest.raises(ValueError):
        aot.make_abstract_mesh("cpu-8", (2, 2), ("data", "fsdp"))


def test_tiny_step_v5e8(tpu):
    report = _tiny_step("v5e-8")
    _check_fits(report, "v5e-8")
    assert report["seconds_at_peak"] == pytest.approx(report["flops"] / 197e12)
    devices = aot.abstract_devices("v5e-8")
    assert len(devices) == 8 and "v5 lite" in devices[0].device_kind.lower()


@pytest.mark.parametrize("remat", ["full", "dots_no_batch", "offload"])
def test_tiny_step_v5e8_remat(tpu, remat):
    none = _tiny_step("v5e-4", "none")
    report = _tiny_step("v5e-4", remat)
    _check_fits(report, "v5e-4")
    if remat == "full":  # the forward pass runs twice
        assert report["flops"] > none["flops"]


def test_v4_runs_one_device_per_chip(tpu):
    devices = aot.abstract_devices("v4-8")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v4"


def test_huge_program_does_not_fit_v5e(tpu):
    mesh = aot.make_abstract_mesh("v5e-8", (8,), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    x = jax.ShapeDtypeStruct((8, 10 * GiB), jnp.float32, sharding=sharding)  # 40 GiB per chip
    report = aot.compile_and_analyze("huge", lambda x: x * 2, x, topology="v5e-8",
                                     out_shardings=sharding)
    assert report["fits"] is False
    assert "RESOURCE_EXHAUSTED" in report["error"]
    assert report["peak_bytes"] >= 40 * GiB
    assert "DOES NOT FIT" in aot.format_report(report)


# ----------------------------------------------------------------------------- remat


def test_remat_policy_names():
    assert remat_policy(False) == (False, None) == remat_policy("none") == remat_policy(None)
    assert remat_policy(True) == (True, None) == remat_policy("full")
    for name in REMAT_POLICIES[2:]:
        enabled, policy = remat_policy(name)
        assert enabled and callable(policy)
    with pytest.raises(ValueError, match="dots_no_batch"):
        remat_policy("everything")


@functools.lru_cache(maxsize=None)
def _remat_loss_and_grad(remat):
    """Loss and gradients of a 2-layer tiny decoder (float32, a left-padded row) on CPU."""
    config = models.tiny(vocab_size=256, num_layers=2)
    params = models.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    mask = jnp.ones((2, 16), jnp.int32).at[0, :3].set(0)
    model = models.Decoder(config, remat=remat)

    def loss_fn(p):
        logits = model.apply({"params": p}, ids, attention_mask=mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 7] * mask)

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch", "offload"])
def test_remat_policies_match_no_remat(remat):
    base_loss, base_grad = _remat_loss_and_grad("none")
    loss, grad = _remat_loss_and_grad(remat)
    np.testing.assert_allclose(loss, base_loss, rtol=0, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), grad, base_grad)


def test_remat_true_is_full():
    config = models.tiny(vocab_size=256, num_layers=2)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = models.abstract_params(config)

    def jaxpr(remat):
        model = models.Decoder(config, remat=remat)
        return str(jax.make_jaxpr(jax.grad(lambda p: model.apply({"params": p}, ids).sum()))(params))

    assert jaxpr(True) == jaxpr("full")
    assert jaxpr(False) == jaxpr("none") != jaxpr("full")
