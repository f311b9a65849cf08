"""Reward models: losses, step-end alignment, scoring, export/load, ORM and PRM stages."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import models
from jaxstep.config_lib import base_config
from jaxstep.data import formatting
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.problem import Problem
from jaxstep.rewards import scoring
from jaxstep.models.logprobs import token_logprobs
from jaxstep.rm import labels as labels_lib
from jaxstep.models import reward_io
from jaxstep.rm import encoding as rm_encoding
from jaxstep.rm import evaluation as rm_eval
from jaxstep.rewards import losses as rm_losses
from jaxstep.stages import reward_model as stage_rm
from jaxstep.rm import label_files


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_lib.build_tokenizer(256, num_problems=300)


def _tiny(tokenizer, **kw):
    ids = tokenizer_lib.special_ids(tokenizer)
    cfg = models.tiny(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, intermediate_size=64, bos_token_id=ids["bos"],
                      eos_token_id=ids["eos"], pad_token_id=ids["pad"], **kw)
    decoder = models.Decoder(cfg)
    return decoder, models.init_params(decoder, jax.random.key(0))


def _softplus(x):
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- losses

def test_bce_loss_matches_hand_computed_values():
    logits = jnp.array([[0.0, 2.0], [-1.0, 5.0]])
    labels = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    mask = jnp.array([[True, True], [True, False]])
    loss, aux = rm_losses.bce_loss(logits, labels, mask)
    # BCE(x, y) = -y log s(x) - (1-y) log(1-s(x)) = softplus(x) - x*y
    expected = (math.log(2.0) + _softplus(2.0) + (_softplus(-1.0) + 0.5)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # accuracy: (0 > 0) == (1 >= .5)? no; (2 > 0) == (0 >= .5)? no; (-1 > 0) == (.5 >= .5)? no
    assert float(aux["accuracy"]) == pytest.approx(0.0)
    assert float(aux["targets"]) == 3


def test_bt_loss_matches_hand_computed_values():
    chosen = jnp.array([1.0, 0.0, 2.0])
    rejected = jnp.array([0.0, 1.0, -7.0])
    mask = jnp.array([True, True, False])
    loss, aux = rm_losses.bt_loss(chosen, rejected, mask)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2  # -log s(1), -log s(-1)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(aux["accuracy"]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- alignment

def test_labels_land_on_exactly_the_step_end_tokens(tokenizer):
    problem = Problem("Ann has 5 apples. Ann buys 3 more. How many apples does Ann have now?",
                      ("Ann has 5 + 3 = 8 apples.",), "8", "synthetic", 1, "chain", "t/0")
    steps = ("Ann has 5 + 3 = 8 apples.", "Ann has 8 * 2 = 16 apples.", "#### 16")
    labels = (1.0, 0.0, 0.0)
    record = labels_lib.StepLabels(problem, steps, labels, False)
    # Token boundaries computed independently: the tiny tokenizer never merges across "\n",
    # so the sequence is bos + prompt + step0 + "\n" + step1 + "\n" + step2 + eos.
    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    newline = encode("\n")
    assert len(newline) == 1
    pos = 1 + len(encode(formatting.format_prompt(problem)))
    expected = []
    for k, step in enumerate(steps):
        pos += len(encode(step))
        if k < len(steps) - 1:
            expected.append(pos)  # the "\n" closing the step
            pos += 1
        else:
            expected.append(pos - 1)  # the last token of "#### 16"
    enc = rm_encoding.encode_labeled([record], tokenizer, 128, kind="prm")
    n = len(steps)
    assert enc["step_ends"][0, :n].tolist() == expected
    assert enc["step_mask"][0].tolist() == [True] * n + [False] * (enc["step_mask"].shape[1] - n)
    assert enc["label_mask"][0, :n].all() and not enc["label_mask"][0, n:].any()
    assert enc["labels"][0, :n].tolist() == list(labels)
    ids = enc["ids"][0]
    assert ids[expected[0]] == newline[0] and ids[expected[1]] == newline[0]
    assert tokenizer.decode([int(ids[expected[2]])]).strip() == "6"

    # The loss reads the logits at exactly those positions.
    decoder, params = _tiny(tokenizer)
    model, rm_params, _ = reward_io.reward_model_from_generator(decoder, params, jax.random.key(1))
    batch = {k: jnp.asarray(v) for k, v in enc.items()}
    loss, _ = jax.jit(lambda p, b: rm_losses.batch_loss(model, p, b, "bce"))(rm_params, batch)
    logits = np.asarray(jax.jit(model.apply)({"params": rm_params}, batch["ids"], attention_mask=batch["mask"]))[0]
    manual = np.mean([_softplus(logits[e]) - logits[e] * y for e, y in zip(expected, labels)])
    assert float(loss) == pytest.approx(manual, rel=1e-5)

    # The joint LM loss targets the tokens of the correct step only (step 0 and its "\n").
    step0 = tokenizer.decode([int(i) for i in ids[enc["lm_mask"][0]]])
    assert step0 == " " + steps[0] + "\n" or step0 == steps[0] + "\n", step0
    lm_model, lm_params, _ = reward_io.reward_model_from_generator(
        decoder, params, jax.random.key(1), reward_io.boundary_token_ids(tokenizer, "\n"))
    joint, aux = jax.jit(lambda p, b: rm_losses.batch_loss(lm_model, p, b, "bce", 0.5))(lm_params, batch)
    bce, _ = jax.jit(lambda p, b: rm_losses.batch_loss(lm_model, p, b, "bce"))(lm_params, batch)
    lm_logits = decoder.apply({"params": params}, batch["ids"])
    token_lp = np.asarray(token_logprobs(lm_logits, batch["ids"]))[0]
    manual_lm = -token_lp[enc["lm_mask"][0]].mean()
    assert float(aux["lm_loss"]) == pytest.approx(manual_lm, rel=1e-5)
    assert float(joint) == pytest.approx(float(bce) + 0.5 * manual_lm, rel=1e-5)

    # ORM: one target, the last real token (the EOS).
    orm = rm_encoding.encode_labeled([record], tokenizer, 128, kind="orm")
    last = int(enc["mask"][0].sum()) - 1
    assert orm["step_ends"].tolist() == [[last]] and orm["labels"].tolist() == [[0.0]]
    assert ids[last] == tokenizer.eos_token_id


def test_scoring_gathers_step_ends_with_an_offset_and_the_last_token(tokenizer):
    decoder, params = _tiny(tokenizer)
    model, rm_params, _ = reward_io.reward_model_from_generator(decoder, params, jax.random.key(3))
    # Left-padded prompts (P = 6) followed by right-padded responses (R = 5).
    ids = jnp.array([[0, 0, 1, 9, 10, 11, 20, 21, 22, 2, 0],
                     [1, 9, 10, 11, 12, 13, 20, 21, 0, 0, 0]], jnp.int32)
    mask = ids != 0
    step_ends = jnp.array([[0, 2, 0], [1, 0, 0]], jnp.int32)  # relative to the response
    step_mask = jnp.array([[True, True, False], [True, False, False]])
    logits = np.asarray(jax.jit(model.apply)({"params": rm_params}, ids, attention_mask=mask))
    jitted = jax.jit(lambda p, ids, mask, ends, smask, offset: scoring.score(
        model, p, "prm", ids, mask, step_ends=ends, step_mask=smask, offset=offset))
    got = np.asarray(jitted(rm_params, ids, mask, step_ends, step_mask, 6))
    want = 1 / (1 + np.exp(-np.array([[logits[0, 6], logits[0, 8], 0], [logits[1, 7], 0, 0]])))
    want[0, 2] = want[1, 1] = want[1, 2] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    raw = np.asarray(jax.jit(lambda p: scoring.score_steps(
        model, p, ids, mask, step_ends, step_mask, offset=jnp.array([6, 6]), probabilities=False))(rm_params))
    assert raw[0, 1] == pytest.approx(logits[0, 8], rel=1e-5)
    outcome = np.asarray(jax.jit(lambda p: scoring.score_outcome(model, p, ids, mask, probabilities=False))(rm_params))
    np.testing.assert_allclose(outcome, [logits[0, 9], logits[1, 7]], rtol=1e-5)
    assert scoring.last_token_index(mask).tolist() == [9, 7]


def test_score_records_fixes_the_step_axis_and_keeps_the_scores(tokenizer, monkeypatch):
    """PRM scoring of records with 1 to 9 steps in two batches (the second at most 5 steps):
    every batch has the same step axis (`step_slots`: 12), so the scorer compiles once per
    length bucket; a record's scores equal those of scoring it alone."""
    decoder, params = _tiny(tokenizer)
    model, rm_params, _ = reward_io.reward_model_from_generator(decoder, params, jax.random.key(3))
    problem = Problem("What is 2 + 3?", ("2 + 3 = 5",), "5", "synthetic", 1, "chain", "t/1")
    records = [labels_lib.StepLabels(problem, tuple(f"step {j}: {j} + 1 = {j + 1}" for j in range(n)),
                                     (1.0,) * n, True)
               for n in (1, 9, 2, 3, 1, 2, 3, 4, 2, 5, 1, 3, 2, 4, 1, 5)]
    shapes = []
    real = rm_eval.placement.shard_batch
    monkeypatch.setattr(rm_eval.placement, "shard_batch",
                        lambda batch, mesh: shapes.append(batch["ends"].shape) or real(batch, mesh))
    together = rm_eval.score_records(model, rm_params, "prm", records, tokenizer, max_len=128, batch_size=8)
    assert len(shapes) == 2 and {s[1] for s in shapes} == {rm_encoding.step_slots(records)} == {12}
    for record, scores in [(records[i], together[i]) for i in (0, 1, 9)]:
        alone = rm_eval.score_records(model, rm_params, "prm", [record], tokenizer, max_len=128, batch_size=8)[0]
        assert scores.shape == (len(record.steps),) and not np.isnan(scores).any()
        np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("tied", [True, False])
