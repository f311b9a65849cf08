"""Synthetic problems: determinism, exact step labels (checked by an independent
evaluator written here), disjoint splits, corruptions."""
import re
from fractions import Fraction

import jax
import numpy as np
import pytest

from jaxstep.data import formatting, grading, load, synthetic
from jaxstep.data import step_checks


# ---------------------------------------------------------------- an independent evaluator
# Written from the rule in the issue, without synthetic.py's parser: a step is
# "<words> a op b = c <words>" (one computation, as in the templates); it is correct
# iff c == a op b exactly and a, b were given in the question or computed by an
# earlier correct step.

def _number(token):
    return Fraction(token)


def independent_labels(question, steps, answer):
    known = {Fraction(w) for w in re.findall(r"\d+", question)}
    labels = []
    for step in steps:
        words = step.replace("= ", " = ").split()
        if words and words[0] == "####":
            labels.append(Fraction(words[1]) == Fraction(answer))
            continue
        if "=" not in words:
            labels.append(False)
            continue
        i = words.index("=")
        try:
            a, op, b = _number(words[i - 3]), words[i - 2], _number(words[i - 1])
            c = _number(words[i + 1].rstrip("."))
        except (ValueError, IndexError, ZeroDivisionError):
            labels.append(False)
            continue
        if op == "+":
            value = a + b
        elif op == "-":
            value = a - b
        elif op == "*":
            value = a * b
        elif op == "/":
            value = a / b if b else None
        else:
            value = None
        ok = value is not None and value == c and a in known and b in known
        if ok:
            known.add(c)
        labels.append(ok)
    return labels


def random_solution(problem, rng):
    """Model-like steps: operands from the givens, earlier results or thin air; results
    right or a little off; sometimes a step repeated or a final-answer line."""
    givens = [int(x) for x in re.findall(r"\d+", problem.question)]
    pool = list(givens)
    steps = []
    for _ in range(int(rng.integers(1, 6))):
        r = rng.random()
        if r < 0.1 and steps:
            steps.append(steps[int(rng.integers(len(steps)))])
            continue
        a = int(rng.choice(pool)) if rng.random() < 0.8 else int(rng.integers(1, 60))
        b = int(rng.choice(pool)) if rng.random() < 0.8 else int(rng.integers(1, 10))
        op = str(rng.choice(["+", "-", "*", "/"]))
        exact = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b)}[op]
        if isinstance(exact, Fraction) and exact.denominator != 1:
            c = f"{float(exact):.2f}"
        else:
            c = str(int(exact) + (0 if rng.random() < 0.7 else int(rng.choice([-2, -1, 1, 2]))))
        steps.append(f"Ann has {a} {op} {b} = {c} apples.")
        if Fraction(c) == exact and exact > 0 and exact.denominator == 1:
            pool.append(int(exact))
    if rng.random() < 0.5:
        steps.append(f"#### {problem.answer if rng.random() < 0.5 else int(rng.integers(0, 99))}")
    return steps


# ---------------------------------------------------------------- tests

def test_generation_is_deterministic_by_seed():
    a = synthetic.generate(200, seed=7)
    b = synthetic.generate(200, seed=7)
    c = synthetic.generate(200, seed=8)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]
    k1 = synthetic.generate(20, seed=jax.random.key(3))
    k2 = synthetic.generate(20, seed=jax.random.key(3))
    assert k1 == k2
    assert load("synthetic", "train", limit=50, seed=7) == a[:50]


