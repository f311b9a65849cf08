"""Checkpointer: bitwise round trip, keep-N, intervals, corrupt fallback, SIGTERM, SIGKILL."""
import logging
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxstep.checkpoint import Checkpointer, abstract_like, load_pytree, save_pytree

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_state(seed: int = 0):
    """A training-state-like pytree: params, adam state (after one update), keys, scalars."""
    key = jax.random.key(seed)
    k1, k2 = jax.random.split(key)
    params = {"dense": {"kernel": jax.random.normal(k1, (8, 4)), "bias": jnp.zeros(4)},
              "head": jax.random.normal(k2, (4,), dtype=jnp.bfloat16)}
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(17, jnp.int32),
        "rng": jax.random.fold_in(key, 5),              # typed key
        "legacy_rng": jax.random.PRNGKey(seed + 1),     # raw uint32 key
        "kl": {"coef": np.float32(0.05), "error_sum": jnp.asarray(1.25)},  # numpy scalar leaf
    }


def assert_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_is_bitwise(tmp_path):
    state = make_state()
    extra = {"data_iterator": b"\x00\x01grain-state\xff", "epoch": 3,
             "metadata": {"config": "ppo_prm_max", "tags": ["a", "b"]}}
    with Checkpointer(tmp_path / "ckpt", save_interval_steps=1) as ckpt:
        assert ckpt.restore_latest(state) is None
        assert ckpt.save(17, state, extra=extra)
        ckpt.wait()
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        step, restored, restored_extra = ckpt.restore_latest(state)
    assert step == 17
    assert_bitwise_equal(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert isinstance(restored["kl"]["coef"], np.float32)
    assert restored_extra == extra
    # The restored key draws the same numbers as the original.
    assert np.array_equal(jax.random.uniform(restored["rng"], (3,)),
                          jax.random.uniform(state["rng"], (3,)))


def test_grain_iterator_position_resumes(tmp_path):
    dataset = grain.MapDataset.range(20).shuffle(seed=7).to_iter_dataset()
    iterator = iter(dataset)
    _ = [next(iterator) for _ in range(5)]
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(5, {"x": jnp.zeros(2)}, extra={"data": iterator.get_state()})
    expected = [next(iterator) for _ in range(5)]
    with Checkpointer(tmp_path) as ckpt:
        _, _, extra = ckpt.restore_latest({"x": jnp.zeros(2)})
    resumed = iter(dataset)
    resumed.set_state(extra["data"])
    assert [next(resumed) for _ in range(5)] == expected


def test_restore_sharded_under_mesh(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    params = {"w": jnp.arange(32.0).reshape(8, 4), "b": jnp.arange(4.0)}
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(1, params)
    target = abstract_like(params, lambda x: NamedSharding(mesh, P("data") if x.ndim == 2 else P()))
    with Checkpointer(tmp_path) as ckpt:
        _, restored, _ = ckpt.restore_latest(target)
    assert restored["w"].sharding == NamedSharding(mesh, P("data"))
    assert len(restored["w"].addressable_shards) == 4
    assert_bitwise_equal(restored, params)


def test_keep_n_and_interval(tmp_path):
    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=3) as ckpt:
        saved = [s for s in range(1, 11) if ckpt.save(s, jax.tree.map(lambda x: x * s, state))]
        assert saved == [3, 6, 9]
        assert ckpt.save(10, state, force=True)
        assert not ckpt.save(10, state, force=True)  # never overwrites a step
        ckpt.wait()
        assert ckpt.all_steps() == [9, 10]
    step_dirs = sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit())
    assert step_dirs == ["10", "9"]