def test_save_and_load_reward_model_round_trip(tmp_path, tokenizer, tied):
    decoder, params = _tiny(tokenizer, tie_word_embeddings=tied)
    model, rm_params, lm_head = reward_io.reward_model_from_generator(decoder, params, jax.random.key(4))
    rm_params["score"]["bias"] = jnp.array([0.25])
    assert (lm_head is None) == tied
    path = str(tmp_path / "export")
    reward_io.save_reward_model(path, model, rm_params, tokenizer, "prm", lm_head=lm_head,
                             metadata={"labels": "exact"})
    for name in ("config.json", "model.safetensors", "tokenizer.json", "score.safetensors",
                 "reward_model.json"):
        assert os.path.isfile(os.path.join(path, name)), name
    info = json.load(open(os.path.join(path, "reward_model.json")))
    assert info["kind"] == "prm" and info["labels"] == "exact"
    loaded, loaded_params, loaded_tok, kind = reward_io.load_reward_model(path)
    assert kind == "prm" and len(loaded_tok) == len(tokenizer)
    ids = jnp.array([[1, 30, 31, 32, 2]], jnp.int32)
    apply = jax.jit(model.apply)  # same architecture: one compiled function for both
    assert loaded.config == model.config
    np.testing.assert_allclose(np.asarray(apply({"params": loaded_params}, ids)),
                               np.asarray(apply({"params": rm_params}, ids)), rtol=1e-6, atol=1e-6)
    # The backbone folder is still a causal LM with the generator's (untouched) head.
    from jaxstep.models import hf
    _, lm_params = hf.load(path)
    if not tied:
        np.testing.assert_array_equal(np.asarray(lm_params["lm_head"]), np.asarray(lm_head))
    with pytest.raises(FileNotFoundError, match="reward_model.json"):
        reward_io.load_reward_model(str(tmp_path))


