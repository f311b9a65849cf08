"""Public HF reward models (SequenceClassification ORM, TokenClassification / TRL PRM,
Math-Shepherd causal-LM PRM) against transformers' PyTorch models on random-weight
folders written here, and the combined PRM + ORM reward."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxstep.data import formatting, synthetic  # noqa: E402
from jaxstep.data import tokenizer as tokenizer_lib  # noqa: E402
from jaxstep.models import hf_reward, reward_io  # noqa: E402
from jaxstep.models.config import UnsupportedModelError  # noqa: E402
from jaxstep.rewards import scoring  # noqa: E402
from jaxstep.rl import rollout as rollout_lib  # noqa: E402
from jaxstep.rl import scorer as scorer_lib  # noqa: E402
from jaxstep.rm import evaluation as rm_eval  # noqa: E402

TAG = hf_reward.STEP_TAG
MAX_LEN = 96


def shepherd_tokenizer():
    """A tiny BPE trained here on synthetic solutions, also written Math-Shepherd style."""
    problems = synthetic.generate(300, split="train", seed=3)
    texts = []
    for p in problems:
        texts.append(formatting.format_prompt(p) + formatting.render_solution(p.steps, p.answer))
        texts.append(" ".join(f"{s} {TAG}\n" for s in list(p.steps) + [f"#### {p.answer}"]) + "+ - + -")
    return tokenizer_lib.train_tokenizer(texts, 320)


@pytest.fixture(scope="module")
def tokenizer():
    return shepherd_tokenizer()


@pytest.fixture(scope="module")
def batch_texts():
    problems = synthetic.generate(4, split="test", seed=5)
    texts = [formatting.render_solution(p.steps[:n], p.answer)
             for p, n in zip(problems, (1, 2, 3, 2))]
    return problems, texts


def _hf_folder(path, tokenizer, arch, model_type, **extra):
    """A random transformers model of class `arch` saved with the tokenizer in `path`."""
    ids = tokenizer_lib.special_ids(tokenizer)
    cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
    cfg = cfg_cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], **extra)
    torch.manual_seed(0)
    model = getattr(transformers, arch)(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_((0.5 if name.startswith("score") else 0.08) * torch.randn_like(p))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


def _inputs(problems, texts, tokenizer, model, side):
    """Our RM inputs for `model`'s layout, right-padded or moved to the left."""
    enc = rollout_lib.reward_model_inputs(problems, texts, tokenizer, MAX_LEN, "\n", max_steps=4,
                                          layout=hf_reward.layout_of(model))
    ids, mask, ends = enc["rm_ids"].copy(), enc["rm_mask"].copy(), enc["rm_step_ends"].copy()
    if side == "left":
        pad = tokenizer_lib.special_ids(tokenizer)["pad"]
        for b in range(len(ids)):
            n = int(mask[b].sum())
            ids[b] = np.concatenate([np.full(MAX_LEN - n, pad), ids[b, :n]])
            mask[b] = np.concatenate([np.zeros(MAX_LEN - n), np.ones(n)])
            ends[b] = np.where(enc["rm_step_mask"][b], ends[b] + MAX_LEN - n, 0)
    return ids, mask, ends, enc["rm_step_mask"]


def _torch_out(model, ids, mask):
    pos = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     position_ids=pos).logits.float().numpy()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax_first(pair):
    e = np.exp(pair - pair.max(-1, keepdims=True))
    return e[..., 0] / e.sum(-1)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model_type,num_labels", [("llama", 1), ("qwen2", 2)])
