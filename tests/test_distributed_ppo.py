"""Multi-host PPO on CPU: two local processes (`jax.distributed`, gloo collectives, one CPU
device each) run the real PPO stage and end bitwise equal to one process with two devices.

Why bitwise can hold: every process reads the same prompts and feeds its rows of the
global batch, the sampler's random bits do not depend on the sharding (partitionable
threefry), and every cross-device reduction here has two operands, whose sum does not
depend on the order. The checks would catch a process reading another data shard, an
RNG that differs per process, or reports/metrics written by both processes.
"""
import json
import socket
import sys
import textwrap

import jax
import numpy as np
import pytest

from run_helpers import Launch, assert_same_run, build_ppo_inputs, child_env, command
from jaxstep import workdir as workdir_lib

PPO_STEPS = 3
PPO_OVERRIDES = {
    "stage": "ppo",
    "data.max_prompt_len": 64, "data.max_response_len": 24,
    "ppo.num_prompts": 12, "ppo.samples_per_prompt": 2,
    "ppo.advantage": "gae",  # the critic path: its params, optimizer and KL controller survive too
    "ppo.steps": PPO_STEPS, "ppo.rollout_batch": 8, "ppo.minibatches": 2, "ppo.epochs": 1,
    "ppo.max_steps": 8, "ppo.learning_rate": 1e-3, "ppo.critic_learning_rate": 1e-3, "ppo.warmup_steps": 0,
    "ppo.kl_estimator": "k1", "ppo.adaptive_kl": True, "ppo.target_kl": 0.5, "ppo.kl_horizon": 100,
    "ppo.critic_init": "reward_model",
    "ppo.eval_limit": 4,  # the final greedy eval decodes sharded over both processes too
    "ppo.log_every": 1, "checkpoint.every_steps": 2, "checkpoint.keep": 2,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def launch_processes(cmd, log_dir, name: str, count: int = 2, devices: int = 1) -> list[Launch]:
    """`count` processes of `cmd` joined by jax.distributed (explicit coordinates in the
    environment, as launch/slurm_gpu.sh exports them), `devices` CPU devices each."""
    port = _free_port()
    return [Launch(cmd, child_env(devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                  JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(pid)),
                   log_dir, f"{name}{pid}") for pid in range(count)]


def wait_all(launches: list[Launch]) -> None:
    try:
        for launch in launches:
            rc = launch.wait()
            assert rc == 0, f"rc {rc}:\n" + "\n".join(l.tail(3000) for l in launches)
    finally:
        for launch in launches:
            launch.kill()


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
    inputs = build_ppo_inputs(tmp_path / "inputs")
    single, multi = tmp_path / "single", tmp_path / "multi"
    # Reference first, then the pair (both processes share the 2 cores).
    reference = Launch(command("configs/ppo_prm_max.py", single, {**PPO_OVERRIDES, **inputs}),
                       child_env(2), tmp_path, "single")
    wait_all([reference])
    pair = launch_processes(command("configs/ppo_prm_max.py", multi, {**PPO_OVERRIDES, **inputs}),
                            tmp_path, "multi")
    wait_all(pair)
    for pid, launch in enumerate(pair):
        assert f"Process {pid} of 2; 1 local / 2 global devices." in launch.log(), launch.tail()
    assert "1 local" not in reference.log()
    assert workdir_lib.is_done(single) and workdir_lib.is_done(multi)

    what = "2 processes x 1 CPU device vs 1 process x 2 devices"
    assert_same_run(single, multi, PPO_STEPS, what)

    # Process 0 alone writes the reports: one line per metric row, one TensorBoard file.
    def lines(workdir):
        return (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines(multi)) == len(lines(single)) == PPO_STEPS + 1, what  # + the final eval
    assert len(list((multi / "tb").rglob("events.out.tfevents.*"))) == 1, what
    summaries = [json.loads((w / "summary.json").read_text()) for w in (single, multi)]
    for summary in summaries:
        for key in ("seconds", "train_seconds", "export"):
            summary.pop(key)
    assert summaries[0] == summaries[1], what
    assert summaries[0]["eval_problems"] == 4 and summaries[0]["steps"] == PPO_STEPS


_PUT_GLOBAL_WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxstep.parallel import distributed

    assert distributed.maybe_initialize(None)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    tree = {
        "key": jax.random.key(7),                                         # typed PRNG key
        "committed": jax.device_put(jnp.arange(8.0), jax.local_devices()[0]),
        "host": np.arange(16, dtype=np.int32).reshape(8, 2),
        "scalar": jnp.asarray(3.5),
    }
    shardings = {"key": replicated, "committed": rows, "host": rows, "scalar": replicated}
    placed = distributed.put_global(tree, shardings)
    same = distributed.put_global(placed, shardings)       # already global: unchanged
    out = {
        "specs": [list(placed[k].sharding.spec) for k in sorted(placed)],
        "global": [not placed[k].is_fully_addressable for k in sorted(placed)],
        "local_host_rows": np.asarray(placed["host"].addressable_data(0)).tolist(),
        "normal": np.asarray(jax.jit(lambda k: jax.random.normal(k, (4,)),
                                     out_shardings=replicated)(placed["key"]).addressable_data(0)).tolist(),
        "sum": float(jax.jit(lambda t: t["committed"].sum() + t["host"].sum() + t["scalar"],
                             out_shardings=replicated)(same)),
        "one_value": distributed.put_global(np.float32(2.0), replicated).shape,
    }
    print("RESULT " + json.dumps(out), flush=True)
""")


def test_put_global_across_two_processes(tmp_path):
    """Host-identical values (typed key, committed array, numpy, scalar) placed on a mesh
    spanning two processes, which plain jax.device_put refuses for keys and committed arrays."""
    script = tmp_path / "worker.py"
    script.write_text(_PUT_GLOBAL_WORKER)
    pair = launch_processes([sys.executable, str(script)], tmp_path, "worker")
    wait_all(pair)
    expected_normal = np.asarray(jax.random.normal(jax.random.key(7), (4,))).tolist()
    for pid, launch in enumerate(pair):
        result = json.loads(launch.out.read_text().split("RESULT ", 1)[1])
        assert result["specs"] == [["data"], ["data"], [], []]  # committed, host, key, scalar
        assert result["global"] == [True] * 4
        assert result["local_host_rows"] == np.arange(16).reshape(8, 2)[4 * pid:4 * pid + 4].tolist()
        assert result["normal"] == expected_normal
        assert result["sum"] == 28.0 + 120.0 + 3.5
        assert result["one_value"] == []