def test_segment_loglik_matches_a_python_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 7, 5)).astype(np.float32)
    ids = np.array([[1, 4, 2, 3, 4, 4, 0], [4, 1, 1, 2, 4, 3, 2]], np.int32)
    got = np.asarray(models.segment_loglik(jnp.asarray(logits), jnp.asarray(ids), (4,)))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for b in range(2):
        for t in range(7):
            start = max([s for s in range(t) if ids[b, s] == 4], default=-1) + 1
            want = sum(logp[b, s - 1, ids[b, s]] for s in range(max(start, 1), t + 1))
            assert got[b, t] == pytest.approx(want, abs=1e-5), (b, t)


@pytest.mark.parametrize("tied", [True, False])
def test_likelihood_feature_reads_the_lm_and_round_trips(tmp_path, tokenizer, tied):
    decoder, params = _tiny(tokenizer, tie_word_embeddings=tied)
    newline = reward_io.boundary_token_ids(tokenizer, "\n")
    assert newline and all("\n" in tokenizer.decode([i]) for i in newline)
    model, rm_params, lm_head = reward_io.reward_model_from_generator(decoder, params, jax.random.key(4), newline)
    ids = jnp.asarray(tokenizer("Ann has 3 + 4 = 7 eggs.\nAnn has 7 - 2 = 5 eggs.\n#### 5")["input_ids"])[None]
    # Score head at 0: the logit is the step log-likelihood under the generator's own LM.
    zero = dict(rm_params, score=jax.tree.map(jnp.zeros_like, rm_params["score"]))
    lm = decoder.apply({"params": params}, ids)
    np.testing.assert_allclose(np.asarray(model.apply({"params": zero}, ids)),
                               np.asarray(models.segment_loglik(lm, ids, newline)), rtol=1e-5, atol=1e-5)
    rm_params["likelihood"]["weight"] = jnp.array([0.5])
    path = str(tmp_path / "export")
    reward_io.save_reward_model(path, model, rm_params, tokenizer, "prm", lm_head=lm_head)
    loaded, loaded_params, _, _ = reward_io.load_reward_model(path)
    assert loaded.boundary_ids == newline
    np.testing.assert_allclose(np.asarray(loaded.apply({"params": loaded_params}, ids)),
                               np.asarray(model.apply({"params": rm_params}, ids)), rtol=1e-5, atol=1e-5)
    plain = models.without_likelihood(loaded_params)  # e.g. a critic from this reward model
    assert set(plain) == {"decoder", "score"} and "lm_head" not in plain["decoder"]
    models.ScalarModel(loaded.config).apply({"params": plain}, ids)


