"""Reward-model labels: exact, PRM800K, GSM8K pre-labelled solutions, Monte-Carlo with a cache."""
import json

import jax
import pytest

from jaxstep import models
from jaxstep.config_lib import base_config
from jaxstep.data import formatting, grading, prm800k, synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.problem import Problem
from jaxstep.rm import labels as labels_lib
from jaxstep.rm import montecarlo
from jaxstep.rm import dataset as rm_dataset
from jaxstep.data import step_checks
from jaxstep.rm import label_files


@pytest.fixture(scope="module")
def problems():
    return synthetic.generate(12, seed=3)


def test_exact_labels_of_reference_and_corrupted_solutions(problems):
    texts = [formatting.reference_solution(p) for p in problems]
    exact = labels_lib.exact_labels(problems, texts)
    assert all(r.correct and set(r.labels) == {1.0} for r in exact)
    assert [len(r.steps) for r in exact] == [len(p.steps) + 1 for p in problems]
    key = jax.random.key(0)
    corrupted = labels_lib.corrupted_solutions(problems, key)
    assert len(corrupted) == len(problems)
    for i, (p, r) in enumerate(zip(problems, corrupted)):
        c = step_checks.corrupt(p, jax.random.fold_in(key, i))
        assert r.labels == tuple(float(x) for x in c.labels) + (float(c.answer_correct),)
        assert r.steps[-1] == "#### " + c.answer and r.correct == c.answer_correct
        # Relabelling the rendered text gives the same labels.
        again = labels_lib.exact_labels([p], [r.text()])[0]
        assert again.labels == r.labels and again.steps == r.steps


def test_corruption_kinds_restrict_the_flaws(problems):
    key = jax.random.key(1)
    repeats = labels_lib.corrupted_solutions(problems, key, kinds=("repeat",))
    assert len(repeats) == len(problems)
    for p, r in zip(problems, repeats):  # a repeated step: one step more, the answer still right
        assert len(r.steps) == len(p.steps) + 2 and r.correct
    slips = labels_lib.corrupted_solutions(problems, key, kinds=("arithmetic",))
    for p, r in zip(problems, slips):  # a wrong result: same step count, the answer wrong
        assert len(r.steps) == len(p.steps) + 1 and not r.correct and 0.0 in r.labels
    assert rm_dataset.corruption_kinds(" arithmetic, skip ") == ("arithmetic", "skip")
    assert rm_dataset.corruption_kinds("") == ()
    with pytest.raises(ValueError, match="typo"):
        rm_dataset.corruption_kinds("arithmetic,typo")


def test_flaw_pairs_agree_up_to_the_flawed_step(problems):
    pairs = labels_lib.flaw_pairs(problems, jax.random.key(2))
    assert {x.kind for x in pairs} == {"arithmetic", "operand"}
    assert len(pairs) >= len(problems)
    for x in pairs:
        k = x.position
        assert x.reference.steps[:k] == x.flawed.steps[:k]
        assert x.reference.steps[k] != x.flawed.steps[k]
        assert x.reference.labels[k] == 1.0 and x.flawed.labels[k] == 0.0
        assert x.reference.problem is x.flawed.problem


def test_balance_classes_adds_the_missing_class(problems):
    refs = labels_lib.reference_solutions(problems)
    assert labels_lib.label_balance(refs)["positive_fraction"] == 1.0
    balanced = labels_lib.balance_classes(refs, problems, jax.random.key(1), min_fraction=0.2)
    stats = labels_lib.label_balance(balanced)
    assert 0.2 <= stats["positive_fraction"] <= 0.8
    assert {r.origin for r in balanced} == {"reference", "corrupt"}
    outcome = labels_lib.balance_classes(refs, problems, jax.random.key(1), min_fraction=0.3, by="outcome")
    assert 0.3 <= labels_lib.label_balance(outcome)["correct_fraction"] <= 0.7
    wrong = [r for r in labels_lib.corrupted_solutions(problems, jax.random.key(2)) if not r.correct]
    fixed = labels_lib.balance_classes(wrong, problems, jax.random.key(3), min_fraction=0.25, by="outcome")
    assert any(r.origin == "reference" for r in fixed)


def test_preference_pairs_share_a_prefix_and_prefer_the_better_step(problems):
    records = labels_lib.reference_solutions(problems) + labels_lib.corrupted_solutions(problems, jax.random.key(5))
    pairs = labels_lib.preference_pairs(records)
    assert pairs
    by_steps = {r.steps: r for r in records}
    for pair in pairs:
        k = len(pair.prefix)
        good = [r for r in records if r.steps[:k + 1] == pair.prefix + (pair.chosen,)]
        bad = [r for r in records if r.steps[:k + 1] == pair.prefix + (pair.rejected,)]
        assert good and bad and pair.chosen != pair.rejected
        assert max(r.labels[k] for r in good) > min(r.labels[k] for r in bad)
    assert len(by_steps) == len(records)


def test_records_round_trip_through_json_lines(tmp_path, problems):
    records = labels_lib.corrupted_solutions(problems[:3], jax.random.key(0))
    pairs = labels_lib.preference_pairs(records + labels_lib.reference_solutions(problems[:3]))
    path = labels_lib.save_records(str(tmp_path / "r.jsonl"), records + pairs)
    assert labels_lib.load_records(path) == records + pairs


