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
count as inference FLOPs of every question). A reranker reorders a first ranker's best
facts (`pools`, `reranked`); `recall_of_rankings` measures any ranking's recall.

A program's operand facts (`operand_facts`) are the facts that hold a number its steps
use or the row a table step names: weak labels for records without annotated facts.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from finprog import dsl
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
    """Okapi BM25 (rank-bm25) over one page's candidates, the page being the collection; `read_words` splits a
    text into the words BM25 counts (`tokens`)."""

    name = "bm25"

    def __init__(self, read_words: Callable[[str], list[str]] = tokens):
        self.read_words = read_words

    def scores(self, question: str, facts: Sequence[Fact]) -> list[float]:
        from rank_bm25 import BM25Okapi

        if not facts:
            return []
        index = BM25Okapi([self.read_words(fact.text) or ["\0"] for fact in facts])
        return [float(score) for score in index.get_scores(self.read_words(question))]

    def flops(self, question: str, facts: Sequence[Fact]) -> float:
        """Not counted: a lexical ranker's arithmetic is a few thousand operations, recorded as 0."""
        return 0.0


STOP_WORDS = frozenset(
    "a an and are as at be by did do does for from how in is it its of on or that the their this to was "
    "were what which with".split())
_YEAR = re.compile(r"\b(?:19|20)\d\d\b")
_CUES = (("total",), ("percent", "percentage", "portion", "%"), ("average",),
         ("change", "growth", "increase", "decrease", "difference"), ("ratio",))


def years(text: str) -> list[str]:
    """The years from 1900 to 2099 that a text writes, in order."""
    return _YEAR.findall(text)


