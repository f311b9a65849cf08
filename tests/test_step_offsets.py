"""Step ends through character offsets (jaxstep.data.step_offsets) with a sentencepiece
DeBERTa tokenizer (which drops the newline delimiter) and with the tiny BPE tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxstep import config_lib
from jaxstep.data import batching, step_offsets
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.rm import encoding
from jaxstep.rm import labels as labels_lib

SOLUTION = "Dan has 3 - 2 = 1 apples.\nTom has 1 + 8 = 9 apples.\n\nSam has 9 + 3 = 12 apples.\n#### 12"


def test_step_char_ends_hand_values():
    assert step_offsets.step_char_ends("ab\ncd  \n\n e\n") == [1, 4, 10]
    assert step_offsets.step_char_ends("x.\n y", ".\n") == [0, 4]
    assert step_offsets.step_char_ends("  \n") == []
    with pytest.raises(ValueError, match="delimiter"):
        step_offsets.step_char_ends("a", "")


def test_token_of_chars_hand_values():
    # "ab c\nd": tokens "ab" (0,2), " c" (2,4), "\nd" (4,6), and a dropped char at 6.
    offsets = [(0, 2), (2, 4), (4, 6), (6, 6)]
    assert step_offsets.token_of_chars(offsets, [1, 3, 4, 5, 7]) == [0, 1, 2, 2, 2]
    assert step_offsets.token_of_chars([(3, 5)], [1]) == [-1]


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    from deberta_helpers import train_spm
    folder = tmp_path_factory.mktemp("spm")
    (folder / "spm.model").write_bytes(train_spm())
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    return tokenizer_lib.load_tokenizer(str(folder))


def _problems(n=2):
    c = config_lib.base_config("test_step_offsets", "prm")
    c.data.num_train = 20
    from jaxstep.data import sources
    return sources.load_problems(c, "synthetic", "train")[:n]


def _last_chars(tokenizer, ids, ends):
    return [tokenizer.convert_ids_to_tokens(int(ids[e]))[-1] for e in ends]


def test_sentencepiece_deberta_steps_end_at_their_last_character(spm_tokenizer):
    tok = spm_tokenizer
    assert tok.is_fast and "\n" not in tok.decode(tok(SOLUTION, add_special_tokens=False)["input_ids"])
    ids, ends = step_offsets.solution_step_ends(tok, [SOLUTION])
    # Each of the four steps ends at the token of its last character: ".", ".", ".", "2".
    assert len(ends[0]) == 4 and _last_chars(tok, ids[0], ends[0]) == [".", ".", ".", "2"]
    # The delimiter method sees no newline in the tokens (it was folded into the next
    # step's first token, "▁Tom" spans "\nTom"): one step for the whole solution.
    assert batching.step_ends_from_tokens(ids[0], tok, "\n") == [len(ids[0]) - 1]
    enc = tok(SOLUTION, add_special_tokens=False, return_offsets_mapping=True)
    tom = enc["input_ids"].index(tok.convert_tokens_to_ids("▁Tom"))
    assert SOLUTION[slice(*enc["offset_mapping"][tom])] == "\nTom" and ends[0][0] == tom - 1
    # encode_sft_offsets: [CLS] prompt solution [SEP], ends shifted by the prompt.
    problems = _problems(2)
    enc = step_offsets.encode_sft_offsets(problems, tok, 128, solutions=[SOLUTION, "Tom has 2.\n#### 2"])
    assert enc["ids"][0, 0] == tok.cls_token_id and enc["ids"][0, enc["lengths"][0] - 1] == tok.sep_token_id
    np.testing.assert_array_equal(enc["step_ends"][0, :4], np.array(ends[0]) + enc["prompt_lens"][0])
    assert enc["num_steps"].tolist() == [4, 2] and enc["step_mask"].sum(1).tolist() == [4, 2]
    assert _last_chars(tok, enc["ids"][1], enc["step_ends"][1, :2]) == [".", "2"]
    # Truncation drops the steps that were cut, as encode_sft does.
    cut = step_offsets.encode_sft_offsets(problems[:1], tok, int(enc["step_ends"][0, 1]) + 1, solutions=[SOLUTION])
    assert cut["truncated"][0] and cut["num_steps"][0] == 2


def test_labelled_records_and_pairs_align_with_offsets(spm_tokenizer):
    problem = _problems(1)[0]
    steps = ["Dan has 3 - 2 = 1 apples.", "Tom has 1 + 8 = 9 apples.", "#### 9"]
    record = labels_lib.StepLabels(problem=problem, steps=tuple(steps), labels=(1.0, 0.0, 0.0), correct=False)
    enc = encoding.encode_labeled([record], spm_tokenizer, 128, kind="prm", step_positions="offsets")
    assert not enc["misaligned"][0] and enc["label_mask"][0].sum() == 3
    assert _last_chars(spm_tokenizer, enc["ids"][0], enc["step_ends"][0, :3]) == [".", ".", "9"]
    with pytest.raises(ValueError, match="step_positions"):
        encoding.encode_labeled([record], spm_tokenizer, 128, kind="prm", step_positions="newline")


def test_bpe_offsets_end_at_the_last_character_next_to_the_delimiter_token():
    c = config_lib.base_config("test_step_offsets", "prm")
    tok = tokenizer_lib.resolve_tokenizer(c)
    ids, ends = step_offsets.solution_step_ends(tok, [SOLUTION])
    by_delimiter = batching.step_ends_from_tokens(ids[0], tok, "\n")
    assert len(ends[0]) == len(by_delimiter) == 4
    for e, d in zip(ends[0], by_delimiter):
        assert tok.decode([int(ids[0][e])]).rstrip().endswith((".", "2"))
        # The delimiter's token is the same token (".\n" merged) or the next one.
        assert d in (e, e + 1)
