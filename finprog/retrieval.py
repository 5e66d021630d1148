"""Retrieval: the candidate facts of a report page, rankers, the top-k context a prompt shows, and recall@k.

A page's candidates are its sentences (pre text, then post text) and its table rows,
keyed as FinQA's `gold_inds` key them: `text_i` counts pre and post text together,
`table_j` counts rows from the header (`table_0`). A row is ranked as FinQA's
annotators verbalized it ("the {row label} of {column header} is {value} ;" per cell),
so the question's words and years can meet it; it is shown to the model as a table row
under the table's header, so row labels read exactly as the executor needs them.

Contexts (`select_context`): "page" shows the whole page, "retrieved" the top k facts
of a ranker in page order, "gold" the annotated supporting facts (an oracle for
analysis). Programs always execute over the full table.

Rankers: "bm25" (lexical, rank-bm25 over tokens that keep numbers, years and percent
signs; its FLOPs are recorded as 0, not counted) and "linear" (a logistic regression over
BM25 and overlap features, trained on training records' gold facts; its dot products
count as inference FLOPs of every question).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from finprog.data import Example, first_without_page
from finprog.errors import FinprogError
from finprog.operands import needed_operands, writes

CONTEXTS = ("page", "retrieved", "gold")
DEFAULT_CONTEXT = "retrieved"
DEFAULT_TOP_K = 5
DEFAULT_RANKER = "linear"

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?|[a-z]+|%")


class RetrievalError(FinprogError, ValueError):
    """A context, ranker or k that cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class Fact:
    """One candidate: its `gold_inds` key, the text a ranker reads, and the table row it shows (None for a sentence)."""

    key: str
    text: str
    row: tuple[str, ...] | None = None

    @property
    def index(self) -> int:
        return int(self.key.rsplit("_", 1)[1])


def verbalize_row(header: Sequence[str], row: Sequence[str]) -> str:
    """A table row as FinQA's gold facts write it: "{header[0]} the {label} of {column} is {value} ; ..."."""
    lead = f"{header[0]} " if header and header[0] else ""
    cells = " ".join(f"the {row[0]} of {column} is {value} ;" for column, value in zip(header[1:], row[1:]))
    return lead + cells


def candidates(example: Example) -> list[Fact]:
    """Every sentence and table row of the page, in page order (sentences first, as FinQA numbers them)."""
    sentences = [*example.pre_text, *example.post_text]
    facts = [Fact(f"text_{i}", sentence) for i, sentence in enumerate(sentences)]
    header = example.table[0] if example.table else []
    facts += [Fact(f"table_{j}", verbalize_row(header, row), tuple(row)) for j, row in enumerate(example.table)]
    return facts


def tokens(text: str) -> list[str]:
    """Lower-case words and numbers; a number keeps its decimal point, thousands commas and percent sign."""
    return _TOKEN.findall(text.lower())


class BM25Ranker:
    """Okapi BM25 (rank-bm25) over one page's candidates, the page being the collection."""

    name = "bm25"

    def scores(self, question: str, facts: Sequence[Fact]) -> list[float]:
        from rank_bm25 import BM25Okapi

        if not facts:
            return []
        index = BM25Okapi([tokens(fact.text) or ["\0"] for fact in facts])
        return [float(score) for score in index.get_scores(tokens(question))]

    def flops(self, question: str, facts: Sequence[Fact]) -> float:
        """Not counted: a lexical ranker's arithmetic is a few thousand operations, recorded as 0."""
        return 0.0


STOP_WORDS = frozenset(
    "a an and are as at be by did do does for from how in is it its of on or that the their this to was "
    "were what which with".split())
_YEAR = re.compile(r"\b(?:19|20)\d\d\b")
_CUES = (("total",), ("percent", "percentage", "portion", "%"), ("average",),
         ("change", "growth", "increase", "decrease", "difference"), ("ratio",))


