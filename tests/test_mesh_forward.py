"""The decoder under a (data=2, fsdp=2, tensor=2) mesh of 8 fake CPU devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxstep import models
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def _batch(vocab, batch=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    lengths = rng.integers(1, length + 1, batch)
    mask = (np.arange(length)[None] >= length - lengths[:, None]).astype(np.int32)  # left pad
    return ids, mask


@pytest.mark.parametrize("arch", ["qwen2", "opt"])
def test_forward_on_2x2x2_mesh_equals_single_device(arch):
    config = models.tiny(96, model_type=arch, hidden_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, intermediate_size=128, tie_word_embeddings=arch == "opt")
    model = models.Decoder(config)
    params = models.init_params(model, jax.random.key(0))
    ids, mask = _batch(config.vocab_size)
    apply = lambda p, x, m: model.apply({"params": p}, x, attention_mask=m)  # noqa: E731
    expected = np.asarray(jax.jit(apply)(params, ids, mask))

    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    rules = rules_lib.DEFAULT_RULES
    sharded = rules_lib.shard_params(params, models.logical_specs(model), mesh, rules)
    q = sharded["layers_0"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (32, 2, 16)
    batch = rules_lib.shard_batch({"ids": ids, "mask": mask}, mesh)
    assert batch["ids"].sharding.spec == P(("data", "fsdp"), None)
    with rules_lib.activation_sharding(mesh, rules):
        logits = jax.jit(apply)(sharded, batch["ids"], batch["mask"])
    assert logits.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=1e-5)


def test_mesh_shape_resolution_and_errors():
    assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert mesh_lib.mesh_shape(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices"):
        mesh_lib.mesh_shape({"data": 3, "fsdp": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 2})
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert mesh_lib.data_parallel_size(mesh) == 4


def test_indivisible_dims_are_replicated_and_bad_batches_rejected():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    # 2 KV heads cannot split 4 ways: that dim is replicated, the embed dim is not.
    spec = rules_lib.logical_to_mesh_spec(P("embed", "kv_heads", "head_dim"), mesh, None, (64, 2, 16))
    assert spec == P("fsdp", None, None)
    with pytest.raises(ValueError, match="batch size 3"):
        rules_lib.shard_batch({"x": jnp.zeros((3, 4))}, mesh)
