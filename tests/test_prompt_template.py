"""`data.prompt_template` ("plain" / "chat") and the count of prompts cut to max_prompt_len."""
from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from jaxstep import config_lib, generation, models
from jaxstep.config_lib.sections import base_config
from jaxstep.data import batching, formatting, synthetic, tokenizer as tokenizer_lib
from jaxstep.evaluation import policy
from jaxstep.rl import rollout as rollout_lib
from jaxstep.rm import encoding
from jaxstep.rm import labels as labels_lib

CHAT_TEMPLATE = ("{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.build_tokenizer(96, num_problems=200)


@pytest.fixture(scope="module")
def problems():
    return synthetic.generate(3, split="test", seed=0)


def test_plain_is_the_default_and_unchanged(tok, problems):
    assert base_config("t", "eval").data.prompt_template == "plain"
    assert formatting.prompt_template("plain") == formatting.PROMPT_TEMPLATE
    assert formatting.format_prompts(problems) == [formatting.format_prompt(p) for p in problems]
    bos = tokenizer_lib.special_ids(tok)["bos"]
    plain = batching.encode_prompts(problems, tok, 256, template=formatting.prompt_template("plain"))
    default = batching.encode_prompts(problems, tok, 256)
    for k in default:
        np.testing.assert_array_equal(plain[k], default[k])
    expected = [bos] + tok(formatting.format_prompt(problems[0]), add_special_tokens=False)["input_ids"]
    row = default["ids"][0][default["mask"][0]].tolist()
    assert row == expected


def test_chat_template_uses_the_tokenizers_template(tok, problems):
    chat_tok = tokenizer_lib.as_hf(tok.backend_tokenizer)
    chat_tok.chat_template = CHAT_TEMPLATE
    text = formatting.chat_prompt(problems[0], chat_tok)
    assert text == f"<|user|> {problems[0].question}\n<|assistant|>\n"
    enc = batching.encode_prompts(problems, chat_tok, 128, template=formatting.CHAT)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert enc["ids"][0][enc["mask"][0]].tolist() == [tok.bos_token_id] + ids
    sft = batching.encode_sft(problems, chat_tok, 256, template=formatting.CHAT)
    assert sft["prompt_lens"][0] == 1 + len(ids)
    with pytest.raises(ValueError, match="no chat template"):
        batching.encode_prompts(problems, tok, 64, template=formatting.CHAT)


def test_prompt_template_is_validated():
    c = base_config("t", "eval")
    c.data.prompt_template = "fancy"
    with pytest.raises(ValueError, match="data.prompt_template='fancy'"):
        config_lib.validate(c)
    c.data.prompt_template = "chat"
    assert formatting.config_template(c) == formatting.CHAT


def test_truncated_prompts_are_counted(tok, problems):
    enc = batching.encode_prompts(problems, tok, 8)
    assert int(enc["truncated"].sum()) == 3 and enc["ids"].shape[1] == 8
    assert not batching.encode_prompts(problems, tok, 128)["truncated"].any()
    # The eval path: Decoded -> rows -> summary["sets"][source]["prompts_truncated"].
    config = models.tiny(len(tok), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=48)
    model, params = models.Decoder(config), models.init_params(config, jax.random.key(0))
    decoded = [generation.decode_problems(model, params, tok, problems, max_prompt_len=n,
                                          max_new_tokens=2, batch_size=8, progress=False)
               for n in (8, 128)]
    assert [sum(d.prompt_truncated for d in ds) for ds in decoded] == [3, 0]
    for ds, count in zip(decoded, (3, 0)):
        numbers = policy.summarize(policy.make_rows(ds))
        assert numbers["sets"][problems[0].source]["prompts_truncated"] == count


def _chat_tok(tok):
    chat_tok = tokenizer_lib.as_hf(tok.backend_tokenizer)
    chat_tok.chat_template = CHAT_TEMPLATE
    return chat_tok


def test_reward_model_encodings_use_the_policys_template(tok, problems):
    """encode_labeled / encode_pairs (the reward-model stage) write the prompt with the
    template they are given: `[bos]` + the chat text's tokens, and the step ends move
    by exactly the difference of the two prompts' lengths."""
    chat_tok = _chat_tok(tok)
    records = [labels_lib.StepLabels(p, ("a = 2 + 3", "#### 5"), (1.0, 0.0), False) for p in problems]
    chat = encoding.encode_labeled(records, chat_tok, 256, kind="prm", template=formatting.CHAT, buckets=None)
    plain = encoding.encode_labeled(records, chat_tok, 256, kind="prm", buckets=None)
    for b, p in enumerate(problems):
        chat_ids = tok(formatting.chat_prompt(p, chat_tok), add_special_tokens=False)["input_ids"]
        plain_ids = tok(formatting.format_prompt(p), add_special_tokens=False)["input_ids"]
        assert chat["ids"][b, :1 + len(chat_ids)].tolist() == [tok.bos_token_id] + chat_ids
        assert plain["ids"][b, :1 + len(plain_ids)].tolist() == [tok.bos_token_id] + plain_ids
        shift = len(chat_ids) - len(plain_ids)
        assert shift != 0
        assert chat["step_mask"][b].tolist() == plain["step_mask"][b].tolist() == [True, True, False, False]
        assert (chat["step_ends"][b, :2] - plain["step_ends"][b, :2]).tolist() == [shift, shift]
    assert chat["labels"].tolist() == plain["labels"].tolist()
    pairs = [labels_lib.StepPreference(p, ("a = 2 + 3",), "#### 5", "#### 6") for p in problems]
    enc = encoding.encode_pairs(pairs, chat_tok, 256, template=formatting.CHAT, buckets=None)
    chat_ids = tok(formatting.chat_prompt(problems[0], chat_tok), add_special_tokens=False)["input_ids"]
    for side in (0, 1):
        assert enc["ids"][0, side, :1 + len(chat_ids)].tolist() == [tok.bos_token_id] + chat_ids


def test_retokenizing_reward_model_sees_the_policys_template(tok, problems):
    """The PPO stage's re-tokenization for a reward model with another tokenizer uses the
    policy's template when the reward model's tokenizer has a chat template, else plain."""
    chat_tok = _chat_tok(tok)
    assert rollout_lib.reward_model_template(formatting.CHAT, chat_tok) == formatting.CHAT
    assert rollout_lib.reward_model_template(formatting.CHAT, tok) == formatting.PROMPT_TEMPLATE
    assert rollout_lib.reward_model_template(formatting.PROMPT_TEMPLATE, chat_tok) == formatting.PROMPT_TEMPLATE
    rollout = types.SimpleNamespace(problems=list(problems), texts=["a = 2 + 3\n#### 5"] * len(problems),
                                    step_ends=np.zeros((len(problems), 4), np.int32))
    out = rollout_lib.reward_model_batch(rollout, chat_tok, 256, "\n", template=formatting.CHAT)
    for b, p in enumerate(problems):
        chat_ids = tok(formatting.chat_prompt(p, chat_tok), add_special_tokens=False)["input_ids"]
        assert out["rm_ids"][b, :1 + len(chat_ids)].tolist() == [tok.bos_token_id] + chat_ids
    plain = rollout_lib.reward_model_batch(rollout, chat_tok, 256, "\n")  # default: plain, unchanged
    plain_ids = tok(formatting.format_prompt(problems[0]), add_special_tokens=False)["input_ids"]
    assert plain["rm_ids"][0, :1 + len(plain_ids)].tolist() == [tok.bos_token_id] + plain_ids