def test_sequence_classification_orm_matches_transformers(tmp_path, tokenizer, batch_texts, model_type,
                                                          num_labels, side):
    arch = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification"}[model_type]
    hf_model = _hf_folder(tmp_path, tokenizer, arch, model_type, num_labels=num_labels)
    model, params, tok, kind = reward_io.load_reward_model(str(tmp_path))
    assert kind == "orm" and len(tok) == len(tokenizer)
    problems, texts = batch_texts
    ids, mask, _, _ = _inputs(problems, texts, tokenizer, model, side)
    ours = np.asarray(scoring.score_outcome(model, params, jnp.asarray(ids), jnp.asarray(mask)))
    logits = _torch_out(hf_model, ids, mask)  # [B, num_labels], read by transformers at the last non-pad token
    expected = _sigmoid(logits[:, 0]) if num_labels == 1 else _softmax_first(logits[:, ::-1])
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert np.ptp(expected) > 1e-3  # the scores differ between responses


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model_type,num_labels,bias", [("qwen2", 2, True), ("llama", 1, False)])
def test_token_classification_prm_matches_transformers(tmp_path, tokenizer, batch_texts, model_type,
                                                       num_labels, bias, side):
    arch = {"llama": "LlamaForTokenClassification", "qwen2": "Qwen2ForTokenClassification"}[model_type]
    hf_model = _hf_folder(tmp_path, tokenizer, arch, model_type, num_labels=num_labels,
                          token_classification_bias=bias)
    model, params, _, kind = reward_io.load_reward_model(str(tmp_path))
    assert kind == "prm" and hf_reward.layout_of(model).name == "separator"
    problems, texts = batch_texts
    ids, mask, ends, smask = _inputs(problems, texts, tokenizer, model, side)
    ours = np.asarray(scoring.score_steps(model, params, jnp.asarray(ids), jnp.asarray(mask),
                                          jnp.asarray(ends), jnp.asarray(smask)))
    logits = _torch_out(hf_model, ids, mask)  # [B, T, num_labels]
    for b, text in enumerate(texts):
        # TRL's format: the separator after every step; the score is read at the separator token.
        steps = formatting.split_steps(text)
        toks = [tokenizer.decode([int(i)]) for i in ids[b]]
        seps = [t for t in range(MAX_LEN) if mask[b, t] and "\n" in toks[t]]
        seps = [t for t in seps if t > int(np.argmax(mask[b])) + 4][-len(steps):]  # past the prompt
        assert len(seps) == len(steps) == int(smask[b].sum())
        row = logits[b, seps]
        expected = _sigmoid(row[:, 0]) if num_labels == 1 else _softmax_first(row[:, ::-1])
        np.testing.assert_allclose(ours[b, :len(steps)], expected, atol=1e-4)
        assert np.all(ours[b, len(steps):] == 0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model_type,tied", [("llama", False), ("qwen2", True)])
def test_math_shepherd_prm_matches_transformers(tmp_path, tokenizer, batch_texts, model_type, tied, side):
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    hf_model = _hf_folder(tmp_path, tokenizer, arch, model_type, tie_word_embeddings=tied)
    model, params, _, kind = reward_io.load_reward_model(str(tmp_path))
    assert kind == "prm" and hf_reward.layout_of(model) == hf_reward.Layout("step_tag", TAG)
    problems, texts = batch_texts
    ids, mask, ends, smask = _inputs(problems, texts, tokenizer, model, side)
    ours = np.asarray(scoring.score_steps(model, params, jnp.asarray(ids), jnp.asarray(mask),
                                          jnp.asarray(ends), jnp.asarray(smask)))
    logits = _torch_out(hf_model, ids, mask)  # [B, T, vocab]
    # Math-Shepherd's own recipe: softmax over the "+"/"-" logits at every step-tag token.
    # The two label tokens as each is written alone (what Math-Shepherd's
    # `encode("+ -")[1:]` gives with its sentencepiece, which marks both as word starts).
    good, bad = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("+", "-"))
    for b, text in enumerate(texts):
        tags = [t for t in range(MAX_LEN) if mask[b, t] and TAG in tokenizer.decode([int(ids[b, t])])]
        assert len(tags) == len(formatting.split_steps(text)) == int(smask[b].sum())
        expected = _softmax_first(logits[b][tags][:, [good, bad]])
        np.testing.assert_allclose(ours[b, :len(tags)], expected, atol=1e-4)


def test_best_of_n_with_a_public_reward_model_picks_as_transformers(tmp_path, tokenizer):
    hf_model = _hf_folder(tmp_path, tokenizer, "Qwen2ForSequenceClassification", "qwen2", num_labels=2)
    model, params, _, _ = reward_io.load_reward_model(str(tmp_path))
    problems = synthetic.generate(3, split="test", seed=9)
    n = 4
    cands = [(p, formatting.render_solution(p.steps[:k], a)) for p in problems
             for k, a in ((1, p.answer), (2, "7"), (3, p.answer), (2, p.answer))]
    enc = rollout_lib.reward_model_inputs([p for p, _ in cands], [t for _, t in cands], tokenizer, MAX_LEN,
                                          "\n", max_steps=4)
    ours = np.asarray(scorer_lib.score_texts(model, params, "orm", enc)).reshape(len(problems), n)
    theirs = _softmax_first(_torch_out(hf_model, enc["rm_ids"], enc["rm_mask"])[:, ::-1]).reshape(len(problems), n)
    correct = np.array([[a == p.answer for a in (p.answer, "7", p.answer, p.answer)] for p in problems])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert rm_eval.best_of_n(ours, correct) == rm_eval.best_of_n(theirs, correct)
    np.testing.assert_array_equal(np.argmax(ours, 1), np.argmax(theirs, 1))


def test_class_logit_and_layouts_hand_values():
    np.testing.assert_allclose(np.asarray(hf_reward.class_logit(jnp.array([[0.5], [-2.0]]))), [0.5, -2.0])
    two = hf_reward.class_logit(jnp.array([1.0, 3.0]))  # sigmoid(2) = softmax([1, 3])[1]
    assert float(two) == pytest.approx(2.0)
    assert float(jax.nn.sigmoid(two)) == pytest.approx(np.exp(3) / (np.exp(1) + np.exp(3)), rel=1e-6)
    with pytest.raises(ValueError, match="1 or 2 labels"):
        hf_reward.class_logit(jnp.zeros((3,)))
    text = "a = 1\nb = 2\n#### 2"
    assert hf_reward.format_response(text, hf_reward.Layout(), "\n") == (text, "\n")
    assert hf_reward.format_response(text, hf_reward.Layout("separator"), "\n") == ("a = 1\nb = 2\n#### 2\n", "\n")
    assert hf_reward.format_response(text, hf_reward.Layout("step_tag", "ки"), "\n") == (
        "a = 1 ки\nb = 2 ки\n#### 2 ки\n", "ки")


def test_unsupported_public_folders_name_the_architecture(tmp_path, tokenizer):
    import json
    _hf_folder(tmp_path, tokenizer, "LlamaForCausalLM", "llama")
    with pytest.raises(ValueError, match="ppo.rm_step_tag"):
        reward_io.load_reward_model(str(tmp_path), step_tag="not one token at all")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["LlamaForQuestionAnswering"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="LlamaForQuestionAnswering"):
        reward_io.load_reward_model(str(tmp_path))
