"""HF folder import/export: our save -> transformers load, transformers save -> our load."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import hf_logits, jax_from_hf, padded_batch, random_hf_model  # noqa: E402

from jaxstep import models  # noqa: E402
from jaxstep.models import hf  # noqa: E402

TOL = 1e-4


def _our_logits(model, params, ids, mask):
    return np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))


@pytest.mark.parametrize("name", ["qwen2_tied", "llama3_rope", "opt_proj", "opt_postnorm"])
def test_save_then_transformers_load(tmp_path, name):
    model, params = jax_from_hf(random_hf_model(name, seed=3))
    hf.save(tmp_path, model, params)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded).__name__ == models.config.HF_ARCHITECTURES[model.config.model_type]
    ids, mask = padded_batch(model.config.vocab_size, [9, 4], 9, "left", seed=4)
    diff = np.abs(hf_logits(loaded, ids, mask) - _our_logits(model, params, ids, mask))[mask == 1]
    assert diff.max() <= TOL


@pytest.mark.parametrize("name,shard", [("qwen2_untied", None), ("opt_proj", None),
                                        ("llama3_rope", "40KB")])
def test_transformers_save_then_our_load(tmp_path, name, shard):
    hf_model = random_hf_model(name, seed=5)
    kwargs = {"max_shard_size": shard} if shard else {}
    hf_model.save_pretrained(tmp_path, **kwargs)
    if shard:
        assert (tmp_path / hf.SAFE_INDEX).is_file()
        assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model, params = hf.load(tmp_path, dtype=jnp.float32)
    assert model.config.model_type == hf_model.config.model_type
    ids, mask = padded_batch(model.config.vocab_size, [8, 8, 3], 8, "left", seed=6)
    diff = np.abs(hf_logits(hf_model, ids, mask) - _our_logits(model, params, ids, mask))[mask == 1]
    assert diff.max() <= TOL


def test_our_sharded_save_roundtrip(tmp_path):
    config = models.tiny(64, hidden_size=32, num_layers=2, tie_word_embeddings=False)
    params = models.init_params(config, jax.random.key(0))
    hf.save(tmp_path, config, params, max_shard_bytes=20_000)
    index = json.loads((tmp_path / hf.SAFE_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, loaded = hf.load(tmp_path)
    assert model.config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_bfloat16_params(tmp_path):
    config = models.tiny(64, hidden_size=32, num_layers=1)
    params = models.init_params(config, jax.random.key(0))
    hf.save(tmp_path, config.replace(param_dtype="bfloat16"), params)
    model, loaded = hf.load(tmp_path, dtype=jnp.bfloat16)
    assert model.config.compute_dtype == jnp.bfloat16
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(loaded))
    np.testing.assert_allclose(np.asarray(loaded["embed"]["embedding"], np.float32),
                               np.asarray(params["embed"]["embedding"]), rtol=1e-2, atol=1e-3)
    logits = jax.jit(model.apply)({"params": loaded}, jnp.ones((1, 3), jnp.int32))
    assert logits.dtype == jnp.float32


def test_unknown_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 10}))
    with pytest.raises(models.UnsupportedModelError) as err:
        hf.load(tmp_path)
    message = str(err.value)
    assert "gpt2" in message and "config.json" in message
    for supported in ("llama", "qwen2", "opt"):
        assert supported in message


def test_missing_tensor_names_the_key(tmp_path):
    config = models.tiny(64, hidden_size=32, num_layers=1)
    params = models.init_params(config, jax.random.key(0))
    hf.save(tmp_path, config, params)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / hf.SAFE_SINGLE)
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / hf.SAFE_SINGLE)
    with pytest.raises(KeyError, match="model.layers.0.mlp.up_proj.weight"):
        hf.load(tmp_path)


def test_tokenizer_saved_with_model(tmp_path):
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "1": 3, "+": 4, "2": 5, "=": 6, "3": 7}
    tokenizer = Tokenizer(tok_models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    config = models.tiny(len(vocab), hidden_size=32, num_layers=1, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    hf.save(tmp_path, config, models.init_params(config, jax.random.key(0)), tokenizer=tokenizer)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("1 + 2 = 3")["input_ids"] == tokenizer.encode("1 + 2 = 3").ids
    assert loaded.eos_token == "</s>" and loaded.pad_token == "<pad>"