def _corrupt_newest(directory: pathlib.Path, step: int, how: str):
    files = [p for p in (directory / str(step)).rglob("*") if p.is_file()]
    assert files
    for path in files:
        if how == "truncate":
            os.truncate(path, path.stat().st_size // 2)
        elif how == "delete_data" and (path.parent.name == "d" or path.name.endswith("METADATA")):
            path.unlink()


@pytest.mark.parametrize("how", ["truncate", "delete_data"])
def test_corrupt_newest_falls_back_to_previous(tmp_path, caplog, how):
    states = {s: make_state(seed=s) for s in (1, 2, 3)}
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        for s, state in states.items():
            ckpt.save(s, state, extra={"step": s})
    _corrupt_newest(tmp_path, 3, how)
    with caplog.at_level(logging.WARNING, logger="jaxstep.checkpoint"):
        with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
            step, restored, extra = ckpt.restore_latest(make_state())
            assert step == 2 and extra == {"step": 2}
            assert_bitwise_equal(restored, states[2])
            # The bad one is kept aside, and the run can save step 3 again.
            assert (tmp_path / "3.corrupt").is_dir()
            assert ckpt.all_steps() == [1, 2]
            assert ckpt.save(3, states[3])
    assert "Checkpoint 3" in caplog.text and "cannot be restored" in caplog.text
    with Checkpointer(tmp_path) as ckpt:
        step, restored, _ = ckpt.restore_latest(make_state())
    assert step == 3
    assert_bitwise_equal(restored, states[3])


def test_all_corrupt_raises_and_keeps_files(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        for s in (1, 2):
            ckpt.save(s, make_state(s))
    for s in (1, 2):
        _corrupt_newest(tmp_path, s, "truncate")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(RuntimeError, match="No checkpoint .* could be restored"):
            ckpt.restore_latest(make_state())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["1", "2"]


def test_wrong_target_structure_does_not_quarantine(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        for s in (1, 2):
            ckpt.save(s, {"w": jnp.ones(3)})
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(RuntimeError):
            ckpt.restore_latest({"other": jnp.ones(3)})
        assert ckpt.all_steps() == [1, 2]


def test_sigterm_sets_stop_flag_and_handler_is_restored(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        ckpt = Checkpointer(tmp_path, save_interval_steps=10)
        assert signal.getsignal(signal.SIGTERM) is not previous
        assert not ckpt.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the Python-level handler runs at the next bytecode boundary
            if ckpt.stop_requested:
                break
            time.sleep(0.01)
        assert ckpt.should_stop(2)
        # The loop's response: save off-interval and exit; a new run resumes there.
        assert ckpt.save(2, {"w": jnp.full(3, 2.0)}, force=True)
        ckpt.close()
        assert signal.getsignal(signal.SIGTERM) == previous
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    with Checkpointer(tmp_path, handle_sigterm=False) as ckpt:
        step, restored, _ = ckpt.restore_latest({"w": jnp.zeros(3)})
    assert step == 2 and np.array_equal(restored["w"], np.full(3, 2.0))


def test_async_save_survives_donated_buffers(tmp_path):
    """Training steps donate the state; an async save must already hold its own copy."""
    step_fn = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    state = {"w": jnp.arange(100_000.0)}
    with Checkpointer(tmp_path, save_interval_steps=1, handle_sigterm=False) as ckpt:
        for step in range(1, 4):
            assert ckpt.save(step, state)
            state = step_fn(state)  # deletes the buffers just handed to save()
        ckpt.wait()
        for step in (1, 2, 3):
            restored, _ = ckpt.restore(step, {"w": jnp.zeros(100_000)})
            assert np.array_equal(restored["w"], np.arange(100_000.0, dtype=np.float32) + step - 1)


def test_restore_to_host_reads_sharded_state_as_numpy(tmp_path):
    """A state saved sharded over 8 devices comes back whole, as numpy, on the host."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
    state = make_state()
    state["params"]["dense"]["kernel"] = jax.device_put(
        state["params"]["dense"]["kernel"], NamedSharding(mesh, P("data", "tensor")))
    with Checkpointer(tmp_path, save_interval_steps=1, handle_sigterm=False) as ckpt:
        ckpt.save(3, state, extra={"data": {"next_index": 5}})
        ckpt.wait()
        restored, extra = ckpt.restore_to_host(3)
    assert extra == {"data": {"next_index": 5}}
    assert isinstance(restored["params"]["dense"]["kernel"], np.ndarray)
    assert_bitwise_equal(restored["params"], jax.device_get(state["params"]))
    assert np.array_equal(restored["rng"], jax.random.key_data(state["rng"]))
    assert restored["step"] == 17 and restored["kl"]["coef"] == np.float32(0.05)
    with Checkpointer(tmp_path / "empty", handle_sigterm=False) as empty, pytest.raises(FileNotFoundError):
        empty.restore_to_host(1)


def test_save_and_load_pytree(tmp_path):
    state = make_state()
    save_pytree(tmp_path / "sft_params", state["params"])
    with pytest.raises(FileExistsError):
        save_pytree(tmp_path / "sft_params", state["params"])
    assert_bitwise_equal(load_pytree(tmp_path / "sft_params", state["params"]), state["params"])
    untargeted = load_pytree(tmp_path / "sft_params")
    assert np.array_equal(untargeted["dense"]["kernel"], state["params"]["dense"]["kernel"])
    save_pytree(tmp_path / "sft_params", {"a": jnp.ones(2)}, overwrite=True)
    assert np.array_equal(load_pytree(tmp_path / "sft_params")["a"], np.ones(2))
    with pytest.raises(FileNotFoundError):
        load_pytree(tmp_path / "missing")


_SAVER = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from jaxstep.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1], max_to_keep=2, save_interval_steps=1)
    restored = ckpt.restore_latest({"w": jnp.zeros((512, 1024)), "b": jnp.zeros(7)})
    start = restored[0] if restored else 0
    for step in range(start + 1, 100000):
        state = {"w": jnp.full((512, 1024), float(step)), "b": jnp.arange(7.0) + step}
        ckpt.save(step, state, extra={"step": step})
        print(step, flush=True)
""")


def test_sigkill_during_saves_leaves_restorable_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    directory = tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    env.pop("XLA_FLAGS", None)
    rng = random.Random(0)
    last_restored = 0
    for round_ in range(2):
        proc = subprocess.Popen([sys.executable, str(script), str(directory)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            # Wait until this run has started a few saves, then kill it at a random moment.
            started = [int(proc.stdout.readline()) for _ in range(3)]
            assert started[0] == last_restored + 1
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        with Checkpointer(directory, handle_sigterm=False) as ckpt:
            step, state, extra = ckpt.restore_latest(
                {"w": jnp.zeros((512, 1024)), "b": jnp.zeros(7)})
            assert not (directory / f"{step}.corrupt").exists()
        # Half-written saves of the killed run are not checkpoints; the manager removes them.
        assert not list(directory.glob("*.orbax-checkpoint-tmp*"))
        assert step >= last_restored + 1 and extra == {"step": step}
        assert np.array_equal(state["w"], np.full((512, 1024), float(step), np.float32))
        assert np.array_equal(state["b"], np.arange(7.0, dtype=np.float32) + step)
        last_restored = step