def fact_features(question: str, facts: Sequence[Fact], read_words: Callable[[str], list[str]] = tokens,
                  read_years: Callable[[str], list[str]] = years) -> list[dict[str, float]]:
    """What the linear ranker weighs for each fact: BM25 (score, share of the page's best, rank), word,
    row-label and year overlap with the question, the kind and place of the fact, and question cues
    ("total", "percent", ...) crossed with the fact's kind. `read_words` and `read_years` read a text's words
    and years (the linear ranker's: `tokens` and `years`)."""
    bm25 = BM25Ranker(read_words).scores(question, facts)
    best = max(bm25, default=0.0) or 1.0
    rank = {i: r for r, i in enumerate(sorted(range(len(facts)), key=lambda i: -bm25[i]))}
    words = set(read_words(question)) - STOP_WORDS
    asked_years = set(read_years(question))
    cues = [bool(words & set(cue)) for cue in _CUES]
    sentences = sum(fact.row is None for fact in facts) or 1
    rows = (len(facts) - sentences) or 1
    features = []
    for i, fact in enumerate(facts):
        row = fact.row is not None
        label = set(read_words(fact.row[0])) - STOP_WORDS if row else set()
        fact_years = set(read_years(fact.text))
        total = row and "total" in label
        feature = {
            "bm25": bm25[i], "bm25_share": bm25[i] / best, "bm25_reciprocal_rank": 1 / (1 + rank[i]),
            "bm25_top3": float(rank[i] < 3), "bm25_top5": float(rank[i] < 5),
            "word_overlap": len(words & set(read_words(fact.text))) / (len(words) or 1),
            "label_overlap": len(words & label) / (len(words) or 1),
            "label_in_question": float(bool(label) and label <= words),
            "year_overlap": len(asked_years & fact_years) / len(asked_years) if asked_years else 0.0,
            "years_missing": float(bool(asked_years) and not asked_years & fact_years),
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
    (evals/retrieval/train_ranker.py writes its weights, `finprog/ranker_linear.json`). Its FLOPs, one
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
`scores(question, facts)` and `flops(question, facts)`, such as the two of `finprog.cross_encoders`."""


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


def best_first(facts: Sequence[Fact], scores: Sequence[float]) -> list[Fact]:
    """`facts` ordered by their `scores`, highest first (ties keep the order given)."""
    order = sorted(range(len(facts)), key=lambda i: -scores[i])
    return [facts[i] for i in order]


def ranked(example: Example, rank) -> list[Fact]:
    """The page's candidates, best first (ties keep page order)."""
    facts = candidates(example)
    return best_first(facts, rank.scores(example.question, facts))


class Pool(NamedTuple):
    """A ranker's best facts of one page, best first, with their scores: what a reranker reorders."""

    example: Example
    facts: list[Fact]
    scores: list[float]


def pools(examples: Iterable[Example], rank, size: int) -> list[Pool]:
    """Each example's `size` best facts under `rank` (ties keep page order) and their scores."""
    result = []
    for example in examples:
        facts = candidates(example)
        scores = rank.scores(example.question, facts)
        order = sorted(range(len(facts)), key=lambda i: -scores[i])[:size]
        result.append(Pool(example, [facts[i] for i in order], [scores[i] for i in order]))
    return result


def reranked(pooled: Sequence[Pool], scores: Sequence[float] | None = None) -> list[list[Fact]]:
    """Each pool's facts reordered by `scores`, one per pooled fact, pool after pool (as a reranker scores them
    all at once); None keeps each pool's own order. Facts outside a pool are never ranked."""
    rankings, offset = [], 0
    for pool in pooled:
        width = len(pool.facts)
        rankings.append(list(pool.facts) if scores is None else best_first(pool.facts, scores[offset:offset + width]))
        offset += width
    return rankings


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


def format_recall(named: dict[str, list[Recall]], operands: bool = False) -> str:
    """A table of full and mean recall (with `operands`, operand recall too) at each k of each named ranking."""
    width = max(map(len, named)) + 2
    lines = [f"{'ranker':<{width}}{'k':>3}{'full_recall':>13}{'mean_recall':>13}" + ("  operand_recall" * operands)]
    for name, recalls in named.items():
        for r in recalls:
            extra = f"{r.operand_recall:>16.3f}" if operands else ""
            lines.append(f"{name:<{width}}{r.k:>3}{r.full_recall:>13.3f}{r.mean_recall:>13.3f}{extra}")
    return "\n".join(lines)


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
    return recall_of_rankings(annotated, [ranked(e, rank) for e in annotated], ks)


def recall_of_rankings(examples: Sequence[Example], rankings: Sequence[Sequence[Fact]],
                       ks: Sequence[int]) -> list[Recall]:
    """`recall_at_k` of given rankings: each example (every one with gold facts) keeps the first k facts of its
    ranking (`rankings[i]`, best first; a shorter ranking keeps all it holds)."""
    if len(rankings) != len(examples):
        raise ValueError(f"{len(rankings)} rankings for {len(examples)} examples")
    n = len(examples)
    chars_page = sum(map(context_chars, examples)) / n
    needed = [needed_operands(e) for e in examples]
    n_operands = sum(operands is not None for operands in needed)
    results = []
    for k in ks:
        full = mean = chars = with_operands = 0.0
        for example, order, operands in zip(examples, rankings, needed):
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


_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def written_numbers(text: str) -> set[float]:
    """The numbers a text writes, by size: without thousands commas, signs or percent signs."""
    return {float(number.replace(",", "")) for number in _NUMBER.findall(text)}


def operand_facts(example: Example, unique: bool = False) -> set[str]:
    """Keys of the page's facts that hold a number the gold program uses as an argument (compared by size,
    `written_numbers` of a row's cells or a sentence), and of the rows its table steps name (case and outer
    spaces aside). With `unique`, a number marks a fact only when no other fact holds it. The gold program must
    parse (`dsl.ProgramError` otherwise)."""
    facts = candidates(example)
    held = [written_numbers(" ".join(fact.row[1:]) if fact.row else fact.text) for fact in facts]
    keys = set()
    for step in dsl.parse(example.program).steps:
        for arg in (step.first, step.second):
            if isinstance(arg, dsl.Literal) and not arg.text.startswith("const_"):
                value = abs(float(arg.text.replace(",", "").rstrip("%")))
                holders = [fact.key for fact, values in zip(facts, held) if value in values]
                if not unique or len(holders) == 1:
                    keys.update(holders)
            elif isinstance(arg, dsl.Row):
                label = arg.label.strip().lower()
                keys.update(fact.key for fact in facts if fact.row and fact.row[0].strip().lower() == label)
    return keys


def weakly_labelled(examples: Iterable[Example], unique: bool = False) -> list[Example]:
    """`examples` with their `operand_facts` as `gold_inds` (weak labels to train a ranker on records without
    annotated facts); a record whose program finds no fact is left out."""
    labelled = (replace(e, gold_inds=dict.fromkeys(operand_facts(e, unique), "")) for e in examples)
    return [e for e in labelled if e.gold_inds]