def test_problems_follow_the_gsm8k_format_and_knobs():
    problems = synthetic.generate(600, seed=1, min_steps=2, max_steps=5, max_value=20)
    levels = {p.level for p in problems}
    assert levels == {2, 3, 4, 5}
    assert {p.subject for p in problems} == set(synthetic.TEMPLATES)
    for p in problems:
        assert p.source == "synthetic" and len(p.steps) == p.level
        assert formatting.reference_solution(p).endswith(f"\n#### {p.answer}")
        assert grading.is_correct(formatting.reference_solution(p), p.answer)
        numbers = [int(x) for x in re.findall(r"\d+", p.question + " ".join(p.steps))]
        assert max(numbers) <= 120  # max_result=100 plus a payment of at most max_value
    small = synthetic.generate(200, seed=1, min_steps=2, max_steps=2, ops="+-", max_value=9)
    assert all(len(p.steps) == 2 for p in small)
    assert all(not re.search(r"[*/] ", " ".join(p.steps)) for p in small)
    words = {w for p in problems for w in re.findall(r"[A-Za-z]+", p.question + " ".join(p.steps))}
    assert len(words) < 90, sorted(words)  # a tiny vocabulary


def test_reference_steps_are_all_correct_and_values_distinct():
    for p in synthetic.generate(500, seed=2):
        assert step_checks.label_steps(p, p.steps) == [True] * len(p.steps)
        assert step_checks.label_steps(p, p.steps, rule="reference") == [True] * len(p.steps)
        assert independent_labels(p.question, p.steps, p.answer) == [True] * len(p.steps)


def test_step_labels_match_an_independent_evaluator():
    rng = np.random.default_rng(0)
    problems = synthetic.generate(300, seed=3)
    seen = {True: 0, False: 0}
    for p in problems:
        for _ in range(5):
            steps = random_solution(p, rng)
            expected = independent_labels(p.question, steps, p.answer)
            assert step_checks.label_steps(p, steps) == expected, (p, steps)
            for label in expected:
                seen[label] += 1
    assert seen[True] > 300 and seen[False] > 300  # both classes well exercised


def test_step_label_edge_cases():
    p = synthetic.generate(1, seed=4, templates=("chain",), min_steps=2, max_steps=2)[0]
    first, second = p.steps
    assert step_checks.label_steps(p, []) == []
    assert step_checks.label_steps(p, ["Ann has no idea."]) == [False]
    assert step_checks.label_steps(p, [second]) == [False]  # uses a value not yet computed
    assert step_checks.label_steps(p, [first, first, second]) == [True, True, True]
    assert step_checks.label_steps(p, [first, second, f"#### {p.answer}", "#### 0"]) == [True, True, True, False]
    with pytest.raises(ValueError, match="rule"):
        step_checks.label_steps(p, [first], rule="nope")


def test_train_and_test_never_overlap():
    train = load("synthetic", "train", limit=3000, seed=0)
    test = load("synthetic", "test", limit=600, seed=0)
    other = synthetic.generate(600, split="test", seed=123, max_value=12)
    train_q = {p.question for p in train}
    assert len(train_q) == 3000 and len({p.question for p in test}) == 600
    assert not train_q & {p.question for p in test}
    assert not train_q & {p.question for p in other}
    assert all(synthetic.split_of(p.question) == "test" for p in test + other)
    assert all(p.id.startswith("synthetic/train/") for p in train)


@pytest.mark.parametrize("kind", step_checks.KINDS)
def test_corruptions(kind):
    problems = synthetic.generate(150, seed=5)
    made = caught = 0
    for i, p in enumerate(problems):
        try:
            bad = step_checks.corrupt(p, jax.random.key(i), kind=kind)
        except ValueError:
            assert kind == "skip"  # e.g. 7 + 3 = 10 then 10 / 3: skipping leaves 7 / 3
            continue
        made += 1
        assert bad.kind == kind
        assert list(bad.labels) == independent_labels(p.question, bad.steps, p.answer)
        assert bad.labels == tuple(step_checks.label_steps(p, bad.steps))
        final = formatting.render_solution(bad.steps, bad.answer)
        assert grading.is_correct(final, p.answer) == bad.answer_correct
        if kind in ("arithmetic", "operand"):
            assert not bad.answer_correct and not all(bad.labels)
            assert bad.labels.index(False) == bad.position
        elif kind == "skip":
            assert len(bad.steps) == len(p.steps) - 1 and not bad.answer_correct
            # Under the reference rule the continuation from a stale value is wrong
            # (unless two reference steps are the same computation).
            caught += not all(step_checks.label_steps(p, bad.steps, rule="reference"))
        else:
            assert len(bad.steps) == len(p.steps) + 1 and bad.answer_correct and all(bad.labels)
    assert made >= 120
    if kind == "skip":
        assert caught >= 0.95 * made
    assert step_checks.corrupt(problems[0], 9, kind=None).kind in step_checks.KINDS
    same = step_checks.corrupt(problems[1], jax.random.key(1)), step_checks.corrupt(problems[1], jax.random.key(1))
    assert same[0] == same[1]