def fact_features(question: str, facts: Sequence[Fact]) -> list[dict[str, float]]:
    """What the linear ranker weighs for each fact: BM25 (score, share of the page's best, rank), word,
    row-label and year overlap with the question, the kind and place of the fact, and question cues
    ("total", "percent", ...) crossed with the fact's kind."""
    bm25 = BM25Ranker().scores(question, facts)
    best = max(bm25, default=0.0) or 1.0
    rank = {i: r for r, i in enumerate(sorted(range(len(facts)), key=lambda i: -bm25[i]))}
    words = set(tokens(question)) - STOP_WORDS
    years = set(_YEAR.findall(question))
    cues = [bool(words & set(cue)) for cue in _CUES]
    sentences = sum(fact.row is None for fact in facts) or 1
    rows = (len(facts) - sentences) or 1
    features = []
    for i, fact in enumerate(facts):
        row = fact.row is not None
        label = set(tokens(fact.row[0])) - STOP_WORDS if row else set()
        fact_years = set(_YEAR.findall(fact.text))
        total = row and "total" in label
        feature = {
            "bm25": bm25[i], "bm25_share": bm25[i] / best, "bm25_reciprocal_rank": 1 / (1 + rank[i]),
            "bm25_top3": float(rank[i] < 3), "bm25_top5": float(rank[i] < 5),
            "word_overlap": len(words & set(tokens(fact.text))) / (len(words) or 1),
            "label_overlap": len(words & label) / (len(words) or 1),
            "label_in_question": float(bool(label) and label <= words),
            "year_overlap": len(years & fact_years) / len(years) if years else 0.0,
            "years_missing": float(bool(years) and not years & fact_years),
            "is_row": float(row), "is_header": float(fact.key == "table_0"), "is_total_row": float(total),
            "has_number": float(any(c.isdigit() for c in fact.text)),
            "text_position": 0.0 if row else fact.index / sentences,
            "row_position": fact.index / rows if row else 0.0,
            "log_length": math.log1p(len(fact.text)),
        }
        for cue, asked in zip(_CUES, cues):
            feature[f"{cue[0]}_asked_row"] = float(asked and row)
            feature[f"{cue[0]}_asked_total_row"] = float(asked and total)
        features.append(feature)
    return features


class LinearRanker:
    """A logistic-regression score over `fact_features`, trained on training records' gold facts only
    (evals/train_ranker.py writes its weights, `finprog/ranker_linear.json`). Its FLOPs, one
    dot product per fact, are counted; the features' own arithmetic is lexical and is not."""

    name = "linear"
    WEIGHTS = Path(__file__).with_name("ranker_linear.json")

    def __init__(self, weights: dict):
        self.weights = weights

    @classmethod
    def load(cls, path: Path | None = None) -> LinearRanker:
        return cls(json.loads(Path(path or cls.WEIGHTS).read_text(encoding="utf-8")))

    def scores(self, question: str, facts: Sequence[Fact]) -> list[float]:
        w = self.weights
        return [w["bias"] + sum(w["coef"][n] * (f[n] - w["mean"][n]) / w["scale"][n] for n in w["coef"])
                for f in fact_features(question, facts)]

    def flops(self, question: str, facts: Sequence[Fact]) -> float:
        """A multiply and an add per feature (with its standardization: four) and fact."""
        return 4.0 * len(self.weights["coef"]) * len(facts)


RANKERS = {"bm25": BM25Ranker, "linear": LinearRanker.load}
"""Each ranker's name and how to build it. A library user may add one, built as an object with
`scores(question, facts)` and `flops(question, facts)` (evals/context_dev.py --minilm adds a cross-encoder)."""


@functools.cache
def ranker(name: str):
    """The ranker called `name` (one of `RANKERS`), built once per process."""
    check_ranker(name)
    return RANKERS[name]()


def check_ranker(name: str) -> None:
    """Refuse a ranker name that `RANKERS` does not hold."""
    if name not in RANKERS:
        raise RetrievalError(f"unknown ranker {name!r}; choose one of {', '.join(RANKERS)}")


def check_options(context: str, top_k: int, ranker_name: str) -> None:
    """Refuse an unknown context or ranker, or a k below 1, before anything is loaded."""
    if context not in CONTEXTS:
        raise RetrievalError(f"unknown context {context!r}; choose one of {', '.join(CONTEXTS)}")
    if top_k < 1:
        raise RetrievalError(f"--top-k must be at least 1, got {top_k}")
    check_ranker(ranker_name)


def check_gold(examples: Iterable[Example], where: str) -> None:
    """Refuse `--context gold` when a record has no annotated supporting facts, naming the first."""
    for example in examples:
        if not example.gold_inds:
            raise RetrievalError(f"--context gold needs gold_inds, and {where} record {example.id!r} has none")


