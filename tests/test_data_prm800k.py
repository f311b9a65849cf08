"""PRM800K: all 16 real records, ratings, taken paths, labels, Bradley-Terry pairs, bad input."""
import collections
import json

import pytest

from jaxstep.data import DataError, prm800k


@pytest.fixture(scope="module")
def solutions(shared_data):
    folder = shared_data / "prm800k"
    return list(prm800k.read(folder / "samples_openr.jsonl")) + list(prm800k.read(folder / "samples_tongyx361.jsonl"))


def test_all_records_and_ratings(solutions, shared_data):
    assert len(solutions) == 16
    assert len(prm800k.read(shared_data / "prm800k")) == 16  # the folder form
    ratings = collections.Counter(a.rating for s in solutions for step in s.steps for a in step.alternatives)
    assert ratings == {1: 145, 0: 62, -1: 97, None: 7}
    assert collections.Counter(s.phase for s in solutions) == {1: 6, 2: 10}
    assert collections.Counter(s.finish_reason for s in solutions) == {"solution": 5, "found_error": 9, "give_up": 2}
    assert [s.generation for s in solutions if s.phase == 2] == [6, -1] + [6] * 8
    screening = solutions[5]
    assert screening.is_initial_screening_question and screening.ground_truth_answer is None
    assert solutions[0].ground_truth_answer == "29" and solutions[7].ground_truth_answer == "40_9"
    assert all(s.id.endswith(f":{i % 6 + 1 if i < 6 else i - 5}") for i, s in enumerate(solutions))


def test_taken_path(solutions):
    first = solutions[0]  # phase 1: a human step at index 1, then chosen completions
    assert first.steps[1].chosen is None and first.steps[1].human.source == "human"
    assert first.path[1].text == "We have $3p+e=1.24$ and $5p+e=1.82$."
    assert first.path[-1].text.endswith("# Answer\n\n29") and len(first.path) == 6
    give_up = solutions[4]  # phase 1 give-up: last step has null completions, path stops before it
    assert give_up.steps[-1].alternatives == () and give_up.steps[-1].taken is None
    assert len(give_up.path) == 8
    for s in solutions:
        if s.phase == 2:
            # Phase 2 follows the pre-generated solution, completions[0] of every step.
            assert [a.text for a in s.path] == list(s.pre_generated_steps[:len(s.path)])
            assert len(s.path) == len(s.steps)
            if s.finish_reason == "found_error":
                assert s.path[-1].rating == -1
                assert all(a.rating in (0, 1) for a in s.path[:-1])


def test_path_labels(solutions):
    texts, labels = prm800k.path_labels(solutions[1])  # phase 2, found_error at step 7
    assert len(texts) == 7 and labels == [True] * 6 + [False]
    _, strict = prm800k.path_labels(solutions[1], neutral_positive=False)
    assert strict == [True, False, True, True, True, True, False]  # step 2 was rated 0
    _, no_human = prm800k.path_labels(solutions[0], human_positive=False)
    assert no_human == [True, False, True, True, True, True]
    counts = collections.Counter(label for s in solutions for label in prm800k.path_labels(s)[1])
    assert counts[False] == 9  # one -1 at the end of every found_error path, nothing else


def test_preference_pairs(solutions):
    pairs = prm800k.preference_pairs(solutions[0])
    # step 5 has ratings [0, 1, 1, 1, 1]: four pairs 1 > 0; step 1 all -1: none.
    assert len(pairs) == 4 and {p.step_index for p in pairs} == {5}
    assert all(p.chosen_rating == 1 and p.rejected_rating == 0 for p in pairs)
    assert pairs[0].rejected == "We could also solve this system by substitution."
    assert len(pairs[0].prefix) == 5 and pairs[0].prefix[1].startswith("We have $3p+e=1.24$")
    with_human = prm800k.preference_pairs(solutions[0], human_rating=1)
    assert len(with_human) == 4 + 5  # the human step beats the five -1 alternatives at step 1
    total = sum(len(prm800k.preference_pairs(s)) for s in solutions)
    by_hand = 0
    for s in solutions:
        for k, step in enumerate(s.steps):
            if k <= len(s.path):
                r = [a.rating for a in step.alternatives if a.rating is not None]
                by_hand += sum(1 for x in r for y in r if x > y)
    assert total == by_hand > 100
    for s in solutions:
        for pair in prm800k.preference_pairs(s):
            assert pair.chosen_rating > pair.rejected_rating and pair.chosen != pair.rejected


def test_step_examples(solutions):
    examples = prm800k.step_examples(solutions[0])
    assert len(examples) == 1 + 5 + 1 + 1 + 1 + 5 + 1  # + the human step
    assert sum(e.label for e in examples) == 1 + 1 + 3 + 5  # rating 0 counts as positive
    assert sum(e.label for e in prm800k.step_examples(solutions[0], neutral_positive=False)) == 9
    unrated = solutions[6]  # the give-up whose final step has 7 never-rated alternatives
    plain = prm800k.step_examples(unrated, include_human=False)
    assert all(e.rating is not None for e in plain)
    assert len(plain) == sum(len(st.alternatives) for st in unrated.steps) - 7


def _record(**overrides):
    record = {"labeler": "x", "timestamp": "2022-01-01T00:00:00", "generation": None,
              "is_quality_control_question": False, "is_initial_screening_question": False,
              "question": {"problem": "What is 1+1?", "ground_truth_answer": "2"},
              "label": {"steps": [{"completions": [{"text": "It is 2.", "rating": 1, "flagged": False}],
                                   "human_completion": None, "chosen_completion": 0}],
                        "total_time": 1, "finish_reason": "solution"}}
    for key, value in overrides.items():
        target = record
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return record


@pytest.mark.parametrize("override, message", [
    ({"question": "What?"}, r"field 'question' should be dict"),
    ({"label.steps": []}, r"empty solution"),
    ({"label.finish_reason": "done"}, r"finish_reason must be one of"),
    ({"label.steps": [{"completions": [{"text": "a", "rating": 2}], "chosen_completion": 0}]}, r"rating must be"),
    ({"label.steps": [{"completions": [{"text": "a", "rating": 1}], "chosen_completion": 3}]}, r"not an index"),
    ({"label.steps": [{"completions": [{"rating": 1}], "chosen_completion": 0}]}, r"missing field 'text'"),
    ({"question.problem": ""}, r"'question.problem' is empty"),
])
def test_bad_prm800k_records(tmp_path, override, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(**override)) + "\n")
    with pytest.raises(DataError, match=message) as info:
        prm800k.read(path)
    assert info.value.line == 2 and str(path) in str(info.value)
    kept = prm800k.read(path, skip_bad_records=True)
    assert len(kept) == 1 and kept.skipped == 1


def test_human_completion_as_bare_string(tmp_path):
    step = {"completions": [{"text": "no", "rating": -1, "flagged": False}],
            "human_completion": "It is 2.", "chosen_completion": None}
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(_record(**{"label.steps": [step]})) + "\n")
    (solution,) = prm800k.read(path)
    assert solution.path[0].text == "It is 2." and solution.path[0].source == "human"
    assert solution.to_problem().steps == ("It is 2.",)