# ----------------------------------------------------------------------------- evaluation

def test_flaw_detection_hand_computed():
    ref = [np.array([0.9, 0.8]), np.array([0.7, 0.6]), np.array([0.5, np.nan]), np.array([0.4, 0.4])]
    flawed = [np.array([0.9, 0.2]), np.array([0.7, 0.9]), np.array([0.5, 0.1]), np.array([0.4, 0.4])]
    # Step 1: a win, a loss, a NaN pair (skipped), a tie (half).
    assert rm_eval.flaw_detection(ref, flawed, [1, 1, 1, 1]) == pytest.approx(1.5 / 3)
    # Outcome scores (ORM): index 0 of each array; all ties.
    assert rm_eval.flaw_detection(ref, flawed, None) == pytest.approx(0.5)
    assert np.isnan(rm_eval.flaw_detection([], [], None))


def test_best_of_n_minus_greedy_is_paired():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.3, 0.4]])
    correct = np.array([[0, 1], [0, 1], [1, 0], [0, 0]], bool)
    greedy = [False, True, False, False]
    diff, se = rm_eval.minus_greedy(scores, correct, greedy)
    d = np.array([1, -1, 1, 0], float)  # picks: right, wrong, right (tie: first), wrong
    assert diff == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / 2)
    assert diff == pytest.approx(rm_eval.best_of_n(scores, correct) - np.mean(greedy))


def test_rm_eval_metrics_hand_computed():
    assert rm_eval.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert rm_eval.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert math.isnan(rm_eval.roc_auc([0.1, 0.2], [1, 1]))
    scores = np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    correct = np.array([[True, False, True], [False, True, True]])
    assert rm_eval.best_of_n(scores, correct) == pytest.approx(0.0)  # picks 1 and 0 (tie -> first)
    assert rm_eval.best_of_n(scores, correct, 1) == pytest.approx(0.5)
    answers = [["3", "4", "3"], ["5", None, "6"]]
    assert rm_eval.majority_vote(answers, correct) == pytest.approx(0.5)  # "3" wins; tie "5"/"6" -> "5"
    assert rm_eval.pass_at_n(correct, 1) == pytest.approx(0.5)
    assert rm_eval.random_pick(correct) == pytest.approx(4 / 6)
    # Within-problem pairs (correct vs wrong): row 0: .1 vs .9 lose, .5 vs .9 lose;
    # row 1: .7 vs .7 tie (1/2), .2 vs .7 lose -> 0.5 / 4.
    assert rm_eval.within_problem_auc(scores, correct) == pytest.approx(0.125)
    steps = [np.array([0.9, 0.2, np.nan]), np.array([0.5, 0.6])]
    np.testing.assert_allclose(rm_eval.aggregate_steps(steps, "min"), [0.2, 0.5], rtol=1e-6)
    np.testing.assert_allclose(rm_eval.aggregate_steps(steps, "last"), [0.2, 0.6], rtol=1e-6)


