"""Do lexical rankers get past the linear ranker's recall, and do weak labels lift them? Full recall at k = 5 on
dev_200.

Every variant is trained on train_2077's records with gold facts only, as
evals/retrieval/train_ranker.py trains the shipped linear ranker:
- "linear": the shipped model (logistic regression over `retrieval.fact_features`);
- "linear + page-relative": the same features, plus each feature's gap to the page's best
  and its reciprocal rank on the page (a listwise view of the page);
- "boosted trees": gradient-boosted trees (scikit-learn) over the same features, and over
  the page-relative ones;
- "linear, stemmed": the shipped model with words cut to a crude stem ("purchased" and
  "purchases" both "purchas"), so inflections meet;
- "linear, year spans": the shipped model with a question's year spans ("2015-2019",
  "2015 to 2019") counted as every year in them;
- "linear + word pairs": the shipped features plus hashed pairs (question word, fact word)
  and (question word, kind of fact), a sparse logistic regression that can learn that
  "after" asks for "thereafter" or "portion" for "total"; the best of a 3 x 3 grid of
  pair weights and regularization on dev (so, if anything, flattered).

With --weak, the weak labels instead. Only 609 of train_2077's 2,077 records have
`gold_inds`, but every record has its gold program, and a fact holding a number that the
program uses, or the row a table operation names, is a weak label (`retrieval.operand_facts`).
1. The weak labels' quality, on the 609 records where the gold facts are known, in two
   readings: every fact that holds the number ("every"), or only a number that one fact
   alone holds ("unique").
2. The linear, boosted-trees and word-pairs rankers trained on the 609 gold-labelled
   records, and on those plus the other 1,468 weakly labelled ("every" reading).

    python evals/retrieval/ranker_variants.py > evals/retrieval/ranker_variants.txt
    python evals/retrieval/ranker_variants.py --weak > evals/retrieval/ranker_weak.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa; needs scikit-learn
(`pip install -e ".[evals]"`).
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import scipy.sparse as sparse
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finprog import retrieval
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

K = 5
_SPAN = re.compile(r"\b((?:19|20)\d\d)\s*(?:-|to|through|and|until)\s*((?:19|20)\d\d)\b")
SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "es", "ed", "s", "ly")


def stem(word: str) -> str:
    if word[0].isdigit() or len(word) <= 3:
        return word
    suffix = next((s for s in SUFFIXES if word.endswith(s) and len(word) - len(s) >= 3), "")
    return word[:len(word) - len(suffix)]


def stemmed_words(text: str) -> list[str]:
    """`retrieval.tokens`, each word cut to its stem."""
    return list(map(stem, retrieval.tokens(text)))


def years_with_spans(text: str) -> list[str]:
    """`retrieval.years`, with a span of up to 10 years counted as each year in it."""
    years = retrieval.years(text)
    for first, last in _SPAN.findall(text):
        if 0 < int(last) - int(first) <= 10:
            years += [str(year) for year in range(int(first), int(last) + 1)]
    return years


def linear():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def trees():
    return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, max_leaf_nodes=15, random_state=0)


def word_pairs(examples) -> sparse.csr_matrix:
    """Hashed (question word, fact word) and (question word, kind of fact) indicators of every candidate."""
    pairs = []
    for example in examples:
        asked = {w for w in retrieval.tokens(example.question) if w not in retrieval.STOP_WORDS and w.isalpha()}
        for fact in retrieval.candidates(example):
            words = {w for w in retrieval.tokens(fact.row[0] if fact.row else fact.text)
                     if w not in retrieval.STOP_WORDS and w.isalpha()}
            kind = "row" if fact.row else "sentence"
            pairs.append([f"{a}|{b}" for a in asked for b in words] + [f"{a}|{kind}" for a in asked])
    return FeatureHasher(2 ** 18, input_type="string", alternate_sign=False).transform(pairs).tocsr()


def features(examples, relative: bool, **reading) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature matrix, gold labels, record index) over every candidate fact of `examples`; `reading` names how
    `retrieval.fact_features` reads words and years."""
    blocks, labels, groups = [], [], []
    for index, example in enumerate(examples):
        facts = retrieval.candidates(example)
        rows = retrieval.fact_features(example.question, facts, **reading)
        block = np.array([list(row.values()) for row in rows])
        if relative:
            ranks = (-block).argsort(0).argsort(0)
            block = np.hstack([block, block - block.max(0), 1 / (1 + ranks)])
        blocks.append(block)
        labels += [fact.key in example.gold_inds for fact in facts]
        groups += [index] * len(facts)
    return np.vstack(blocks), np.array(labels), np.array(groups)


