"""Answers: reading a number (or yes/no) out of free text, and the match rules that score it.

Three scores compare a prediction with a FinQA record; direct mode passes the value read
from a completion (`read_answer`), program mode passes the value its program executed to.

- `exact_match`: FinQA's execution rule. The prediction rounded to 5 decimals
  (`round(x, 5)`) equals the record's `exe_ans`; "yes"/"no" must be equal.
- `tolerant_match`: EmAcc as a person would grade it; the rule is spelled out in
  `tolerant_match`'s docstring.
- `similarity`: a reference score, difflib's ratio between the stripped completion
  and the gold answer string.

Reading rules (`parse_answer`): the first number or standalone yes/no in the text wins.
Thousands separators (`1,234.5`), currency signs, `+`/`-`/unicode minus signs and
accounting parentheses (`(12.5)` is -12.5) are understood. A percent sign is kept as
written ("34.7%" reads as 34.7, marked as a percent). Scale words (thousand, million,
billion, trillion) are recorded but do not multiply: "$ 2.9 billion" reads as 2.9,
because FinQA states amounts in the units the report uses (the `exe_ans` of the answer
"$ 103.7 million" is 103.7).
"""

from __future__ import annotations

import decimal
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from difflib import SequenceMatcher
from typing import Literal

YesNo = Literal["yes", "no"]
Value = float | YesNo
"""A scored value: a number, or "yes"/"no" for comparison questions."""

_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_MINUS_SIGNS = "-\u2212\u2013"  # hyphen-minus, unicode minus, en dash

_NUMBER = re.compile(
    r"""
    (?<![\w.,])                                   # not the tail of a word or a number
    (?P<open>\()?
    (?P<sign>[-+\u2212\u2013])?                  # a sign touches the number or its currency sign
    (?:[$\u20ac\u00a3]\s*)?                       # $, euro, pound
    (?P<sign_after_currency>[-+\u2212\u2013])?
    (?P<number>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)? | \d+(?:\.\d+)? | \.\d+)
    (?P<percent>\s*%|\s*per\s?cent\b)?
    (?P<close>\))?
    (?:\s*(?P<scale>thousand|million|billion|trillion)s?\b)?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)

# Enough digits to round any float exactly, so no comparison depends on the default precision (28).
_EXACT = decimal.Context(prec=400, rounding=decimal.ROUND_HALF_UP)


@dataclass(frozen=True)
class Reading:
    """A value read from text, with how it was written."""

    value: Value
    """The number as written (34.7 for "34.7%", 2.9 for "$ 2.9 billion"), or "yes"/"no"."""
    decimals: int = 0
    """Digits shown after the decimal point: 1 for "34.7%", 2 for "127.40", 0 for "1,234"."""
    percent: bool = False
    """Written with a percent sign (or the word percent)."""
    scale: int = 1
    """The scale word's factor (10**9 for "billion"), 1 when there is none."""


def parse_answer(text: str) -> Reading | None:
    """The first number or standalone yes/no in `text`, with how it was written; None when there is neither."""
    number = _NUMBER.search(text)
    yes_no = _YES_NO.search(text)
    if yes_no and (number is None or yes_no.start() < number.start()):
        return Reading(value=yes_no.group(1).lower())
    if number is None:
        return None
    digits = number.group("number").replace(",", "")
    minus = any(number.group(key) and number.group(key) in _MINUS_SIGNS for key in ("sign", "sign_after_currency"))
    parenthesised = bool(number.group("open") and number.group("close"))
    value = float(digits)
    scale = number.group("scale")
    return Reading(
        value=-value if minus or parenthesised else value,
        decimals=len(digits.partition(".")[2]),
        percent=bool(number.group("percent")),
        scale=_SCALES[scale.lower()] if scale else 1,
    )


def read_answer(text: str) -> Value | None:
    """The first number or yes/no in a completion ("The answer is $1,234.5" -> 1234.5); None when there is none."""
    reading = parse_answer(text)
    return reading.value if reading else None


def exact_match(predicted: Value | None, exe_ans: float | str | None) -> bool:
    """FinQA's execution rule: `round(predicted, 5) == exe_ans`, or equal yes/no.

    A record without `exe_ans` (the older FinQA release) never matches.
    """
    if predicted is None or exe_ans is None:
        return False
    if isinstance(predicted, str) or isinstance(exe_ans, str):
        return predicted == exe_ans
    return math.isfinite(predicted) and round(predicted, 5) == exe_ans


def tolerant_match(predicted: Value | None, answer: str, exe_ans: float | str | None) -> bool:
    """EmAcc as a person would grade it.

    The gold is the first number (or yes/no) in the record's answer string, read by
    `parse_answer`; when the answer string has none, it is `exe_ans` (shown with the
    decimals its shortest form has: 0.22464 shows 5, 1393.0 shows 0). A numeric
    prediction matches when it, rounded half away from zero to the number of decimals
    the gold shows, equals the gold: for "34.7%" (1 decimal) 34.72 and 34.65 match,
    34.75 and 34.8 do not; "127.40" is compared at 2 decimals, "380" at 0; "-3.25"
    matches -3.245 but not -3.255. A ratio may be given as a fraction or as a
    percentage, because FinQA itself writes it either way (answer "34.7%" with exe_ans
    0.347, answer "27.9" with exe_ans 0.279): the prediction also matches when 100
    times it matches the gold (0.347 for "34.7%" or "27.9"), and, when the gold is not
    written with a percent sign, when one hundredth of it does (34.7 for "0.347"; but
    3470 is not "34.7%"). When the gold names a scale ("$ 2.9 billion"), the amount in
    units (2,900,000,000) matches as well. Yes/no must be equal; no prediction (None)
    never matches. Whatever `exact_match` accepts also matches, so tolerant accuracy
    is never below exact accuracy.
    """
    if exact_match(predicted, exe_ans):
        return True
    gold = parse_answer(answer) or _reading_of(exe_ans)
    if predicted is None or gold is None:
        return False
    if isinstance(predicted, str) or isinstance(gold.value, str):
        return predicted == gold.value
    if not math.isfinite(predicted):
        return False
    with decimal.localcontext(_EXACT):
        unit = Decimal(1).scaleb(-gold.decimals)
        target = Decimal(repr(gold.value)).quantize(unit)
        shown = Decimal(repr(float(predicted)))
        candidates = [shown, shown.scaleb(2), shown / gold.scale]
        if not gold.percent:
            candidates.append(shown.scaleb(-2))
        return any(candidate.quantize(unit) == target for candidate in candidates)


def similarity(completion: str, answer: str) -> float:
    """A reference similarity score: difflib's ratio between the stripped completion and the answer string."""
    return SequenceMatcher(None, completion.strip(), answer).ratio()


def _reading_of(exe_ans: float | str | None) -> Reading | None:
    """`exe_ans` as a gold reading, showing the decimals of its shortest form."""
    if exe_ans is None:
        return None
    if isinstance(exe_ans, str):
        return parse_answer(exe_ans)
    if not math.isfinite(exe_ans):
        return None
    exponent = Decimal(repr(float(exe_ans))).normalize().as_tuple().exponent
    return Reading(value=float(exe_ans), decimals=max(0, -int(exponent)))