# ----------------------------------------------------------------------------- stages

def _stage_config(stage, tokenizer_dir=""):
    c = base_config("rm_test", stage)
    c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 2, 2
    c.model.num_kv_heads, c.model.intermediate_size = 1, 64
    c.data.tokenizer = tokenizer_dir
    c.data.num_train = 50
    c.data.max_prompt_len = 96
    c.data.max_response_len = 96
    c.rm.steps = 4
    c.rm.batch_size = 8
    c.rm.warmup_steps = 1
    c.rm.log_every = 2
    c.rm.eval_problems = 0
    c.rm.eval_batch_size = 8
    c.checkpoint.every_steps = 2
    return c


def _train_tokenizer(folder, texts):
    tok = tokenizer_lib.train_tokenizer(texts, vocab_size=400)
    return tokenizer_lib.save_tokenizer(tok, folder)


@pytest.mark.parametrize("loss", ["bce", pytest.param("bt", marks=pytest.mark.slow)])
def test_prm_trains_on_the_real_prm800k_records(tmp_path, shared_data, loss):
    path = str(shared_data / "prm800k")
    steps, _ = label_files.prm800k_labels(path)
    texts = [r.problem.question + "\n" + "\n".join(r.steps) for r in steps]
    c = _stage_config("prm", _train_tokenizer(str(tmp_path / "tok"), texts))
    c.rm.labels = "prm800k"
    c.rm.prm800k_path = path
    c.rm.loss = loss
    c.data.max_prompt_len = 256
    c.data.max_response_len = 256
    workdir = str(tmp_path / "prm")
    summary = stage_rm.run(c, workdir)
    assert summary["steps"] == 4 and summary["loss"] == loss
    assert np.isfinite(summary["final_loss"])
    assert summary["data"]["train_records"] > 0 and summary["data"]["eval_records"] > 0
    assert "prm/records_step_auc" in summary["eval"]
    model, params, _, kind = reward_io.load_reward_model(summary["export"])
    assert kind == "prm"
    assert os.path.isfile(os.path.join(workdir, "report.md"))
    assert stage_rm.run(c, workdir) == summary  # done: reused


def _orm_config(tmp_path, shared_data):
    path = str(shared_data / "gsm8k" / "example_model_solutions.jsonl")
    records = label_files.read_labeled_solutions(path, limit=6)
    texts = [r.problem.question + "\n" + "\n".join(r.steps) for r in records]
    c = _stage_config("orm", _train_tokenizer(str(tmp_path / "tok"), texts))
    c.rm.solutions_path = path
    c.rm.num_problems = 6
    c.rm.eval_fraction = 0.34
    c.data.max_prompt_len = 160
    c.data.max_response_len = 224
    return c


def _check_orm_summary(summary):
    assert summary["steps"] == 4 and summary["stage"] == "orm"
    assert summary["data"]["train_records"] + summary["data"]["eval_records"] == 24  # 6 x 4 solutions
    assert "orm/records_outcome_auc" in summary["eval"]
    _, _, _, kind = reward_io.load_reward_model(summary["export"])
    assert kind == "orm"


def test_orm_trains_on_labelled_gsm8k_solutions(tmp_path, shared_data):
    _check_orm_summary(stage_rm.run(_orm_config(tmp_path, shared_data), str(tmp_path / "orm")))


@pytest.mark.slow
def test_orm_stage_resumes_from_its_checkpoint(tmp_path, shared_data):
    c = _orm_config(tmp_path, shared_data)
    workdir = str(tmp_path / "orm")
    partial = stage_rm.run(c, workdir, stop_after=2)
    assert partial == {"stopped_at": 2, "done": False}
    summary = stage_rm.run(c, workdir)
    _check_orm_summary(summary)
    steps_logged = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))
                    if "loss" in json.loads(line)]
    assert steps_logged == [2, 4]  # resumed at step 2, not from scratch
