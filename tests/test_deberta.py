"""The Flax DeBERTa-v2/v3 encoder against transformers' `DebertaV2Model` (random tiny
configs, float32, eager), HF folder I/O, and sentencepiece tokenizer folders offline."""
from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxstep import models  # noqa: E402
from jaxstep.models import deberta, deberta_hf  # noqa: E402
from jaxstep.models import hf as hf_io  # noqa: E402
from jaxstep.models.config import UnsupportedModelError  # noqa: E402
import deberta_helpers  # noqa: E402

TOL = 1e-4
TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0)
V3 = dict(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
          position_buckets=8, max_relative_positions=-1, share_att_key=True,
          norm_rel_ebd="layer_norm")
# Lengths up to 20 > 8 // 2 exercise the log buckets and the clipping of distances.
CASES = {
    "v3_c2p_p2c": V3,
    "c2p_only_unshared": dict(V3, pos_att_type=["c2p"], share_att_key=False),
    "p2c_only_unshared": dict(V3, pos_att_type=["p2c"], share_att_key=False,
                              norm_rel_ebd="none"),
    "no_buckets_maxrel": dict(V3, position_buckets=-1, max_relative_positions=6,
                              share_att_key=False, position_biased_input=True),
    "no_buckets_default_span": dict(V3, position_buckets=0, max_relative_positions=-1,
                                    norm_rel_ebd="none", position_biased_input=True),
    "buckets_maxrel_str_types": dict(V3, position_buckets=6, max_relative_positions=16,
                                     pos_att_type="c2p|p2c", hidden_act="gelu_new"),
    "v2_embed_proj_types_conv": dict(V3, pos_att_type=["c2p", "p2c"], embedding_size=24,
                                     type_vocab_size=2, conv_kernel_size=3, conv_act="gelu"),
    "absolute_only": dict(relative_attention=False, position_biased_input=True,
                          pos_att_type=["c2p"], norm_rel_ebd="layer_norm"),
}


def random_deberta(extra: dict, seed: int = 0, std: float = 0.2):
    """An eager float32 `DebertaV2Model` with non-trivial random weights."""
    torch.manual_seed(seed)
    config = transformers.DebertaV2Config(**TINY, **extra)
    model = transformers.DebertaV2Model(config).float().eval()
    model.config._attn_implementation = "eager"
    return deberta_helpers.randomize(model, seed, std)


def jax_from_torch(hf_model, prefix: str = ""):
    config = deberta.DebertaConfig.from_hf_dict(hf_model.config.to_dict())
    state = {prefix + k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return deberta.DebertaEncoder(config), deberta_hf.params_from_tensors(
        config, state.keys(), state.__getitem__)


def batch(vocab: int, lengths, total: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = (np.arange(total)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def torch_hidden(hf_model, ids, mask, **kw):
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       **{k: torch.tensor(v, dtype=torch.long) for k, v in kw.items()})
    return out.last_hidden_state.float().numpy()


def max_real_diff(got, expected, mask):
    assert got.shape == expected.shape and got.dtype == np.float32
    return float(np.abs(got - expected)[mask.astype(bool)].max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_transformers(name):
    hf_model = random_deberta(CASES[name])
    model, params = jax_from_torch(hf_model)
    ids, mask = batch(TINY["vocab_size"], [20, 13, 1], 20, seed=1)
    apply = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m))
    expected = torch_hidden(hf_model, ids, mask)
    diff = max_real_diff(np.asarray(apply(params, ids, mask)), expected, mask)
    print(f"{name}: max abs diff {diff:.2e}")
    assert diff <= TOL, f"{name}: max abs hidden diff {diff:.2e}"
    # Unpadded, no mask given.
    full = np.ones_like(mask)
    diff = max_real_diff(np.asarray(jax.jit(model.apply)({"params": params}, ids)),
                         torch_hidden(hf_model, ids, full), full)
    assert diff <= TOL, f"{name}/no mask: max abs hidden diff {diff:.2e}"
    # Real tokens do not depend on what the padding holds.
    noisy = np.where(mask == 1, ids, 7).astype(np.int32)
    np.testing.assert_allclose(np.asarray(apply(params, noisy, mask))[mask == 1],
                               np.asarray(apply(params, ids, mask))[mask == 1], atol=1e-5)


def test_token_types_match_transformers():
    hf_model = random_deberta(CASES["v2_embed_proj_types_conv"])
    model, params = jax_from_torch(hf_model)
    ids, mask = batch(TINY["vocab_size"], [9, 5], 9, seed=3)
    types = (np.arange(9)[None] >= 4).astype(np.int32).repeat(2, 0)
    got = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask,
                                        token_type_ids=types))(params)
    diff = max_real_diff(np.asarray(got), torch_hidden(hf_model, ids, mask, token_type_ids=types), mask)
    assert diff <= TOL


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (8, 64), (6, 16), (32, 128)])
def test_log_buckets_equal_transformers(buckets, max_position):
    from transformers.models.deberta_v2 import modeling_deberta_v2 as m

    rel = np.arange(-600, 601)[:, None]
    expected = m.make_log_bucket_position(torch.tensor(rel), buckets, max_position).long().numpy()
    np.testing.assert_array_equal(deberta.log_bucket_position(rel, buckets, max_position), expected)


