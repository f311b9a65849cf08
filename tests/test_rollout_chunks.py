"""Rollouts and scoring in chunks of `sampler.batch_size` rows (greedy chunked ==
unchunked, scorer chunked == unchunked exactly, one chunk == today's single call), and
the PPO stage's param dtypes in bfloat16 (frozen models bf16, trained ones f32)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import generation
from jaxstep.data import batching, sources
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.models import reward_io
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import placement
from jaxstep.rl import chunked
from jaxstep.rl import rollout as rollout_lib
from jaxstep.rl import scorer as scorer_lib
from jaxstep.stages import ppo as stage_ppo
from run_helpers import PPO_P as P, tiny_ppo_config

pytestmark = pytest.mark.usefixtures("compilation_cache")  # tests/conftest.py

ROWS = 6  # with chunks of 4: one full chunk and one padded to 4


@pytest.fixture(scope="module")
def setup(tiny_chain):
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    config = tiny_chain["config"]
    problems = sources.load_problems(config, "synthetic", "train")[:ROWS]
    enc = batching.encode_prompts(problems, tiny_chain["tokenizer"], P)
    params = placement.place_on_mesh(tiny_chain["params"], mesh)
    return dict(tiny_chain, mesh=mesh, problems=problems, enc=enc, params=params)


def _generate(setup, chunk_size, key, **kw):
    tok = setup["tokenizer"]
    return generation.generate_chunked(
        setup["model"], setup["params"], setup["enc"]["ids"], setup["enc"]["mask"], key,
        chunk_size=chunk_size, max_new_tokens=12, eos_ids=generation.stop_token_ids(setup["model"], tok),
        pad_id=tokenizer_lib.special_ids(tok)["pad"], mesh=setup["mesh"], with_logprobs=True, **kw)


def test_chunk_rows():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    assert generation.chunk_rows(64, 64, mesh) == 64  # the main job: one chunk
    assert generation.chunk_rows(64, 0, mesh) == 64
    assert generation.chunk_rows(8192, 256, mesh) == 256  # 32 chunks
    assert generation.chunk_rows(6, 3, mesh) == 4  # rounded up to the data-parallel size
    assert [(s.start, s.stop) for s in generation.chunk_slices(6, 4)] == [(0, 4), (4, 6)]
    np.testing.assert_array_equal(generation.pad_rows(np.array([[1], [2]]), 4), [[1], [2], [1], [1]])


def test_greedy_chunked_equals_unchunked(setup):
    whole = _generate(setup, 0, jax.random.key(0), greedy=True)
    assert whole.tokens.shape == (ROWS, 12) and whole.lengths.min() >= 1
    for size in (2, 4):  # 3 chunks; 2 chunks, the last padded
        part = _generate(setup, size, jax.random.key(0), greedy=True)
        np.testing.assert_array_equal(part.tokens, whole.tokens)
        np.testing.assert_array_equal(part.lengths, whole.lengths)
        np.testing.assert_allclose(part.logprobs, whole.logprobs, rtol=1e-6, atol=1e-6)


def test_sampled_chunks_reproducible_and_one_chunk_is_one_call(setup):
    key = jax.random.key(7)
    a, b = _generate(setup, 4, key), _generate(setup, 4, key)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.sampling_logprobs, b.sampling_logprobs)
    # chunk_size >= rows (the stage's default sizes): exactly today's single sampler call.
    single = generation.generate_batch(
        setup["model"], setup["params"], setup["enc"]["ids"], setup["enc"]["mask"], key, max_new_tokens=12,
        eos_ids=generation.stop_token_ids(setup["model"], setup["tokenizer"]),
        pad_id=tokenizer_lib.special_ids(setup["tokenizer"])["pad"], mesh=setup["mesh"], with_logprobs=True)
    one = _generate(setup, 64, key)
    np.testing.assert_array_equal(one.tokens, single.tokens)
    np.testing.assert_array_equal(one.logprobs, single.logprobs)
    # Chunk 1 samples with another key than the single call's rows 4, 5.
    assert not np.array_equal(a.tokens, single.tokens)


def test_scorer_chunked_equals_unchunked_exactly(setup):
    mesh, model = setup["mesh"], setup["model"]
    rm_model, rm_params, _, _ = reward_io.load_reward_model(setup["prm"])
    settings = stage_ppo.sample_settings(tiny_ppo_config())
    roll = rollout_lib.sample(model, setup["params"], setup["tokenizer"], setup["problems"], jax.random.key(1),
                              settings, mesh=mesh, chunk_size=4)
    assert roll.tokens.shape[0] == ROWS
    host = rollout_lib.sequence_batch(roll)
    shaping = stage_ppo.shaping_settings(tiny_ppo_config())
    scorer = scorer_lib.make_scorer(model, rm_model, rm_model, "prm", shaping, prompt_len=P,
                                    recompute_logprobs=True, mesh=mesh)
    rm_params = placement.place_on_mesh(rm_params, mesh)
    params = {"policy": setup["params"], "ref": setup["params"], "critic": rm_params, "rm": rm_params}
    whole = jax.device_get(chunked.score_chunked(scorer, params, host, None, mesh, 0))
    # Chunks of 4 (2 rows per device, a short last chunk padded): bitwise equal.
    part = jax.device_get(chunked.score_chunked(scorer, params, host, None, mesh, 4))
    assert sorted(part) == sorted(whole)
    for k in whole:
        np.testing.assert_array_equal(part[k], whole[k], err_msg=k)
    # Chunks of 2 (ONE row per device): XLA:CPU compiles the unit batch differently, so
    # the scores differ by float rounding (measured <= 2e-6); the same values otherwise.
    part = jax.device_get(chunked.score_chunked(scorer, params, host, None, mesh, 2))
    for k in whole:
        np.testing.assert_allclose(part[k], whole[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert np.abs(whole["values"]).max() > 0 and np.abs(whole["ref_logprobs"]).max() > 0


def test_ppo_stage_bf16_keeps_frozen_models_in_bf16(tiny_chain, monkeypatch):
    """model.dtype bfloat16: reference policy and reward model params bf16, the trained
    policy and critic (and their Adam moments) float32; rollout and scorer in chunks."""
    config = tiny_ppo_config(scheme="prm_max", steps=1)
    config.model.dtype = "bfloat16"
    config.ppo.eval_limit = 0
    config.ppo.export = False
    config.mesh.data, config.mesh.tensor = 4, 2  # 4-way data: chunks of 4 of the 8 rollouts
    config.sampler.batch_size = 4
    config.ppo.policy = tiny_chain["sft"]
    config.ppo.reward_model = tiny_chain["prm"]
    seen = []
    original = chunked.score_chunked

    def recording(scorer, params, host_batch, batch, mesh, chunk_size):
        seen.append(({k: sorted({str(x.dtype) for x in jax.tree.leaves(v)}) for k, v in params.items()},
                     generation.chunk_rows(len(host_batch["input_ids"]), chunk_size, mesh)))
        return original(scorer, params, host_batch, batch, mesh, chunk_size)
    monkeypatch.setattr(stage_ppo.chunked, "score_chunked", recording)
    summary = stage_ppo.run(config, os.path.join(tiny_chain["root"], "ppo_bf16"))
    assert summary["steps"] == 1 and summary["skipped_steps"] == 0
    dtypes, rows = seen[0]
    assert dtypes["ref"] == ["bfloat16"] and dtypes["rm"] == ["bfloat16"]
    assert dtypes["policy"] == ["float32"] and dtypes["critic"] == ["float32"]
    assert rows == 4  # two scorer calls of 4 rows