def test_bad_knobs_are_rejected():
    with pytest.raises(ValueError, match="min_steps"):
        synthetic.generate(1, min_steps=1)
    with pytest.raises(ValueError, match="ops"):
        synthetic.generate(1, ops="^")
    with pytest.raises(ValueError, match="split"):
        synthetic.generate(1, split="valid")
    with pytest.raises(TypeError):
        synthetic.generate(1, nonsense=3)


# ---------------------------------------------------------------- easy and hard sources

def test_easy_and_hard_sources_by_hand():
    easy = load("synthetic_easy", "test", limit=200)
    hard = load("synthetic_hard", "test", limit=200)
    for problems, name, steps, ops, largest in ((easy, "synthetic_easy", {2, 3}, set("+-*"), 100),
                                                (hard, "synthetic_hard", {4, 5}, set("+-*/"), 500)):
        assert {p.source for p in problems} == {name}
        assert all(p.id.startswith(f"{name}/test/") for p in problems)
        assert {len(p.steps) for p in problems} == steps  # both step counts occur
        used = {op for p in problems for s in p.steps for op in re.findall(r" ([-+*/]) ", s)}
        assert used == ops  # easy never divides; hard uses all four operations
        assert max(int(x) for p in problems for s in p.steps for x in re.findall(r"= (\d+)", s)) <= largest
        # Every reference is right by the independent evaluator above.
        for p in problems[:50]:
            assert all(independent_labels(p.question, list(p.steps) + [f"#### {p.answer}"], p.answer))
    # Hard problems have larger numbers: the mean final answer is several times the easy one's.
    assert np.mean([int(p.answer) for p in hard]) > 2 * np.mean([int(p.answer) for p in easy])
    assert synthetic.is_synthetic("synthetic_hard") and not synthetic.is_synthetic("gsm8k")


def test_level_sources_are_deterministic_and_fixed():
    a = synthetic.generate(20, split="train", seed=3, source="synthetic_hard")
    assert a == synthetic.generate(20, split="train", seed=3, source="synthetic_hard")
    assert all(synthetic.split_of(p.question) == "train" for p in a)
    with pytest.raises(ValueError, match="fixed knobs"):
        synthetic.generate(5, source="synthetic_easy", max_steps=5)
    with pytest.raises(ValueError, match="unknown synthetic source"):
        synthetic.generate(5, source="synthetic_medium")


def test_redundant_solutions_repeat_one_correct_step():
    problems = synthetic.generate(40, split="train", seed=1)
    out = step_checks.with_redundant_solutions(problems, 0.25, seed=0)
    changed = [(a, b) for a, b in zip(problems, out) if a != b]
    assert len(out) == 40 and len(changed) == 10  # a quarter, order kept
    for before, after in changed:
        assert len(after.steps) == len(before.steps) + 1 and after.answer == before.answer
        i = next(i for i in range(len(after.steps) - 1) if after.steps[i] == after.steps[i + 1])
        assert after.steps[:i] + after.steps[i + 1:] == before.steps  # one step written twice in a row
        # The copy is right arithmetic on known numbers: a PRM's exact labels call it correct.
        assert all(step_checks.label_steps(before, list(after.steps), rule="reference"))
    assert step_checks.with_redundant_solutions(problems, 0.25, seed=0) == out  # deterministic
    assert step_checks.with_redundant_solutions(problems, 0.0, seed=0) == problems
    with pytest.raises(ValueError, match="redundant fraction"):
        step_checks.with_redundant_solutions(problems, 1.5, seed=0)
