"""Reading answers out of text and the exact / tolerant / similarity scores."""

import pytest

from finprog.answers import Reading, exact_match, parse_answer, read_answer, similarity, tolerant_match


@pytest.mark.parametrize(
    "text, expected",
    [
        ("34.7", 34.7),
        ("  34.7%\n", 34.7),
        ("The answer is 1,234.5", 1234.5),
        ("$ 1,063,076", 1063076.0),
        ("$2.9 billion", 2.9),
        ("(12.5)", -12.5),
        ("($ 12.5)", -12.5),
        ("(12.5%)", -12.5),
        ("-3.2%", -3.2),
        ("\u22123.2", -3.2),
        ("$ -4", -4.0),
        ("-$4", -4.0),
        ("+5", 5.0),
        ("The answer - 5", 5.0),
        ("$ - 4", 4.0),
        ("is-3", 3.0),
        (".33%", 0.33),
        ("Final answer: 12. Because", 12.0),
        ("1,2345", 1.0),
        ("4.9\\n", 4.9),
        ("101 stores created per year", 101.0),
        ("Yes, it did", "yes"),
        ("The answer is no.", "no"),
        ("No. 5", "no"),
        ("5 but no", 5.0),
        ("the Q3 total is 7", 7.0),
        ("see note (3 items)", 3.0),
        ("nothing here", None),
        ("", None),
        ("notably none", None),
    ],
)
def test_read_answer(text, expected):
    assert read_answer(text) == expected


@pytest.mark.parametrize(
    "text, reading",
    [
        ("34.7%", Reading(34.7, decimals=1, percent=True)),
        ("127.40", Reading(127.4, decimals=2)),
        ("380", Reading(380.0)),
        ("12 percent", Reading(12.0, percent=True)),
        ("$ 2.9 billion", Reading(2.9, decimals=1, scale=10**9)),
        ("$ 73576 thousand", Reading(73576.0, scale=10**3)),
        ("3 millions of shares", Reading(3.0, scale=10**6)),
        ("1,234,567.25", Reading(1234567.25, decimals=2)),
        ("$ 386797190 or $ 386.8 million", Reading(386797190.0)),
        ("YES", Reading("yes")),
    ],
)
def test_parse_answer_keeps_how_it_was_written(text, reading):
    assert parse_answer(text) == reading


@pytest.mark.parametrize(
    "predicted, exe_ans, expected",
    [
        (0.347, 0.347, True),
        (0.3470000001, 0.347, True),
        (0.34701, 0.347, False),
        (34.7, 0.347, False),  # exact does not rescale percents
        (4.855142, 4.85514, True),
        (-16.0, -16.0, True),
        ("yes", "yes", True),
        ("no", "yes", False),
        (1.0, "yes", False),
        (None, 3.0, False),
        (3.0, None, False),
        (float("inf"), 3.0, False),
        (float("nan"), 3.0, False),
    ],
)
def test_exact_match(predicted, exe_ans, expected):
    assert exact_match(predicted, exe_ans) is expected


@pytest.mark.parametrize(
    "predicted, answer, exe_ans, expected",
    [
        # precision shown by the gold answer
        (34.72, "34.7%", 0.34719, True),
        (34.8, "34.7%", 0.34719, False),
        (34.65, "34.7%", 0.34719, True),  # half rounds away from zero
        (34.75, "34.7%", 0.34719, False),
        (34.649, "34.7%", 0.34719, False),
        (127.404, "127.40", 127.4, True),
        (127.41, "127.40", 127.4, False),
        (380.4, "380", 380.0, True),
        (380.5, "380", 380.0, False),
        (379.5, "380", 380.0, True),
        # negative numbers
        (-3.245, "-3.25", -3.245, True),
        (-3.255, "-3.25", -3.245, False),
        (-12.4, "-12.4%", -0.1239, True),
        (12.4, "-12.4%", -0.1239, False),
        (-0.04, "0.0", 0.0, True),
        # percent scale, both directions
        (0.347, "34.7%", 34.7, True),
        (0.3472, "34.7%", 0.34719, True),
        (0.348, "34.7%", 0.34719, False),
        (34.7, "0.347", 0.347, True),
        (0.279, "27.9", 0.279, True),
        (27.9, "27.9", 0.279, True),
        (3470.0, "34.7%", 0.347, False),
        # scale words
        (2.9, "$ 2.9 billion", 2.9, True),
        (2_912_000_000.0, "$ 2.9 billion", 2.9, True),
        (2_960_000_000.0, "$ 2.9 billion", 2.9, False),
        (73576.0, "$ 73576 thousand", 73576.0, True),
        # large values with thousands separators
        (1063076.5, "1,063,076.5", 1063076.5, True),
        (1063076.0, "1,063,076.5", 1063076.5, False),
        # answer strings with no number fall back to exe_ans at its shown decimals
        (1393.4, "", 1393.0, True),
        (1393.5, "", 1393.0, False),
        (0.224641, "", 0.22464, True),
        (0.22465, "", 0.22464, False),
        (5.0, "n/a", None, False),
        # yes / no
        ("yes", "yes", "yes", True),
        ("no", "yes", "yes", False),
        (1.0, "yes", "yes", False),
        ("yes", "1", 1.0, False),
        # no prediction, or a value no person would write
        (None, "34.7%", 0.347, False),
        (float("inf"), "34.7%", 0.347, False),
        (float("nan"), "34.7%", 0.347, False),
        (1e300, "34.7%", 0.347, False),
    ],
)
def test_tolerant_match(predicted, answer, exe_ans, expected):
    assert tolerant_match(predicted, answer, exe_ans) is expected


def test_tolerant_accepts_whatever_exact_accepts():
    # the older release's answer string disagrees with the executed value ("708716.6" vs 1063076.5)
    assert exact_match(1063076.5, 1063076.5)
    assert tolerant_match(1063076.5, "708716.6", 1063076.5)


def test_metrics_agree_for_text_and_executed_values():
    completion = "The answer is 34.72%"
    assert tolerant_match(read_answer(completion), "34.7%", 0.34719)
    assert tolerant_match(0.347193, "34.7%", 0.34719)


def test_similarity_is_difflib_ratio_of_stripped_completion():
    assert similarity("  34.7%\n", "34.7%") == 1.0
    assert similarity("34.7", "34.7%") == pytest.approx(8 / 9)
    assert similarity("", "34.7%") == 0.0
