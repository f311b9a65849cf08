"""The segmented decode loop (`decode_block`): each segment's steps attend over the cache
up to the segment's end. Checked against the one-segment sampler (the program used when
the response fits one block), a no-cache forward pass and transformers' `generate`."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from attention_helpers import PAD, left_padded, small_sampler_model
from jaxstep import models
from jaxstep.models import sampler

NEW = 12
BLOCKS = [1, 4, 5]  # 4 divides NEW, 5 does not; 1: an empty first segment, one step per loop


@pytest.fixture(scope="module")
def small():
    """A tiny random Qwen2 with a 16-token vocabulary and peaked logits."""
    return small_sampler_model()


def _assert_same(got, expected, logprob_atol=1e-5):
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(expected.mask))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(expected.lengths))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(expected.logprobs), atol=logprob_atol)
    np.testing.assert_allclose(np.asarray(got.sampling_logprobs),
                               np.asarray(expected.sampling_logprobs), atol=logprob_atol)


def test_decode_segments_hand_values():
    assert sampler.decode_segments(10, 4) == [(1, 4, 4), (4, 8, 8), (8, 10, 10)]
    assert sampler.decode_segments(8, 4) == [(1, 4, 4), (4, 8, 8)]
    assert sampler.decode_segments(4, 4) == [(1, 4, 4)]
    assert sampler.decode_segments(4, 8) == [(1, 4, 4)]
    assert sampler.decode_segments(5, 0) == [(1, 5, 5)]
    assert sampler.decode_segments(3, 1) == [(1, 1, 1), (1, 2, 2), (2, 3, 3)]


def test_one_block_response_reuses_the_unsegmented_program(small):
    """max_new_tokens <= decode_block compiles (and caches) the one-segment program."""
    model, params = small
    ids, mask = left_padded(16, [3, 5], 5, seed=1)
    kwargs = dict(max_new_tokens=6, greedy=True, eos_id=None, pad_id=PAD)
    a = models.generate(model, params, ids, mask, jax.random.key(0), decode_block=0, **kwargs)
    before = sampler._compiled.cache_info()
    b = models.generate(model, params, ids, mask, jax.random.key(0), decode_block=6, **kwargs)
    c = models.generate(model, params, ids, mask, jax.random.key(0), **kwargs)  # default block
    after = sampler._compiled.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2
    jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, a, c)


def test_segments_are_separate_loops_over_growing_caches(small):
    model, params = small
    st = sampler._Static(max_new_tokens=10, greedy=True, top_k=0, top_p=False, plain=False,
                         cache_dtype=None, decode_block=4)
    ids, mask = left_padded(16, [3, 5], 5, seed=1)
    dyn = sampler._Dynamic(np.float32(1), np.float32(1), np.int32(PAD), np.zeros((0,), np.int32),
                           np.zeros((0, 0), np.int32))
    jaxpr = jax.make_jaxpr(sampler._build(model, st))(params, ids, mask, jax.random.key(0), dyn)
    loops = [e for e in jaxpr.jaxpr.eqns[0].params["jaxpr"].eqns if e.primitive.name == "while"]
    assert len(loops) == 3
    # the cache's mask [batch, slots] in each loop's carry: prompt 5 + segment end
    slots = sorted({v.aval.shape[1] for e in loops for v in e.outvars
                    if v.aval.dtype == bool and v.aval.ndim == 2})
    assert slots == [5 + 4, 5 + 8, 5 + 10]


@pytest.mark.parametrize("block", BLOCKS)
def test_greedy_equals_unsegmented_with_eos_and_left_padding(small, block):
    model, params = small
    ids, mask = left_padded(16, [7, 2, 5, 4, 1, 6], 7, seed=3)
    free = models.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=NEW,
                           greedy=True, eos_id=None, pad_id=PAD, decode_block=0)
    # an EOS that some rows emit at different steps (so rows stop in different segments)
    tokens = np.asarray(free.tokens)
    counts = np.bincount(tokens[:, 1:].ravel(), minlength=16)
    eos = int(np.argmax(np.where(counts < tokens.shape[0] * (NEW - 1), counts, 0)))
    kwargs = dict(max_new_tokens=NEW, greedy=True, eos_id=[eos], pad_id=PAD)
    expected = models.generate(model, params, ids, mask, jax.random.key(0), decode_block=0, **kwargs)
    got = models.generate(model, params, ids, mask, jax.random.key(0), decode_block=block, **kwargs)
    lengths = np.asarray(expected.lengths)
    assert lengths.min() < NEW and lengths.max() > lengths.min()  # EOS stops some rows early
    _assert_same(got, expected)
    _assert_same(models.generate(model, params, ids, mask, jax.random.key(0), decode_block=block,
                                 max_new_tokens=NEW, greedy=True, eos_id=None, pad_id=PAD), free)


def test_all_rows_stopped_in_the_first_segment(small):
    model, params = small
    ids, mask = left_padded(16, [4, 2, 3], 4, seed=5)
    free = np.asarray(models.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=3,
                                      greedy=True, eos_id=None, pad_id=PAD).tokens)
    eos = [int(t) for t in free[:, 1]]  # every row stops by its second token
    kwargs = dict(max_new_tokens=NEW, greedy=True, eos_id=eos, pad_id=PAD)
    expected = models.generate(model, params, ids, mask, jax.random.key(0), decode_block=0, **kwargs)
    got = models.generate(model, params, ids, mask, jax.random.key(0), decode_block=3, **kwargs)
    assert np.asarray(expected.lengths).max() <= 2
    _assert_same(got, expected)


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.8, top_k=6),
                                      dict(temperature=1.3, top_p=0.8),
                                      dict(top_k=8, top_p=0.9)],
                         ids=["plain", "top_k", "top_p", "top_k_top_p"])
@pytest.mark.parametrize("block", [5])
def test_sampling_with_the_same_key_equals_unsegmented(small, settings, block):
    """Masked slots add exact zeros to the softmax, so the logits and hence the samples
    from fold_in(key, step) are the same; only float reassociation could differ."""
    model, params = small
    ids, mask = left_padded(16, [6, 2, 5, 3], 6, seed=7)
    kwargs = dict(max_new_tokens=NEW, eos_id=3, pad_id=PAD, **settings)
    expected = models.generate(model, params, ids, mask, jax.random.key(4), decode_block=0, **kwargs)
    got = models.generate(model, params, ids, mask, jax.random.key(4), decode_block=block, **kwargs)
    _assert_same(got, expected)
    assert len(set(np.asarray(got.tokens).ravel().tolist())) > 3  # really sampled


def test_logprobs_equal_a_no_cache_forward(small):
    """Independent reference: the full forward pass over prompt + response, no cache."""
    model, params = small
    ids, mask = left_padded(16, [6, 3, 5], 6, seed=11)
    out = models.generate(model, params, ids, mask, jax.random.key(9), max_new_tokens=NEW,
                          eos_id=None, pad_id=PAD, decode_block=5)
    full_ids = np.concatenate([ids, np.asarray(out.tokens)], 1)
    full_mask = np.concatenate([mask, np.ones_like(np.asarray(out.tokens))], 1)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, full_ids, full_mask), np.float64)
    logits = logits[:, ids.shape[1] - 1:-1]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = np.take_along_axis(logp, np.asarray(out.tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), expected, atol=2e-5)


def test_greedy_equals_transformers_generate_across_segments():
    pytest.importorskip("torch")
    from hf_helpers import hf_greedy, jax_from_hf, random_hf_model

    hf_model = random_hf_model("qwen2_tied", seed=7, std=0.15)
    model, params = jax_from_hf(hf_model)
    ids, mask = left_padded(model.config.vocab_size, [9, 5, 2, 7], 9, seed=8)
    expected = hf_greedy(hf_model, ids, mask, NEW, None)
    out = models.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=NEW,
                          greedy=True, eos_id=None, pad_id=PAD, decode_block=5)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    assert len(set(expected.ravel().tolist())) > 3


def test_negative_decode_block_is_an_error(small):
    model, params = small
    ids, mask = left_padded(16, [2], 2)
    with pytest.raises(ValueError, match="decode_block"):
        models.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=4,
                        eos_id=None, pad_id=PAD, decode_block=-1)


@pytest.mark.slow  # SPMD compile of the segmented sampler
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")
def test_segments_under_a_two_device_mesh(small):
    from jaxstep.parallel import mesh as mesh_lib
    from jaxstep.parallel import rules as rules_lib

    model, params = small
    ids, mask = left_padded(16, [6, 2, 4, 5], 6, seed=13)
    kwargs = dict(max_new_tokens=NEW, temperature=0.9, eos_id=3, pad_id=PAD)
    expected = models.generate(model, params, ids, mask, jax.random.key(5), decode_block=0, **kwargs)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    sharded = rules_lib.shard_params(params, models.logical_specs(model), mesh)
    batch = rules_lib.shard_batch({"ids": ids, "mask": mask}, mesh)
    with rules_lib.activation_sharding(mesh):
        got = models.generate(model, sharded, batch["ids"], batch["mask"], jax.random.key(5),
                              decode_block=5, **kwargs)
    assert got.tokens.sharding.spec[0] in ("data", ("data", "fsdp"))
    _assert_same(got, expected)


def test_decode_block_config_reaches_the_sampler(small, monkeypatch):
    """`sampler.decode_block` travels from the config through the PPO stage's settings and
    `generation.generate_chunked` into `generate` (the segments the stages decode with);
    a negative value is a config error."""
    from jaxstep import config_lib, generation
    from jaxstep.parallel import mesh as mesh_lib
    from jaxstep.stages import ppo as ppo_stage

    config = config_lib.base_config("t", "ppo")
    assert config.sampler.decode_block == sampler.DECODE_BLOCK
    config.sampler.decode_block = 5
    settings = ppo_stage.sample_settings(config)
    assert settings.decode_block == 5
    seen = []
    real = sampler.generate
    monkeypatch.setattr(sampler, "generate", lambda *a, **kw: seen.append(kw["decode_block"]) or real(*a, **kw))
    model, params = small
    mesh = mesh_lib.make_mesh()
    rows = 2 * mesh.size  # two chunks of one row per device
    ids, mask = left_padded(model.config.vocab_size, [2 + i % 4 for i in range(rows)], 6)
    out = generation.generate_chunked(model, params, np.asarray(ids), np.asarray(mask), jax.random.key(0),
                                      chunk_size=mesh.size, mesh=mesh, max_new_tokens=NEW,
                                      eos_ids=(), pad_id=PAD, greedy=True, decode_block=settings.decode_block)
    assert seen == [5, 5] and out.tokens.shape == (rows, NEW)
    config.sampler.decode_block = -1
    assert "sampler.decode_block" in "\n".join(config_lib.validation.problems(config))
