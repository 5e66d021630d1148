"""Statistics for accuracies measured on a sample of questions: Wilson intervals and the exact McNemar test.

On 100 questions a 95% interval is about ±10 points, so a gap between two runs means little
without one. Two runs scored on the same questions are compared question by question: only
the questions one got right and the other did not carry information (McNemar), and the
exact test is a binomial(those questions, 1/2) test of how unevenly they split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ALPHA = 0.05


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct`/`n` (95% by default); (0, 1) for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is sound at 0% and 100%
    (Wilson 1927; Brown, Cai and DasGupta 2001 recommend it for small n).
    """
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be within 0..n, got {correct} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 and n the bound is p itself, which rounding would otherwise miss
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(only_a + only_b, 1/2) test of the smaller count (1 when no
    question parts the runs)."""
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Two runs question by question over the questions both answered."""

    n: int
    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def p(self) -> float:
        return mcnemar_p(self.only_a, self.only_b)

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def describe(self) -> str:
        return (f"{self.n} shared questions: both right {self.both}, only the first {self.only_a}, only the second "
                f"{self.only_b}, neither {self.neither}; exact McNemar p = {self.p:.2g}"
                + (" (significant at 5%)" if self.significant else " (not significant at 5%)"))


def paired(a: Mapping[str, bool], b: Mapping[str, bool]) -> Paired:
    """Compare two runs' per-question correctness (question id -> right) over the ids both have."""
    shared = a.keys() & b.keys()
    pairs = [(a[i], b[i]) for i in shared]
    return Paired(len(pairs), pairs.count((True, True)), pairs.count((True, False)), pairs.count((False, True)),
                  pairs.count((False, False)))
