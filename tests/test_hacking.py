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