def test_params_have_logical_axes_and_shapes():
    hf_model = random_deberta(CASES["v3_c2p_p2c"])
    model, params = jax_from_torch(hf_model)
    fresh = models.abstract_params(model)
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, params)
    specs = models.logical_specs(model)
    P = jax.sharding.PartitionSpec
    assert specs["embed"]["embedding"] == P("vocab", "embed")
    assert specs["layers_0"]["attn"]["q_proj"]["kernel"] == P("embed", "heads", "head_dim")
    assert specs["layers_0"]["up_proj"]["kernel"] == P("embed", "mlp")
    assert "pos_embed" not in params and params["rel_embed"].shape == (16, 32)


def test_prefixed_checkpoint_keys_and_heads_ignored():
    hf_model = random_deberta(CASES["v3_c2p_p2c"])
    _, params = jax_from_torch(hf_model)
    _, prefixed = jax_from_torch(hf_model, prefix="deberta.")
    jax.tree.map(np.testing.assert_array_equal, params, prefixed)
    # A sequence-classification checkpoint: deberta.* plus pooler/classifier tensors.
    cls = transformers.DebertaV2ForSequenceClassification(hf_model.config).eval()
    cls.deberta.load_state_dict(hf_model.state_dict())
    state = {k: v.detach().numpy() for k, v in cls.state_dict().items()}
    assert any(k.startswith("classifier.") for k in state)
    config = deberta.DebertaConfig.from_hf_dict(hf_model.config.to_dict())
    from_cls = deberta_hf.params_from_tensors(config, state.keys(), state.__getitem__)
    jax.tree.map(np.testing.assert_array_equal, params, from_cls)
    with pytest.raises(KeyError, match="rel_embeddings"):
        deberta_hf.params_from_tensors(
            config, [k for k in state if "rel_embeddings" not in k], state.__getitem__)


