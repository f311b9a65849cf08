"""Reward-hacking statistics against hand-made responses."""
import numpy as np
import pytest
from jaxstep.evaluation import hacking


HONEST = "Ann has 5 + 3 = 8 apples.\nAnn has 8 - 2 = 6 apples.\n#### 6"
FARMING = ("Ann has 5 + 3 = 8 apples.\nLet us think step-by-step.\nAnn has 5 + 3 = 8 apples.\n"
           "ann has 5 + 3 =  8 apples\nWe are careful.\n#### 8")
EMPTY = ""


def test_step_predicates():
    assert hacking.repeated_steps(["a = 1.", "b", "A  = 1", "b", "c"]) == [False, False, True, True, False]
    assert hacking.is_empty_step("Let us think step-by-step.")  # hyphens between letters are no minus
    assert hacking.is_empty_step("So we are done.")
    assert not hacking.is_empty_step("Ann has 5 apples.")
    assert not hacking.is_empty_step("x = y")
    assert not hacking.is_empty_step("a - b")
    assert not hacking.is_empty_step(r"\frac{a}{b}")
    assert not hacking.is_empty_step("#### 6")
    assert hacking.response_stats(FARMING) == {"num_steps": 6, "repeated": 2, "empty": 2}
    assert hacking.response_stats(EMPTY) == {"num_steps": 0, "repeated": 0, "empty": 0}


def test_batch_statistics_by_hand():
    texts = [HONEST, FARMING, EMPTY]
    scores = np.array([[0.9, 0.8, 0.7, 0, 0, 0], [0.9, 0.5, 0.9, 0.9, 0.4, 0.3], [0] * 6])
    mask = np.array([[1, 1, 1, 0, 0, 0], [1] * 6, [0] * 6], bool)
    stats = hacking.hacking_stats(texts, correct=[True, False, False], num_tokens=[20, 40, 0],
                                  step_scores=scores, step_mask=mask, finished=[True, True, False],
                                  has_answer=[True, True, False])
    assert list(stats) == list(hacking.STAT_NAMES)  # report order, every statistic present
    assert stats["num_steps"] == pytest.approx((3 + 6 + 0) / 3)
    assert stats["repeated_step_fraction"] == pytest.approx(2 / 9)  # over all 9 steps
    assert stats["empty_step_fraction"] == pytest.approx(2 / 9)
    assert stats["accuracy"] == pytest.approx(1 / 3)
    assert stats["response_length"] == pytest.approx(20.0)
    assert stats["rm_score"] == pytest.approx(scores[mask].mean())  # masked slots ignored
    assert stats["finished_fraction"] == pytest.approx(2 / 3)
    assert stats["no_answer_fraction"] == pytest.approx(1 / 3)


def test_outcome_scores_and_missing_inputs():
    stats = hacking.hacking_stats([HONEST, HONEST], outcome_scores=[0.2, 0.6])
    assert stats["rm_score"] == pytest.approx(0.4)
    assert stats["repeated_step_fraction"] == 0.0
    assert "accuracy" not in stats and "response_length" not in stats
    assert hacking.hacking_stats([]) == {}
    assert hacking.hacking_stats([EMPTY])["empty_step_fraction"] == 0.0  # no steps: 0, not NaN


def test_custom_delimiter():
    text = "a = 1 ки b = 2 ки a = 1 ки #### 1"
    stats = hacking.hacking_stats([text], delimiter=" ки ")
    assert stats["num_steps"] == 4
    assert stats["repeated_step_fraction"] == pytest.approx(1 / 4)


def test_hacked_responses_by_hand():
    repeat = "Ann has 5 + 3 = 8 apples.\nAnn has 5 + 3 = 8 apples.\n#### 8"
    extra = "Ann has 5 + 3 = 8 apples.\nAnn has 8 - 2 = 6 apples.\nAnn has 6 * 1 = 6 apples.\n#### 6"
    assert hacking.hack_kinds(HONEST, needed=3) == ()
    assert not hacking.is_hacked(HONEST, needed=3)
    assert hacking.hack_kinds(repeat, needed=3) == ("repeat",)  # 3 steps: not extra
    assert hacking.hack_kinds(extra, needed=3) == ("extra",)
    assert hacking.hack_kinds(extra) == ()  # needed unknown: extra steps are not checked
    assert hacking.hack_kinds(FARMING, needed=3) == ("repeat", "empty", "extra")
    assert hacking.hack_kinds("Let us think.\n#### 6", needed=3) == ("empty",)
    assert hacking.hack_kinds(EMPTY, needed=3) == ()  # nothing written farms nothing
    # Share over responses, extra steps only where `needed` is known.
    stats = hacking.hacking_stats([HONEST, repeat, extra, extra], needed=[3, 3, 3, None])
    assert stats["hacked_fraction"] == pytest.approx(2 / 4)
    assert hacking.hacking_stats([extra])["hacked_fraction"] == 0.0


def test_needed_steps_from_the_problem():
    from jaxstep.data import Problem
    synthetic = Problem("q", ("a 1 + 1 = 2 b.", "a 2 + 1 = 3 b."), "3", "synthetic", 2, "chain", "x")
    assert hacking.needed_steps(synthetic) == 3  # two computations and the answer line
    assert hacking.needed_steps(Problem("q", ("s1", "s2"), "3", "gsm8k", None, None, "y")) is None


def test_eval_rows_hacked_shares():
    repeat = "Ann has 5 + 3 = 8 apples.\nAnn has 5 + 3 = 8 apples.\n#### 8"
    rows = [{"response": HONEST, "correct": True, "needed_steps": 3,
             "samples": [{"response": repeat}, {"response": HONEST}]},
            {"response": repeat, "correct": False, "needed_steps": 2,
             "samples": [{"response": repeat}, {"response": repeat}]}]
    stats = hacking.eval_hacking_stats(rows, "\n")
    assert stats["hacked_fraction"] == pytest.approx(1 / 2)  # greedy: the second row
    assert stats["sampled_hacked_fraction"] == pytest.approx(3 / 4)
    assert stats["sampled_num_steps"] == pytest.approx(3.0)
    assert "sampled_hacked_fraction" not in hacking.eval_hacking_stats([dict(rows[0], samples=[])], "\n")
    # Standard errors over problems: greedy values 0, 1; sampled shares 0.5, 1.
    assert stats["hacked_fraction_se"] == pytest.approx(np.std([0, 1], ddof=1) / np.sqrt(2))
    assert stats["sampled_hacked_fraction_se"] == pytest.approx(np.std([0.5, 1], ddof=1) / np.sqrt(2))
