"""Multi-host helpers: when to initialize, per-process shards, and two real CPU processes."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxstep.parallel import distributed

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def dist_config(**fields):
    """A config with the same `distributed` section as jaxstep/config_lib.py's defaults."""
    config = ml_collections.ConfigDict()
    config.distributed = ml_collections.ConfigDict(
        {"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1})
    config.distributed.update(fields)
    return config


@pytest.mark.parametrize("config, environ, expected", [
    (dist_config(), {}, None),
    (None, {}, None),
    (ml_collections.ConfigDict({"stage": "sft"}), {}, None),  # no distributed section
    (dist_config(enabled=True), {}, {}),
    (dist_config(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2), {},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}),
    (dist_config(coordinator_address="10.0.0.1:1234", num_processes=1, process_id=0), {}, None),
    (dist_config(), {"JAX_COORDINATOR_ADDRESS": "h0:5555", "JAX_NUM_PROCESSES": "8",
                     "JAX_PROCESS_ID": "3"},
     {"coordinator_address": "h0:5555", "num_processes": 8, "process_id": 3}),
    (dist_config(), {"JAX_COORDINATOR_ADDRESS": "h0:5555"}, None),  # incomplete: ignored
    (dist_config(), {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {}),
    (dist_config(), {"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # single-host TPU VM
    (dist_config(), {"MEGASCALE_COORDINATOR_ADDRESS": "t0:8080"}, {}),
    (dist_config(), {"CLOUD_TPU_TASK_ID": "1"}, {}),
    (dist_config(), {"SLURM_NTASKS": "4", "SLURM_PROCID": "1"}, {}),
    (dist_config(), {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
    (dist_config(), {"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, None),
    (dist_config(), {"SLURM_NTASKS": "4"}, None),  # batch script itself, not an srun task
    (dist_config(), {"JAXSTEP_DISTRIBUTED": "1"}, {}),
    (dist_config(enabled=True), {"JAXSTEP_DISTRIBUTED": "0"}, None),
    ({"distributed": {"enabled": True}}, {}, {}),  # plain dicts work too
])
def test_initialize_kwargs(config, environ, expected):
    assert distributed.initialize_kwargs(config, environ) == expected


def test_initialize_kwargs_rejects_bad_environment():
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        distributed.initialize_kwargs(None, {"JAX_COORDINATOR_ADDRESS": "h:1",
                                             "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="JAXSTEP_DISTRIBUTED"):
        distributed.initialize_kwargs(None, {"JAXSTEP_DISTRIBUTED": "maybe"})


def test_single_process_is_noop():
    assert distributed.maybe_initialize(dist_config(), environ={}) is False
    assert distributed.is_main_process()
    distributed.sync_hosts("noop")  # no barrier with one process


def test_process_shard_covers_items_once():
    items = list(range(10))
    shards = [distributed.process_shard(items, process_index=p, process_count=3) for p in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    even = [distributed.process_shard(items, drop_remainder=True, process_index=p,
                                      process_count=3) for p in range(3)]
    assert even == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    array = np.arange(12).reshape(6, 2)
    assert np.array_equal(distributed.process_shard(array, process_index=1, process_count=2),
                          array[3:])
    assert distributed.process_shard(items) == items  # one process holds everything
    with pytest.raises(ValueError):
        distributed.process_shard(items, process_index=3, process_count=3)


def test_global_batch_from_local_single_process():
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "tensor"))
    batch = {"tokens": np.arange(16, dtype=np.int32).reshape(8, 2),
             "mask": np.ones((8, 2), np.float32)}
    out = distributed.global_batch_from_local(batch, mesh)
    assert out["tokens"].sharding == NamedSharding(mesh, P("data"))
    assert np.array_equal(out["tokens"], batch["tokens"])
    per_leaf = distributed.global_batch_from_local(
        batch, mesh, {"tokens": P("data", "tensor"), "mask": P()})
    assert per_leaf["tokens"].sharding.spec == P("data", "tensor")
    assert per_leaf["mask"].sharding.spec == P()


_WORKER = textwrap.dedent("""
    import json, os, sys, time
    import jax, jax.numpy as jnp, numpy as np
    import ml_collections
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxstep.parallel import distributed
    from jaxstep.checkpoint import Checkpointer

    config = ml_collections.ConfigDict({"distributed": {"enabled": False,
        "coordinator_address": "", "num_processes": 0, "process_id": -1}})
    assert distributed.maybe_initialize(config)
    assert distributed.maybe_initialize(config)  # idempotent
    out = {"process": jax.process_index(), "count": jax.process_count(),
           "devices": jax.device_count(), "main": distributed.is_main_process()}

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = np.arange(32, dtype=np.float32).reshape(8, 4)  # the global batch
    local = distributed.process_shard(rows)
    batch = distributed.global_batch_from_local({"x": local}, mesh)["x"]
    out["global_shape"] = list(batch.shape)
    out["local_rows"] = local[:, 0].tolist()
    # A cross-process reduction, replicated back to every process.
    total = jax.jit(lambda x: jnp.sum(x * x), out_shardings=NamedSharding(mesh, P()))(batch)
    out["sum_sq"] = float(total)
    psum = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x.sum(0), "data"), mesh=mesh,
                                 in_specs=P("data"), out_specs=P()))(batch)
    out["psum"] = np.asarray(psum.addressable_data(0)).tolist()
    distributed.sync_hosts("computed")

    # Preemption: SIGTERM to one process stops both at the same step, with a checkpoint.
    ckpt = Checkpointer(sys.argv[1], save_interval_steps=1000)
    state = {"w": jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("data")))}
    print("READY", flush=True)
    stop = None
    for step in range(1, 3000):
        if ckpt.should_stop(step):
            ckpt.save(step, state, extra={"stopped_at": step}, force=True)
            stop = step
            break
        time.sleep(0.01)
    ckpt.close()
    out["stop_step"] = stop
    print("RESULT " + json.dumps(out), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_agree(tmp_path):
    """Two CPU processes x 2 devices: global batch, reductions and preemption agree."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    port = _free_port()
    procs, logs = [], []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        out, err = tmp_path / f"out{pid}.txt", tmp_path / f"err{pid}.txt"
        logs.append((out, err))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs.append(subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "ckpt")], env=env,
                stdout=stdout, stderr=stderr))
    try:
        deadline = time.monotonic() + 120
        while not all("READY" in out.read_text() for out, _ in logs):
            dead = [p for p in procs if p.poll() is not None]
            assert not dead and time.monotonic() < deadline, \
                "\n".join(err.read_text()[-3000:] for _, err in logs)
            time.sleep(0.05)
        time.sleep(0.3)
        procs[1].send_signal(signal.SIGTERM)  # preemption notice to one host only
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, (out, err) in zip(procs, logs):
        assert proc.returncode == 0, err.read_text()[-3000:]
        results.append(json.loads(out.read_text().split("RESULT ", 1)[1]))
    rows = np.arange(32, dtype=np.float32).reshape(8, 4)
    for pid, res in enumerate(results):
        assert res["process"] == pid and res["count"] == 2 and res["devices"] == 4
        assert res["main"] == (pid == 0)
        assert res["global_shape"] == [8, 4]
        assert res["local_rows"] == rows[4 * pid:4 * pid + 4, 0].tolist()
        assert res["sum_sq"] == float((rows ** 2).sum())
        assert res["psum"] == rows.sum(0).tolist()
    stops = [res["stop_step"] for res in results]
    assert stops[0] is not None and stops[0] == stops[1]
    assert (tmp_path / "ckpt" / str(stops[0])).is_dir()