def full_recall(examples, scores: np.ndarray, groups: np.ndarray) -> float:
    """Full recall at K when each record's candidates are ranked by their `scores`."""
    rankings = [retrieval.best_first(retrieval.candidates(example), scores[groups == index])
                for index, example in enumerate(examples)]
    return retrieval.recall_of_rankings(examples, rankings, [K])[0].full_recall


def recall(model, train, dev, relative: bool, **reading) -> float:
    """Full recall at K on `dev` of `model` trained on `train`'s candidates (see `features`)."""
    x, y, _ = features(train, relative, **reading)
    dev_x, _, groups = features(dev, relative, **reading)
    model.fit(x, y)
    return full_recall(dev, model.predict_proba(dev_x)[:, 1], groups)


def pairs_recall(train, dev) -> float:
    """The best full recall over pair weights and regularization strengths (see the module docstring)."""
    x, y, _ = features(train, False)
    dev_x, _, groups = features(dev, False)
    scaler = StandardScaler().fit(x)
    x, dev_x = sparse.csr_matrix(scaler.transform(x)), sparse.csr_matrix(scaler.transform(dev_x))
    pairs, dev_pairs = word_pairs(train), word_pairs(dev)
    best = 0.0
    for weight in (0.1, 0.3, 1.0):
        for strength in (0.1, 0.3, 1.0):
            model = LogisticRegression(C=strength, max_iter=5000).fit(sparse.hstack([x, weight * pairs]), y)
            scores = model.decision_function(sparse.hstack([dev_x, weight * dev_pairs]))
            best = max(best, full_recall(dev, scores, groups))
    return best


def variants(train, dev) -> None:
    print(f"trained on {len(train)} train_2077 records with gold facts; full recall at k = {K} on {len(dev)} "
          "dev_200 records\n")
    for name, model, relative in [("linear", linear, False), ("linear + page-relative", linear, True),
                                  ("boosted trees", trees, False), ("boosted trees + page-relative", trees, True)]:
        print(f"{name:<32}{recall(model(), train, dev, relative):.3f}")
    print(f"{'linear, stemmed':<32}{recall(linear(), train, dev, False, read_words=stemmed_words):.3f}")
    print(f"{'linear, year spans':<32}{recall(linear(), train, dev, False, read_years=years_with_spans):.3f}")
    print(f"{'linear + word pairs':<32}{pairs_recall(train, dev):.3f}")
    dev_x, _, groups = features(dev, False)
    print(f"{'bm25 alone':<32}{full_recall(dev, dev_x[:, 0], groups):.3f}")


def weak_labels(train, gold, dev) -> None:
    print(f"\n1. weak labels against the gold facts of the {len(gold)} train_2077 records that have them")
    print(f"{'reading':<10}{'precision':>11}{'recall':>8}{'same set':>10}")
    for reading, unique in (("every", False), ("unique", True)):
        found = wrong = missed = same = 0
        for example in gold:
            weak, true = retrieval.operand_facts(example, unique), set(example.gold_inds)
            found, wrong, missed = found + len(weak & true), wrong + len(weak - true), missed + len(true - weak)
            same += weak == true
        print(f"{reading:<10}{found / (found + wrong):>11.3f}{found / (found + missed):>8.3f}{same / len(gold):>10.3f}")

    weak = retrieval.weakly_labelled([e for e in train if not e.gold_inds])
    sets = {f"gold ({len(gold)})": gold, f"gold + weak ({len(gold)} + {len(weak)})": gold + weak}
    print(f"\n2. full recall at k = {K} on {len(dev)} dev_200 records, by training labels")
    print(f"{'ranker':<20}" + "".join(f"{name:>28}" for name in sets))
    for name, model in {"linear": linear, "boosted trees": trees}.items():
        print(f"{name:<20}" + "".join(f"{recall(model(), records, dev, False):>28.3f}" for records in sets.values()),
              flush=True)
    print(f"{'linear + word pairs':<20}" + "".join(f"{pairs_recall(records, dev):>28.3f}" for records in sets.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weak", action="store_true", help="the weak labels' quality, and the rankers trained with "
                        "them (evals/retrieval/ranker_weak.txt)")
    args = parser.parse_args()
    print(header())
    train = load_finqa(resolve_data("train_2077")[0])
    gold = [e for e in train if e.gold_inds]
    dev = [e for e in load_finqa(resolve_data("dev_200")[0]) if e.gold_inds]
    if args.weak:
        weak_labels(train, gold, dev)
    else:
        variants(gold, dev)


if __name__ == "__main__":
    main()