def ranked(example: Example, rank) -> list[Fact]:
    """The page's candidates, best first (ties keep page order)."""
    facts = candidates(example)
    scores = rank.scores(example.question, facts)
    order = sorted(range(len(facts)), key=lambda i: -scores[i])
    return [facts[i] for i in order]


def top_facts(example: Example, k: int, rank) -> list[Fact]:
    """The k best candidates, in page order."""
    kept = ranked(example, rank)[:k]
    return [fact for fact in candidates(example) if fact in kept]


def gold_facts(example: Example) -> list[Fact]:
    """The annotated supporting facts, in page order (a key the page lacks is skipped)."""
    return [fact for fact in candidates(example) if fact.key in example.gold_inds]


def with_facts(example: Example, facts: Sequence[Fact]) -> Example:
    """`example` showing only `facts`: kept sentences as pre/post text, kept rows under the table's header."""
    keys = {fact.key for fact in facts}
    pre = len(example.pre_text)
    rows = [row for j, row in enumerate(example.table) if j > 0 and f"table_{j}" in keys]
    header = example.table[:1] if (rows or "table_0" in keys) else []
    return replace(
        example,
        pre_text=[s for i, s in enumerate(example.pre_text) if f"text_{i}" in keys],
        post_text=[s for j, s in enumerate(example.post_text) if f"text_{pre + j}" in keys],
        table=header + rows,
    )


def select_context(example: Example, context: str, k: int, rank) -> Example:
    """The page as a prompt shows it under `context` ("page", "retrieved" or "gold")."""
    if context == "page":
        return example
    if context == "gold":
        if not example.gold_inds:
            raise RetrievalError(f"--context gold needs gold_inds, and record {example.id!r} has none")
        return with_facts(example, gold_facts(example))
    return with_facts(example, top_facts(example, k, rank))


def context_chars(example: Example) -> int:
    """Characters of a page's text and table cells (what `retrieve` reports as context size)."""
    return sum(map(len, example.pre_text)) + sum(map(len, example.post_text)) + sum(
        len(cell) for row in example.table for cell in row)


@dataclass(frozen=True)
class Recall:
    """Recall of the gold facts at one k over the records that have them, and of the gold programs' operands over
    those of them whose page writes every operand (`n_operands`; `operand_recall` is None when none does)."""

    n: int
    k: int
    full_recall: float
    mean_recall: float
    chars_page: float
    chars_retrieved: float
    n_operands: int
    operand_recall: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def recall_at_k(examples: Sequence[Example], rank, ks: Sequence[int], where: str = "the data") -> list[Recall]:
    """Full and mean recall of `gold_inds` at each k, the context kept, and the share of records whose kept facts
    write every number and row label of the gold program (`operands.writes`), over records with gold facts.

    RetrievalError, naming `where` (the file), when no record has gold facts or one has no page to rank."""
    annotated = [e for e in examples if e.gold_inds]
    if not annotated:
        raise RetrievalError(f"{where}: no record has gold_inds, so recall cannot be measured; give FinQA records "
                             "with their annotated facts (such as dev_200)")
    pageless = first_without_page(annotated)
    if pageless:
        raise RetrievalError(f"{where}: record {pageless!r} has no page (no text, no table) to retrieve facts from; "
                             "measure recall on FinQA records with pages")
    orders = [ranked(e, rank) for e in annotated]
    n = len(annotated)
    chars_page = sum(map(context_chars, annotated)) / n
    needed = [needed_operands(e) for e in annotated]
    n_operands = sum(operands is not None for operands in needed)
    results = []
    for k in ks:
        full = mean = chars = with_operands = 0.0
        for example, order, operands in zip(annotated, orders, needed):
            kept = {fact.key for fact in order[:k]}
            found = sum(key in kept for key in example.gold_inds) / len(example.gold_inds)
            full += found == 1.0
            mean += found
            shown = with_facts(example, order[:k])
            chars += context_chars(shown)
            with_operands += operands is not None and writes(shown, operands)
        operand_recall = with_operands / n_operands if n_operands else None
        results.append(Recall(n, k, full / n, mean / n, chars_page, chars / n, n_operands, operand_recall))
    return results
