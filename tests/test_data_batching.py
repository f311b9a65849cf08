"""Tokenizer, prompt/SFT encoding, step boundaries in tokens, and the grain loader."""
import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jaxstep.data import batching, formatting, synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data import step_checks


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.build_tokenizer(256)


@pytest.fixture(scope="module")
def problems():
    return synthetic.generate(64, seed=11)


@pytest.fixture(scope="module")
def byte_level_tok():
    """A GPT-2/Qwen-style byte-level BPE (no network): merges like ".\\n\\n" exist."""
    texts = [formatting.render_solution(p.steps, p.answer, "\n\n") for p in synthetic.generate(300, seed=2)]
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


# ---------------------------------------------------------------- tokenizer

def test_tiny_tokenizer_properties(tok, problems):
    assert len(tok) == 256
    assert [tok.convert_tokens_to_ids(t) for t in tokenizer_lib.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    for p in problems:
        text = formatting.format_prompt(p) + formatting.reference_solution(p)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
        for piece in tok.convert_ids_to_tokens(ids):
            if any(ch.isdigit() for ch in piece):
                assert len(piece.lstrip("\u2581")) == 1, piece  # one digit per token
            if "\n" in piece:
                assert piece == "\n"
    again = tokenizer_lib.build_tokenizer(256)
    assert again.get_vocab() == tok.get_vocab()


def test_tokenizer_save_and_load_in_transformers(tok, tmp_path):
    folder = tokenizer_lib.save_tokenizer(tok, tmp_path / "tok")
    assert (tmp_path / "tok" / tokenizer_lib.TOKENIZER_FILE).is_file()
    text = "Question: Ann has 12 pens.\nAnswer:\nAnn has 12 + 3 = 15 pens.\n#### 15"
    expected = tok(text, add_special_tokens=False)["input_ids"]
    for loaded in (AutoTokenizer.from_pretrained(folder),
                   tokenizer_lib.load_tokenizer(folder),
                   tokenizer_lib.load_tokenizer(tmp_path / "tok" / tokenizer_lib.TOKENIZER_FILE)):
        assert loaded(text, add_special_tokens=False)["input_ids"] == expected
        assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    with pytest.raises(FileNotFoundError):
        tokenizer_lib.load_tokenizer(tmp_path / "missing")
    # Saved next to an exported model: config.json must not change how it tokenizes.
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    beside_model = tokenizer_lib.load_tokenizer(folder)
    assert beside_model(text, add_special_tokens=False)["input_ids"] == expected
    assert beside_model.decode(expected) == text


# ---------------------------------------------------------------- encoding

def test_encode_prompts_left_pads(tok, problems):
    out = batching.encode_prompts(problems[:8], tok, 80)
    assert out["ids"].shape == (8, 80) and out["ids"].dtype == np.int32 and out["mask"].dtype == bool
    assert out["mask"][:, -1].all()
    for b, p in enumerate(problems[:8]):
        n = out["lengths"][b]
        assert not out["mask"][b, :80 - n].any() and (out["ids"][b, :80 - n] == tok.pad_token_id).all()
        assert out["ids"][b, 80 - n] == tok.bos_token_id
        assert tok.decode(out["ids"][b, 80 - n + 1:]) == formatting.format_prompt(p)
    short = batching.encode_prompts(problems[:2], tok, 16)
    assert short["truncated"].all() and short["mask"].all()
    tail = tok(formatting.format_prompt(problems[0]), add_special_tokens=False)["input_ids"][-16:]
    assert short["ids"][0].tolist() == tail
    auto = batching.encode_prompts(problems[:8], tok, 128, buckets="auto")
    assert auto["ids"].shape[1] in batching.auto_buckets(128)


def test_encode_sft_masks_and_step_ends(tok, problems):
    out = batching.encode_sft(problems[:16], tok, 192)
    assert out["ids"].shape[1] in batching.auto_buckets(192)
    assert not out["truncated"].any()
    for b, p in enumerate(problems[:16]):
        ids, loss = out["ids"][b], out["loss_mask"][b]
        solution = formatting.reference_solution(p)
        assert tok.decode(ids[loss], skip_special_tokens=False) == solution + tokenizer_lib.EOS
        assert ids[0] == tok.bos_token_id and out["prompt_lens"][b] == np.argmax(loss)
        assert out["mask"][b].sum() == out["lengths"][b]
        ends = out["step_ends"][b][out["step_mask"][b]]
        assert len(ends) == out["num_steps"][b] == len(p.steps) + 1
        for k, e in enumerate(ends):
            upto = tok.decode(ids[out["prompt_lens"][b]:e + 1])
            if k < len(p.steps):
                assert upto == "\n".join(p.steps[:k + 1]) + "\n"
            else:
                assert upto == solution
    assert out["step_ends"].shape[1] % 4 == 0


def test_encode_sft_truncation_and_custom_solutions(tok, problems):
    p = problems[0]
    full = batching.encode_sft([p], tok, 256, buckets=None)
    n = int(full["lengths"][0])
    cut = batching.encode_sft([p], tok, n - 3, buckets=None)
    assert cut["truncated"][0] and cut["ids"].shape == (1, n - 3)
    assert (cut["step_ends"][0][cut["step_mask"][0]] < n - 3).all()
    assert cut["num_steps"][0] < full["num_steps"][0]
    bad = step_checks.corrupt(p, 0, kind="arithmetic")
    text = formatting.render_solution(bad.steps, bad.answer)
    custom = batching.encode_sft([p], tok, 256, solutions=[text])
    assert tok.decode(custom["ids"][0][custom["loss_mask"][0]], skip_special_tokens=True) == text
    capped = batching.encode_sft(problems[:4], tok, 256, max_steps=2)
    assert capped["step_ends"].shape == (4, 2) and capped["step_mask"].all()
    assert (capped["num_steps"] > 2).all()


def test_step_ends_in_generated_responses(tok):
    text = "Ann has 5 + 3 = 8 apples.\n\nAnn has 8 - 2 = 6 apples.\n#### 6"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    garbage = ids + [tok.eos_token_id] + ids[:5] + [tok.pad_token_id] * 3
    ends = batching.step_ends_from_tokens(garbage, tok)
    assert ends == batching.step_ends_from_tokens(ids, tok)
    assert len(ends) == 3 == len(formatting.split_steps(text))
    assert tok.decode(ids[:ends[0] + 1]).endswith("apples.\n")
    assert ends[-1] == len(ids) - 1
    assert batching.step_ends_from_tokens([], tok) == []
    assert batching.step_ends_from_tokens(tok("\n\n", add_special_tokens=False)["input_ids"], tok) == []
    rows = np.array([garbage, garbage[:len(ids) - 4] + [tok.pad_token_id] * (len(garbage) - len(ids) + 4)])
    out = batching.batch_step_ends(rows, tok, offset=10)
    assert out["num_steps"].tolist() == [3, 2]
    assert out["step_ends"][0, :3].tolist() == [e + 10 for e in ends]
    assert out["step_mask"].tolist()[1][:3] == [True, True, False]
    capped = batching.batch_step_ends(rows, tok, max_steps=1)
    assert capped["step_ends"].shape == (2, 1) and capped["num_steps"].tolist() == [3, 2]


def test_step_ends_with_merged_delimiter_tokens(byte_level_tok):
    tok = byte_level_tok
    for p in synthetic.generate(20, seed=9):
        text = formatting.render_solution(p.steps, p.answer, "\n\n")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        assert any(len(t) > 2 and "\u010a" in t for t in pieces)  # "\n" merged with other bytes
        ends = batching.step_ends_from_tokens(ids, tok, "\n\n")
        assert len(ends) == len(p.steps) + 1
        for k, e in enumerate(ends[:-1]):
            prefix = tok.decode(ids[:e + 1])
            body = "\n\n".join(p.steps[:k + 1]) + "\n\n"
            assert prefix.startswith(body) and not tok.decode(ids[:e]).startswith(body)
        assert ends[-1] == len(ids) - 1


def test_bucket_length():
    assert batching.auto_buckets(96) == (24, 48, 72, 96)
    assert batching.bucket_length(30, 96) == 48
    assert batching.bucket_length(97, 96) == 96
    assert batching.bucket_length(5, 96, None) == 96
    assert batching.bucket_length(40, 96, (32, 64)) == 64


# ---------------------------------------------------------------- loader

def _ids(batch):
    return [p.id for p in batch]


def test_loader_resumes_with_exactly_the_next_batch(problems):
    it = batching.make_loader(problems, 5, seed=3, shard_index=0, shard_count=1, transform=_ids)
    seen = [next(it) for _ in range(17)]  # crosses an epoch boundary (64 / 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(4)]
    fresh = batching.make_loader(problems, 5, seed=3, shard_index=0, shard_count=1, transform=_ids)
    fresh.set_state(state)
    assert [next(fresh) for _ in range(4)] == expected
    replay = batching.make_loader(problems, 5, seed=3, shard_index=0, shard_count=1, transform=_ids)
    assert [next(replay) for _ in range(17)] == seen
    epoch1 = sum(seen[:12], [])
    assert len(set(epoch1)) == 60  # no repeats inside an epoch
    other = batching.make_loader(problems, 5, seed=4, shard_index=0, shard_count=1, transform=_ids)
    assert next(other) != seen[0]


def test_loader_shards_are_disjoint_and_cover(problems):
    shards = []
    for index in range(4):
        it = batching.make_loader(problems, 4, seed=0, shard_index=index, shard_count=4,
                                  num_epochs=1, transform=_ids)
        shards.append(sum(list(it), []))
    assert all(len(s) == 16 for s in shards)
    flat = sum(shards, [])
    assert sorted(flat) == sorted(p.id for p in problems)
    epochs = batching.make_loader(problems, 8, seed=0, shard_index=0, shard_count=1, num_epochs=2, transform=_ids)
    batches = list(epochs)
    assert len(batches) == 16
    assert sum(batches[:8], []) != sum(batches[8:], [])  # reshuffled each epoch
    assert sorted(sum(batches[:8], [])) == sorted(sum(batches[8:], []))


def test_loader_with_encoding_transform(tok, problems):
    it = batching.make_loader(problems, 8, seed=0, shard_index=0, shard_count=1,
                              transform=lambda b: batching.encode_sft(b, tok, 160))
    batch = next(it)
    assert batch["ids"].shape[0] == 8 and batch["ids"].dtype == np.int32
    with pytest.raises(ValueError):
        batching.make_loader(problems, 8, shard_index=2, shard_count=2)
