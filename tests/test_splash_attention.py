"""`Decoder(attention="splash")` (TPU splash attention; Pallas interpret mode on this CPU)
equals the einsum path in float32 on real tokens: padding on either side, GQA, OPT,
sliding window, gradients, under a 2x2x2 mesh (shard_map over batch and heads), and the
KV-cache sampler (which decodes through einsum). The TPU compile is in tests/test_aot.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_helpers import check_forward_and_gradient, model_pair, padded
from jaxstep import models
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib

TOL = dict(rtol=1e-5, atol=1e-5)


# The Pallas interpreter is slow on a CPU: one case in the fast suite, the rest slow.
@pytest.mark.parametrize("side,overrides", [
    ("left", {}),
    pytest.param("right", {}, marks=pytest.mark.slow),
    pytest.param("left", {"model_type": "llama", "sliding_window": 3}, marks=pytest.mark.slow),
    pytest.param("right", {"model_type": "opt"}, marks=pytest.mark.slow)])
def test_forward_and_gradient_equal_einsum(side, overrides):
    check_forward_and_gradient("splash", side, overrides, TOL)


def test_a_longer_row_than_one_block_and_a_mesh():
    """130 tokens (two 128-token blocks after padding) on a 2x2x2 mesh: batch over
    (data, fsdp), heads over tensor inside shard_map; equal to einsum on one device."""
    einsum, splash, params = model_pair("splash")
    ids, mask = padded("left", seed=2, length=130)
    want = np.asarray(jax.jit(lambda p: einsum.apply({"params": p}, ids, mask))(params))
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = rules_lib.DEFAULT_RULES
    sharded = rules_lib.shard_params(params, models.logical_specs(splash), mesh, rules)
    batch = rules_lib.shard_batch({"ids": ids, "mask": mask}, mesh)
    with rules_lib.activation_sharding(mesh, rules):
        got = jax.jit(lambda p, x, m: splash.apply({"params": p}, x, m))(sharded, batch["ids"], batch["mask"])
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], **TOL)


def test_sampling_with_splash_equals_einsum():
    """The sampler's prefill and decode run einsum under a splash model: same tokens."""
    einsum, splash, params = model_pair("splash")
    ids, mask = padded("left", seed=3)
    run = lambda m: models.generate(m, params, ids, mask, jax.random.key(0), max_new_tokens=5,  # noqa: E731
                                    greedy=True, eos_id=None, pad_id=0)
    a, b = run(einsum), run(splash)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), **TOL)


def _tpu_step(attention: str, batch=8, seqlen=512):
    """A 2-layer decoder's loss and gradients for v5e-4 (fsdp over 4 chips), compiled by the
    TPU compiler; returns (analysis, HLO text)."""
    from jaxstep.parallel import aot
    model = models.Decoder(models.tiny(vocab_size=256, num_layers=2, hidden_size=256, num_heads=2,
                                       num_kv_heads=1, intermediate_size=512,
                                       max_position_embeddings=seqlen), attention=attention)
    mesh = aot.make_abstract_mesh("v5e-4", {"data": 1, "fsdp": -1, "tensor": 1})
    shapes = models.abstract_params(model)
    shardings = rules_lib.param_shardings(shapes, models.logical_specs(model), mesh)
    params = aot.with_shardings(shapes, shardings, jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((batch, seqlen), jnp.int32, sharding=rules_lib.batch_sharding(mesh, 2))

    def step(p, ids):
        def loss(p):
            logits = model.apply({"params": p}, ids, jnp.ones_like(ids))
            return -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], -1).mean()
        return jax.value_and_grad(loss)(p)

    compiled = aot.compile_program(step, params, ids, mesh=mesh, rules=rules_lib.DEFAULT_RULES,
                                   out_shardings=(rules_lib.replicated(mesh), shardings))
    return aot.analyze(compiled, "v5e-4"), compiled.as_text()


def test_splash_compiles_for_tpu_as_the_mosaic_kernel(tpu):
    """For a TPU target the kernel is the compiled Pallas (Mosaic) custom call, not the
    interpreter; the step's peak memory (XLA's heap simulation) is below einsum's, whose
    [B, H, T, T] float32 scores live in HBM; and XLA's cost analysis does not count the
    kernel's FLOPs (the plan stage adds them: `jaxstep.reports.plan`)."""
    splash, text = _tpu_step("splash")
    einsum, einsum_text = _tpu_step("einsum")
    assert "tpu_custom_call" in text and "tpu_custom_call" not in einsum_text
    assert splash["fits"] and splash["compiler_peak_bytes"] < einsum["compiler_peak_bytes"]
    assert splash["flops"] < einsum["flops"]