def test_prm800k_labels_from_the_real_records(shared_data):
    path = str(shared_data / "prm800k")
    records = prm800k.read(path)
    steps, pairs = label_files.prm800k_labels(path)
    expected = sum(len(prm800k.step_examples(r)) for r in records)
    assert 0 < len(steps) <= expected
    for r in steps:
        assert r.labels[-1] in (0.0, 1.0)
        assert all("\n" not in s for s in r.steps)
        assert all(x is None or x in (0.0, 1.0) for x in r.labels)
    assert len(pairs) == sum(len(prm800k.preference_pairs(r)) for r in records)
    strict, _ = label_files.prm800k_labels(path, neutral_is_positive=False)
    positives = sum(r.labels[-1] for r in steps)
    assert sum(r.labels[-1] for r in strict) < positives  # the 62 neutral ratings flip


def test_read_labeled_gsm8k_example_model_solutions(shared_data):
    path = str(shared_data / "gsm8k" / "example_model_solutions.jsonl")
    records = label_files.read_labeled_solutions(path, limit=5)
    assert len(records) == 20  # four solutions per question
    raw = [json.loads(line) for line in open(path)][:5]
    flags = [raw[i][name]["is_correct"] for i in range(5)
             for name in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")]
    assert [r.correct for r in records] == flags
    for r in records:
        assert r.steps[-1].startswith("#### ") and "<<" not in r.text()
        assert r.problem.answer and grading.is_correct(r.text(), r.problem.answer) == r.correct


def _tiny_generator(tokenizer):
    ids = tokenizer_lib.special_ids(tokenizer)
    cfg = models.tiny(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, intermediate_size=64, bos_token_id=ids["bos"],
                      eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    model = models.Decoder(cfg)
    return model, models.init_params(model, jax.random.key(0)), tokenizer


def test_montecarlo_labels_with_a_real_tiny_generator_and_a_resumable_cache(tmp_path):
    tokenizer = tokenizer_lib.build_tokenizer(256, num_problems=200)
    config = base_config("mc_test", "prm")
    config.data.max_prompt_len = 48
    config.data.max_response_len = 12
    config.sampler.batch_size = 32
    generator = _tiny_generator(tokenizer)
    calls = []
    real_complete = rm_dataset.make_completer(config, generator, mesh=None)

    def complete(problems, prefixes, n, key):  # the real sampler, with a call log
        calls.append(len(prefixes))
        return real_complete(problems, prefixes, n, key)

    problem = Problem("Ann has 5 apples. Ann buys 3 more. How many apples does Ann have now?",
                      ("Ann has 5 + 3 = 8 apples.",), "8", "synthetic", 1, "chain", "mc/0")
    texts = ["Ann has 5 + 3 = 8 apples.\n#### 8",      # right
             "Ann has 5 + 3 = 9 apples.\n#### 9",      # wrong
             "#### 8\nAnn has 5 + 3 = 8 apples.\n#### 8"]  # answer stated first: prefixes reach it
    solutions = labels_lib.outcome_labels([problem] * 3, texts)
    cache = str(tmp_path / "mc.jsonl")
    n = 3
    soft = montecarlo.montecarlo_labels(solutions, complete, num_completions=n, key=jax.random.key(0),
                                        cache_path=cache, mode="soft", chunk=2, progress=False)
    assert calls == [2, 2]  # chunk of 2 solutions (1 + 1 prefixes), then 1 solution (2 prefixes)
    rows = [json.loads(line) for line in open(cache)]
    assert len(rows) == 3
    for row, sol, out in zip(rows, solutions, soft):
        assert all(0.0 <= s <= 1.0 for s in row["soft"])
        assert row["hard"] == [s > 0 for s in row["soft"]]
        assert all(s * n == round(s * n) for s in row["soft"])  # fractions of n completions
        assert out.labels == tuple(row["soft"]) and len(out.labels) == len(sol.steps)
    assert [r.labels[-1] for r in soft] == [1.0, 0.0, 1.0]  # last step = the solution's correctness
    assert [r.correct for r in soft] == [True, False, True]
    # Prefix "#### 8\n": a continuation without another "####" keeps the answer 8.
    assert soft[2].labels[0] > 0
    hard = montecarlo.montecarlo_labels(solutions, complete, num_completions=n, key=jax.random.key(0),
                                        cache_path=cache, mode="hard", chunk=2, progress=False)
    assert calls == [2, 2]  # everything came from the cache
    assert [h.labels for h in hard] == [tuple(float(s > 0) for s in r.labels) for r in soft]

    # A crash after the first append (plus a torn line): the rerun labels only the rest.
    lines = open(cache).read().splitlines()
    with open(cache, "w") as f:
        f.write(lines[0] + "\n" + lines[1][:20])
    again = montecarlo.montecarlo_labels(solutions, complete, num_completions=n, key=jax.random.key(0),
                                         cache_path=cache, mode="soft", chunk=2, progress=False)
    assert calls == [2, 2, 3]  # solutions 1 and 2: 1 + 2 prefixes in one call
    assert again[0].labels == soft[0].labels
    assert all(0.0 <= x <= 1.0 for r in again for x in r.labels)
