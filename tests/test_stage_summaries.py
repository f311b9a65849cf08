"""What every stage's summary and metric lines share: the reuse prologue
(`jaxstep.workdir.reuse_if_done`), `prompts_truncated` (prompts longer than
data.max_prompt_len, `jaxstep.data.truncation`), and undefined evaluation numbers written
as null and named with a reason instead of as NaN (`jaxstep.metrics.mark_undefined`)."""
import json
import logging
import math
import os

import pytest

from jaxstep import config_lib
from jaxstep import workdir as workdir_lib
from jaxstep.data import formatting, sources, synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.truncation import count_truncated_prompts, distinct_prompts
from jaxstep.metrics import MetricWriter, mark_undefined, read_metrics
from jaxstep.stages import sft as stage_sft
from run_helpers import long_prompts, tiny_model


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.build_tokenizer(96, num_problems=200)


def test_reuse_if_done_returns_the_summary_once_written(tmp_path, caplog):
    workdir = str(tmp_path / "stage")
    config = config_lib.base_config("t", "sft")
    assert workdir_lib.reuse_if_done(workdir, "sft", config) is None  # nothing there: run the stage
    written = workdir_lib.write_summary(workdir, {"stage": "sft", "steps": 3, "loss": float("nan")})
    with caplog.at_level(logging.INFO, logger="jaxstep.workdir"):
        assert workdir_lib.reuse_if_done(workdir, "sft", config) == written == {"stage": "sft", "steps": 3,
                                                                        "loss": "nan"}
    assert f"sft: {workdir} is done; reusing it." in caplog.text


def test_mark_undefined_by_hand(tmp_path):
    values = {"auc": float("nan"), "acc": 0.5, "big": float("inf"), "n": 3, "name": "x"}
    out = mark_undefined(values, "one class")
    assert out == {"auc": None, "acc": 0.5, "big": float("inf"), "n": 3, "name": "x",
                   "undefined": {"auc": "one class"}}
    assert mark_undefined({"acc": 0.25}, "r") == {"acc": 0.25}  # nothing undefined: no entry
    with MetricWriter(str(tmp_path), tensorboard=False, enabled=True) as writer:
        writer.write(7, mark_undefined({"eval_auc": float("nan"), "eval_acc": 1.0}, "one class"))
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "nan" not in line.lower()
    assert json.loads(line) == {"step": 7, "eval_auc": None, "eval_acc": 1.0,
                                "undefined": {"eval_auc": "one class"}}


def test_count_truncated_prompts_against_the_tokenizer(tok):
    problems = synthetic.generate(12, split="test", seed=3)
    bos = 1 if tok.bos_token_id is not None else 0
    lengths = sorted({bos + len(tok(formatting.format_prompt(p), add_special_tokens=False)["input_ids"])
                      for p in problems})
    assert len(lengths) >= 3  # prompts of several lengths: a cut inside them means something
    cut = lengths[len(lengths) // 2]  # prompts of exactly `cut` tokens fit
    want = long_prompts(problems, tok, cut)
    assert 0 < want < len(problems)
    assert count_truncated_prompts(problems, tok, cut) == want
    assert count_truncated_prompts(problems, tok, cut, chunk=5) == want  # chunked the same
    assert count_truncated_prompts(problems + problems[:4], tok, cut) == want  # repeats count once
    assert count_truncated_prompts(problems, tok, lengths[-1]) == 0
    assert count_truncated_prompts(problems, tok, lengths[0] - 1) == len(problems)
    assert count_truncated_prompts([], tok, 8) == 0
    assert distinct_prompts(["a", "b", "a"]) == ["a", "b"]


def test_sft_summary_counts_prompts_longer_than_max_prompt_len(tmp_path):
    """The SFT summary's prompts_truncated: the training and eval prompts a sampler would
    cut at data.max_prompt_len (here set between the prompts' lengths)."""
    c = config_lib.base_config("test_truncated", "sft")
    tiny_model(c)
    c.data.num_train = 32
    c.data.max_response_len = 24
    c.sft.steps, c.sft.batch_size, c.sft.log_every, c.sft.eval_every, c.sft.eval_limit = 1, 8, 1, 0, 4
    tokenizer = tokenizer_lib.resolve_tokenizer(c)
    problems = [*sources.load_problems(c, c.data.train_sources, "train"), *sources.eval_problems(c, 4)]
    bos = 1 if tokenizer.bos_token_id is not None else 0
    lengths = sorted(bos + len(tokenizer(formatting.format_prompt(p), add_special_tokens=False)["input_ids"])
                     for p in distinct_prompts(problems))
    c.data.max_prompt_len = lengths[len(lengths) // 2]
    want = long_prompts(problems, tokenizer, c.data.max_prompt_len)
    assert 0 < want < len(lengths)
    summary = stage_sft.run(c, str(tmp_path / "sft"))
    assert summary["prompts_truncated"] == want
    rows = read_metrics(os.path.join(tmp_path, "sft", "metrics.jsonl"))
    assert rows and all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
