"""How much of the rankers' missed recall is facts that hold none of the program's operands? dev_200 and test_100.

A gold fact "holds an operand" when it holds a number that the gold program uses as an
argument, or is the row a table operation names (`retrieval.operand_facts`, the weak label
of evals/retrieval/ranker_variants.py --weak, kept to the gold facts). The other gold facts
are sentences such as "the following table sets forth ..." or ones that have nothing to do
with the question (the annotators' choice): a ranker can hardly learn them, and the program
never reads them.
1. Per ranker and k (dev_200, test_100, and train_2077's 609 for reference): full recall
   of the gold facts beside `operand_recall` (both as `finprog retrieve` prints them: the
   kept facts write every number and row label of the gold program), and the records
   that miss a gold fact although their kept facts write every operand.
2. How often the training records' annotators chose a sentence that announces a table
   (the 609 train_2077 records with gold facts): the base rate a ranker would learn.
3. A k chosen per question against a fixed k (the linear ranker, dev_200 and test_100):
   keep the facts whose score (the logistic regression's log-odds) passes a threshold,
   at least 3 and at most 10; mean k, full recall and operand recall.

    python evals/retrieval/recall_operands.py > evals/retrieval/recall_operands.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa.
"""

from __future__ import annotations

import re

from finprog import retrieval
from finprog.data import load_finqa, resolve_data
from finprog.operands import shows_operands
from finprog.provenance import header

KS = range(1, 11)
ANNOUNCES_TABLE = re.compile(r"following table|table below|as follows|follows :|:\s*\.?$")
"""A sentence that announces the table after it."""


def operand_facts(example) -> set[str]:
    """The gold facts that hold an operand of the gold program."""
    return retrieval.operand_facts(example) & set(example.gold_inds)


def misses_a_fact_only(example, kept: list) -> bool:
    """Whether `kept` misses a gold fact of `example` but still writes every operand of its gold program."""
    return (not set(example.gold_inds) <= {fact.key for fact in kept}
            and bool(shows_operands(example, retrieval.with_facts(example, kept))))


def recall_table(examples, rank_name: str) -> list[str]:
    rank = retrieval.ranker(rank_name)
    orders = [retrieval.ranked(e, rank) for e in examples]
    lines = []
    for recall in retrieval.recall_at_k(examples, rank, KS):
        missed = sum(misses_a_fact_only(example, order[:recall.k]) for example, order in zip(examples, orders))
        lines.append(f"{rank_name:<8}{recall.k:>3}{recall.full_recall:>13.3f}{recall.operand_recall:>16.3f}"
                     f"{missed:>36}")
    return lines


def announcing_sentences(examples) -> tuple[int, int]:
    """Sentences that announce a table, and how many of them are gold facts."""
    found = gold = 0
    for example in examples:
        for fact in retrieval.candidates(example):
            if fact.row is None and ANNOUNCES_TABLE.search(fact.text.strip()):
                found += 1
                gold += fact.key in example.gold_inds
    return found, gold


def threshold_table(examples) -> list[str]:
    """Fixed k against a per-question k: the facts whose linear log-odds pass a threshold, 3 to 10 of them."""
    rank = retrieval.ranker("linear")
    scored = []
    for example in examples:
        facts = retrieval.candidates(example)
        order = sorted(zip(rank.scores(example.question, facts), range(len(facts))), key=lambda pair: -pair[0])
        scored.append((example, [facts[i] for _, i in order], [score for score, _ in order]))
    rules = {f"fixed k = {k}": (lambda scores, k=k: k) for k in (3, 4, 5, 6)}
    rules |= {f"log-odds >= {t}": (lambda scores, t=t: min(10, max(3, sum(s >= t for s in scores))))
              for t in (-1.5, -2.0, -2.5, -3.0, -3.5)}
    lines = []
    for name, k_of in rules.items():
        ks = full = operands = 0
        for example, facts, scores in scored:
            kept = facts[:k_of(scores)]
            ks += len(kept)
            full += set(example.gold_inds) <= {fact.key for fact in kept}
            operands += bool(shows_operands(example, retrieval.with_facts(example, kept)))
        n = len(scored)
        lines.append(f"{name:<18}{ks / n:>8.2f}{full / n:>13.3f}{operands / n:>16.3f}")
    return lines


def main() -> None:
    print(header())
    for split in ("dev_200", "test_100", "train_2077"):
        examples = [e for e in load_finqa(resolve_data(split)[0]) if e.gold_inds]
        operands = [operand_facts(e) for e in examples]
        facts = sum(len(e.gold_inds) for e in examples)
        without = sum(len(e.gold_inds) - len(needed) for e, needed in zip(examples, operands))
        records = sum(len(needed) < len(e.gold_inds) for e, needed in zip(examples, operands))
        trained = " (the linear ranker was trained on them)" if split == "train_2077" else ""
        print(f"\n{split}{trained}: {len(examples)} records with gold facts, {facts} gold facts; {without} of them hold no "
              f"operand of the gold program, in {records} records "
              f"({records / len(examples):.0%})")
        print(f"{'ranker':<8}{'k':>3}{'full_recall':>13}{'operand_recall':>16}"
              f"{'a gold fact missed, operands kept':>36}")
        for rank_name in retrieval.RANKERS:
            print("\n".join(recall_table(examples, rank_name)))
    found, gold = announcing_sentences([e for e in load_finqa(resolve_data("train_2077")[0]) if e.gold_inds])
    print(f"\ntrain_2077 (records with gold facts): {found} sentences announce a table ({ANNOUNCES_TABLE.pattern!r}); "
          f"{gold} of them ({gold / found:.0%}) are gold facts")
    for split in ("dev_200", "test_100"):
        print(f"\n{split}, linear ranker: a fixed k against the facts whose log-odds pass a threshold (3 to 10)")
        print(f"{'rule':<18}{'mean k':>8}{'full_recall':>13}{'operand_recall':>16}")
        print("\n".join(threshold_table([e for e in load_finqa(resolve_data(split)[0]) if e.gold_inds])))


if __name__ == "__main__":
    main()
