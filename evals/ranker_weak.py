"""Do weak labels for the training records without gold facts lift the rankers' recall? Side by side on dev_200.

Only 609 of train_2077's 2,077 records have `gold_inds`. Every record has its gold
program, and a program names its facts' numbers: a fact holding a number that the
program uses as an argument, or the row a table operation names, is a weak label.
1. The weak labels' quality, on the 609 records where the gold facts are known, in two
   readings: every fact that holds the number ("every"), or only a number that one fact
   alone holds ("unique").
2. The rankers of evals/ranker_variants.py trained on the 609 gold-labelled records, and on
   those plus the other 1,468 weakly labelled ("every" reading): full recall at k = 5 on
   dev_200 (word pairs: the best of the same 3 x 3 grid on dev, so flattered alike).

    python evals/ranker_weak.py > evals/ranker_weak.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa; needs scikit-learn.
"""

from __future__ import annotations

import dataclasses
import re

from ranker_variants import _pairs_recall, _recall
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finprog import dsl, retrieval
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
READINGS = ("every", "unique")


def numbers(text: str) -> set[float]:
    """The numbers written in a fact, without commas, signs or percent signs (a literal is matched by its size)."""
    return {float(number.replace(",", "")) for number in _NUMBER.findall(text)}


def weak_labels(example, reading: str) -> set[str]:
    """Keys of the facts that hold a number the gold program uses, and of the rows its table operations name."""
    facts = retrieval.candidates(example)
    held = [numbers(" ".join(fact.row[1:]) if fact.row else fact.text) for fact in facts]
    keys = set()
    for step in dsl.parse(example.program).steps:
        for arg in (step.first, step.second):
            if isinstance(arg, dsl.Literal) and not arg.text.startswith("const_"):
                value = abs(float(arg.text.replace(",", "").rstrip("%")))
                holders = [fact.key for fact, values in zip(facts, held) if value in values]
                if reading == "every" or len(holders) == 1:
                    keys.update(holders)
            elif isinstance(arg, dsl.Row):
                label = arg.label.strip().lower()
                keys.update(fact.key for fact in facts if fact.row and fact.row[0].strip().lower() == label)
    return keys


def weakly_labelled(examples, reading: str) -> list:
    """`examples` with their weak labels as `gold_inds`; a record whose program finds no fact is dropped."""
    labelled = (dataclasses.replace(e, gold_inds=dict.fromkeys(weak_labels(e, reading), "")) for e in examples)
    return [e for e in labelled if e.gold_inds]


def main() -> None:
    print(header())
    train = load_finqa(resolve_data("train_2077")[0])
    gold = [e for e in train if e.gold_inds]
    print(f"\n1. weak labels against the gold facts of the {len(gold)} train_2077 records that have them")
    print(f"{'reading':<10}{'precision':>11}{'recall':>8}{'same set':>10}")
    for reading in READINGS:
        found = wrong = missed = same = 0
        for example in gold:
            weak, true = weak_labels(example, reading), set(example.gold_inds)
            found, wrong, missed = found + len(weak & true), wrong + len(weak - true), missed + len(true - weak)
            same += weak == true
        print(f"{reading:<10}{found / (found + wrong):>11.3f}{found / (found + missed):>8.3f}{same / len(gold):>10.3f}")

    dev = [e for e in load_finqa(resolve_data("dev_200")[0]) if e.gold_inds]
    weak = weakly_labelled([e for e in train if not e.gold_inds], "every")
    sets = {f"gold ({len(gold)})": gold, f"gold + weak ({len(gold)} + {len(weak)})": gold + weak}
    print(f"\n2. full recall at k = 5 on {len(dev)} dev_200 records, by training labels")
    print(f"{'ranker':<20}" + "".join(f"{name:>28}" for name in sets))
    models = {
        "linear": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "boosted trees": lambda: HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, max_leaf_nodes=15,
                                                                random_state=0),
    }
    for name, model in models.items():
        print(f"{name:<20}" + "".join(f"{_recall(model(), records, dev, False):>28.3f}" for records in sets.values()),
              flush=True)
    pairs = [_pairs_recall(records, dev) for records in sets.values()]
    print(f"{'linear + word pairs':<20}" + "".join(f"{recall:>28.3f}" for recall in pairs))


if __name__ == "__main__":
    main()
