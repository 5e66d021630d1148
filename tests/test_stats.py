"""Wilson intervals and the exact McNemar test against values computed independently."""

import math

import pytest

from finprog.stats import mcnemar_p, paired, wilson_interval


@pytest.mark.parametrize(("correct", "n", "low", "high"), [
    (40, 100, 0.3094, 0.4980),  # Wilson's formula by hand: centre 0.4038, half-width 0.0943
    (0, 100, 0.0, 0.0370),
    (100, 100, 0.9630, 1.0),
    (1, 2, 0.0945, 0.9055),
])
def test_wilson_interval_matches_the_formula(correct, n, low, high):
    interval = wilson_interval(correct, n)
    assert interval == pytest.approx((low, high), abs=5e-5)
    assert interval[0] <= correct / n <= interval[1]


def test_wilson_interval_narrows_with_more_questions_and_refuses_impossible_counts():
    width = [b - a for a, b in (wilson_interval(n // 2, n) for n in (100, 200, 1147))]
    assert width == sorted(width, reverse=True) and 0.19 < width[0] < 0.2
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize(("only_a", "only_b", "p"), [
    (14, 21, 0.3105), (12, 9, 0.6636), (0, 0, 1.0), (0, 6, 0.03125), (5, 5, 1.0),
])
def test_exact_mcnemar_is_a_two_sided_binomial_test(only_a, only_b, p):
    assert mcnemar_p(only_a, only_b) == pytest.approx(p, abs=5e-5)
    assert mcnemar_p(only_b, only_a) == mcnemar_p(only_a, only_b)


def test_paired_counts_only_the_questions_both_runs_answered():
    a = {"q1": True, "q2": True, "q3": False, "q4": False, "extra": True}
    b = {"q1": True, "q2": False, "q3": True, "q4": False}
    test = paired(a, b)
    assert (test.n, test.both, test.only_a, test.only_b, test.neither) == (4, 1, 1, 1, 1)
    assert test.p == 1.0 and not test.significant and "4 shared questions" in test.describe()
    assert math.isclose(paired({str(i): True for i in range(8)}, {str(i): False for i in range(8)}).p, 2 / 2**8)