def test_save_then_transformers_reload_equal_outputs(tmp_path):
    hf_model = random_deberta(CASES["v2_embed_proj_types_conv"], seed=4)
    model, params = jax_from_torch(hf_model)
    folder = deberta_hf.save(tmp_path / "out", model, params)
    reloaded, info = transformers.DebertaV2Model.from_pretrained(
        folder, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    reloaded = reloaded.float().eval()
    ids, mask = batch(TINY["vocab_size"], [11, 6], 11, seed=5)
    expected = torch_hidden(reloaded, ids, mask)
    np.testing.assert_allclose(expected[mask == 1], torch_hidden(hf_model, ids, mask)[mask == 1],
                               atol=1e-6)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
    assert max_real_diff(ours, expected, mask) <= TOL
    # And back through our loader (jaxstep.models.hf.load dispatches on model_type).
    model2, params2 = hf_io.load(folder)
    assert isinstance(model2, deberta.DebertaEncoder) and model2.config == model.config
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_load_transformers_folders(tmp_path):
    """Folders written by transformers: a DebertaV2Model and a classification model."""
    hf_model = random_deberta(CASES["p2c_only_unshared"], seed=6)
    hf_model.save_pretrained(tmp_path / "base")
    cls = transformers.DebertaV2ForSequenceClassification(hf_model.config).eval()
    cls.deberta.load_state_dict(hf_model.state_dict())
    cls.save_pretrained(tmp_path / "cls")
    ids, mask = batch(TINY["vocab_size"], [7, 4], 7, seed=7)
    expected = torch_hidden(hf_model, ids, mask)
    for sub in ("base", "cls"):
        model, params = hf_io.load(tmp_path / sub)
        got = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
        assert max_real_diff(got, expected, mask) <= TOL, sub


def test_pytorch_bin_folder(tmp_path):
    hf_model = random_deberta(CASES["absolute_only"], seed=8)
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save({"deberta." + k: v for k, v in hf_model.state_dict().items()},
               folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    model, params = deberta_hf.load(folder)
    ids, mask = batch(TINY["vocab_size"], [5, 3], 5, seed=9)
    got = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
    assert max_real_diff(got, torch_hidden(hf_model, ids, mask), mask) <= TOL


def test_config_round_trip_and_errors():
    hf_model = random_deberta(CASES["v2_embed_proj_types_conv"])
    config = deberta.DebertaConfig.from_hf_dict(hf_model.config.to_dict())
    assert config.embedding_size == 24 and config.head_dim == 8 and config.conv_kernel_size == 3
    assert deberta.DebertaConfig.from_hf_dict(config.to_hf_dict()) == config
    again = transformers.DebertaV2Config(**config.to_hf_dict())
    assert deberta.DebertaConfig.from_hf_dict(again.to_dict()) == config
    with pytest.raises(UnsupportedModelError, match="conv_kernel_size"):
        deberta.DebertaConfig.from_hf_dict(dict(hf_model.config.to_dict(), conv_kernel_size=4))
    with pytest.raises(UnsupportedModelError, match="attention_head_size"):
        deberta.DebertaConfig.from_hf_dict(dict(hf_model.config.to_dict(), attention_head_size=6))
    with pytest.raises(UnsupportedModelError, match="hidden_act"):
        deberta.DebertaConfig.from_hf_dict(dict(hf_model.config.to_dict(), hidden_act="mish"))
    with pytest.raises(UnsupportedModelError, match="deberta-v2"):
        deberta.DebertaConfig.from_hf_dict({"model_type": "bert"})


def _train_spm() -> bytes:
    spm = pytest.importorskip("sentencepiece")
    words = ["the", "answer", "is", "step", "so", "we", "add", "and", "get", "total", "each",
             "apples", "costs", "dollars", "then", "left", "x", "equals", "twice", "half"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 8)) + f" {rng.integers(100)} + {rng.integers(100)} = ?"
             for _ in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=90, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]", unk_piece="[UNK]",
        bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"],
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return buf.getvalue()


def test_sentencepiece_tokenizer_folder_offline(tmp_path, monkeypatch):
    spm = pytest.importorskip("sentencepiece")
    from jaxstep.data.tokenizer import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proto = _train_spm()
    processor = spm.SentencePieceProcessor(model_proto=proto)
    # A DeBERTa-v3 style folder: config.json + spm.model, no tokenizer.json.
    hf_model = random_deberta(dict(CASES["v3_c2p_p2c"]), seed=10)
    model, params = jax_from_torch(hf_model)
    folder = deberta_hf.save(tmp_path / "spm", model, params)
    (folder / "spm.model").write_bytes(proto)
    text = "the answer is 12 + 7 = ?"
    expected = [2] + processor.encode(text) + [3]  # [CLS] ... [SEP]
    auto = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(auto).__name__.startswith("DebertaV2Tokenizer")
    assert auto(text)["input_ids"] == expected
    ours = load_tokenizer(folder)
    assert ours(text)["input_ids"] == expected
    assert (ours.cls_token, ours.sep_token, ours.pad_token_id) == ("[CLS]", "[SEP]", 0)
    # Saved next to the model, it loads again offline with the same ids, and the model
    # folder round-trips through jaxstep.models.hf.load.
    out = deberta_hf.save(tmp_path / "out", model, params, tokenizer=auto)
    for tok in (transformers.AutoTokenizer.from_pretrained(out, local_files_only=True),
                load_tokenizer(out)):
        assert tok(text)["input_ids"] == expected
        enc = tok([text, "so we add"], padding=True, return_tensors="np")
        got = np.asarray(hf_io.load(out)[0].apply({"params": params}, enc["input_ids"].astype(np.int32),
                                                  attention_mask=enc["attention_mask"]))
        np.testing.assert_allclose(got[enc["attention_mask"] == 1],
                                   torch_hidden(hf_model, enc["input_ids"], enc["attention_mask"])[
                                       enc["attention_mask"] == 1], atol=TOL)
