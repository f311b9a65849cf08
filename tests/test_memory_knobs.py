"""Memory knobs of the training stages: `model.remat` threaded through model building,
gradient accumulation in `jaxstep.train.optim.optimizer_step` (`sft.microbatch_size`,
`rm.microbatch_size`) and chunked LM-head log-probs (`model.logits_chunk`)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstep import config_lib, models
from jaxstep.models import build as model_build
from jaxstep.models import reward_io
from jaxstep.models.logprobs import chunked_token_stats, response_logprobs, token_logprobs
from jaxstep.rewards.losses import batch_loss
from jaxstep.stages import sft
from jaxstep.train import optim

V = 97  # not a multiple of anything, so every padding path runs


@functools.lru_cache(maxsize=None)
def _cached_model(tie=True):
    config = models.tiny(vocab_size=V, num_layers=2, tie_word_embeddings=tie)
    return models.Decoder(config), models.init_params(config, jax.random.key(0))


def _model(tie=True):
    """The tiny decoder and a fresh copy of its params (a jitted step may donate them)."""
    model, params = _cached_model(tie)
    return model, jax.tree.map(jnp.copy, params)


def _sft_batch(B=8, T=12, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (B, T)).astype(np.int32)
    mask = np.ones((B, T), bool)
    mask[1, 9:] = False  # a right-padded row
    loss_mask = mask & (np.arange(T)[None] >= rng.integers(2, 8, (B, 1)))  # targets after a prompt
    loss_mask[3] = False  # a row with no targets at all
    return {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask), "loss_mask": jnp.asarray(loss_mask)}


def _close(a, b, atol, rtol=0.0):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
                 a, b)


# ----------------------------------------------------------------------------- chunked log-probs


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_chunked_token_stats_equal_full(tie, chunk):
    model, params = _model(tie)
    ids = _sft_batch()["ids"]
    hidden = model.apply({"params": params}, ids, lm_head=False)
    logits = model.apply({"params": params}, ids)
    for temperature in (1.0, 0.7):
        full_lp, full_ent = token_logprobs(logits, ids, temperature=temperature, with_entropy=True)
        stats = chunked_token_stats(model.config, params, hidden[:, :-1], ids[:, 1:], chunk,
                                    temperature=temperature, with_entropy=True, with_hits=True)
        _close(stats["logprobs"], full_lp[:, 1:], 1e-5)
        _close(stats["entropy"], full_ent[:, 1:], 1e-5)
        np.testing.assert_array_equal(stats["hits"], jnp.argmax(logits[:, :-1], -1) == ids[:, 1:])


@pytest.mark.parametrize("chunk", [3, 16])
def test_response_logprobs_chunked_equal_with_gradients(chunk):
    model, params = _model(False)
    ids = _sft_batch()["ids"]
    mask = jnp.ones_like(ids)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)

    def f(p, c):
        lp, ent = response_logprobs(model, p, ids, mask, pos, 5, temperature=0.8, with_entropy=True,
                                    logits_chunk=c)
        return (lp * jnp.arange(ids.shape[1])).sum() + ent.sum(), (lp, ent)

    (v0, out0), g0 = jax.jit(jax.value_and_grad(f, has_aux=True), static_argnums=1)(params, 0)
    (v1, out1), g1 = jax.jit(jax.value_and_grad(f, has_aux=True), static_argnums=1)(params, chunk)
    _close(out1, out0, 1e-5)
    _close(v1, v0, 1e-4)
    _close(g1, g0, 1e-5, rtol=2e-5)  # float32 sums over chunks in another order


def test_sft_loss_chunked_equal():
    model, params = _model()
    batch = _sft_batch()
    (l0, m0), g0 = jax.value_and_grad(lambda p: sft.sft_loss(model, p, batch), has_aux=True)(params)
    (l1, m1), g1 = jax.value_and_grad(lambda p: sft.sft_loss(model, p, batch, logits_chunk=5),
                                      has_aux=True)(params)
    _close((l1, m1), (l0, m0), 1e-5)
    _close(g1, g0, 1e-5, rtol=2e-5)


# ----------------------------------------------------------------------------- gradient accumulation


def _state(params, tx):
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key(3)}


@pytest.mark.parametrize("micro", [1, 2, 4])
def test_accumulated_sft_step_equals_full_batch(micro):
    model, params = _model()
    batch = _sft_batch()
    tx = optax.sgd(1.0)  # the update is the gradient itself
    loss_fn = functools.partial(sft.sft_loss, model)
    full_state, full = jax.jit(lambda s, b: optim.optimizer_step(loss_fn, tx, s, b))(_state(params, tx), batch)
    acc_state, acc = jax.jit(lambda s, b: sft.train_step(model, tx, s, b, microbatch_size=micro))(
        _state(params, tx), batch)
    _close(acc_state["params"], full_state["params"], 2e-6)
    assert int(acc_state["step"]) == int(full_state["step"]) == 1  # one optimizer step
    assert set(acc) == set(full)
    _close({k: acc[k] for k in full}, full, 2e-5)
    assert float(acc["target_tokens"]) == float(batch["loss_mask"][:, 1:].sum())


def test_accumulated_reward_model_step_equals_full_batch():
    model, params = _model()
    rm, rm_params, _ = reward_io.reward_model_from_generator(model, params, jax.random.key(5))
    B, T, S = 8, 12, 3
    rng = np.random.default_rng(0)
    batch = {"ids": jnp.asarray(rng.integers(3, V, (B, T)), jnp.int32), "mask": jnp.ones((B, T), bool),
             "step_ends": jnp.asarray(rng.integers(0, T, (B, S)), jnp.int32),
             "step_mask": jnp.asarray(rng.random((B, S)) < 0.8),
             "labels": jnp.asarray(rng.random((B, S)) < 0.5, jnp.float32),
             "label_mask": jnp.asarray(rng.random((B, S)) < 0.7)}
    tx = optax.sgd(1.0)
    loss_fn = lambda p, b: batch_loss(rm, p, b, "bce")  # noqa: E731
    full_state, full = optim.optimizer_step(loss_fn, tx, _state(rm_params, tx), batch)
    acc_state, acc = optim.optimizer_step(loss_fn, tx, _state(rm_params, tx), batch, microbatch_size=2,
                                          weight_key="targets")
    _close(acc_state["params"], full_state["params"], 2e-6)
    _close(acc, full, 2e-5)


def test_accumulation_rejects_a_microbatch_that_does_not_divide():
    model, params = _model()
    tx = optax.sgd(1.0)
    with pytest.raises(ValueError, match="does not divide"):
        sft.train_step(model, tx, _state(params, tx), _sft_batch(B=8), microbatch_size=3)


def test_accumulated_step_under_a_mesh():
    from jaxstep.parallel import mesh as mesh_lib, placement
    model, params = _model()
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    tx = optax.sgd(1.0)
    batch = _sft_batch(B=16)
    full_state, _ = sft.train_step(model, tx, _state(params, tx), batch)
    step = placement.jit_step(functools.partial(sft.train_step, model, tx, microbatch_size=8), mesh)
    state = placement.place_on_mesh(_state(placement.shard_params(params, model, mesh), tx), mesh)
    acc_state, _ = step(state, placement.shard_batch({k: np.asarray(v) for k, v in batch.items()}, mesh))
    _close(acc_state["params"], full_state["params"], 2e-6)


# ----------------------------------------------------------------------------- remat, config


def test_remat_is_threaded_through_model_building():
    c = config_lib.base_config("t", "sft")
    c.model.remat = "dots_no_batch"
    model, _ = _model()
    assert model_build.with_remat(model, c).remat == "dots_no_batch"
    rm, _, _ = reward_io.reward_model_from_generator(model, _model()[1], jax.random.key(0), remat="full")
    assert rm.remat == "full"
    c.model.remat = "none"
    assert model_build.with_remat(model, c) is model
    c.model.attention = "xla"  # every stage builds its policy through with_remat
    built = model_build.with_remat(model, c)
    assert built.attention == "xla" and built.remat == model.remat
    rm, _, _ = reward_io.reward_model_from_generator(built, _model()[1], jax.random.key(0))
    assert rm.attention == "xla"


def test_remat_decoder_samples_like_the_plain_one():
    """The KV-cache path runs plain blocks: the same tokens with or without remat."""
    model, params = _model()
    ids = _sft_batch()["ids"][:2, :6]
    mask = jnp.ones_like(ids)
    kw = dict(max_new_tokens=5, greedy=True, eos_id=None, pad_id=0)
    a = models.generate(model, params, ids, mask, jax.random.key(0), **kw)
    b = models.generate(model.clone(remat="full"), params, ids, mask, jax.random.key(0), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_validation_of_the_memory_knobs():
    c = config_lib.base_config("t", "sft")
    c.model.remat = "everything"
    c.model.logits_chunk = -1
    c.sft.microbatch_size = 5
    c.rm.microbatch_size = 8
    errors = "\n".join(config_lib.validation.problems(c))
    assert "model.remat" in errors and "model.logits_chunk" in errors
    assert "sft.microbatch_size=5" in errors and "rm.microbatch_size" not in errors
    c = config_lib.base_config("t", "plan")
    assert config_lib.validation.problems(c) == []
    c.plan.topology, c.plan.programs = "v3-8", "sft,train"
    errors = "\n".join(config_lib.validation.problems(c))
    assert "plan.topology='v3-8'" in errors and "plan.programs='sft,train'" in errors
