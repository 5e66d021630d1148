"""Do lexical rankers get past the linear ranker's recall? Variants side by side on dev_200, full recall at k = 5.

Every variant is trained on train_2077's records with gold facts only, as
evals/train_ranker.py trains the shipped linear ranker:
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

    python evals/ranker_variants.py > evals/ranker_variants.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa; needs scikit-learn.
"""

from __future__ import annotations

import re
from unittest import mock

import numpy as np
import scipy.sparse as sparse
from sklearn.feature_extraction import FeatureHasher
from sklearn.ensemble import HistGradientBoostingClassifier
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


class YearSpans:
    """`retrieval._YEAR` with a span of up to 10 years counted as each year in it."""

    YEAR = retrieval._YEAR

    def findall(self, text: str) -> list[str]:
        years = self.YEAR.findall(text)
        for first, last in _SPAN.findall(text):
            if 0 < int(last) - int(first) <= 10:
                years += [str(year) for year in range(int(first), int(last) + 1)]
        return years


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


def features(examples, relative: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature matrix, gold labels, record index) over every candidate fact of `examples`."""
    blocks, labels, groups = [], [], []
    for index, example in enumerate(examples):
        facts = retrieval.candidates(example)
        rows = retrieval.fact_features(example.question, facts)
        block = np.array([list(row.values()) for row in rows])
        if relative:
            ranks = (-block).argsort(0).argsort(0)
            block = np.hstack([block, block - block.max(0), 1 / (1 + ranks)])
        blocks.append(block)
        labels += [fact.key in example.gold_inds for fact in facts]
        groups += [index] * len(facts)
    return np.vstack(blocks), np.array(labels), np.array(groups)


def full_recall(examples, scores: np.ndarray, groups: np.ndarray) -> float:
    found = 0
    for index, example in enumerate(examples):
        facts = retrieval.candidates(example)
        kept = {facts[i].key for i in np.argsort(-scores[groups == index], kind="stable")[:K]}
        found += all(key in kept for key in example.gold_inds)
    return found / len(examples)


def main() -> None:
    print(header())
    train = [e for e in load_finqa(resolve_data("train_2077")[0]) if e.gold_inds]
    dev = [e for e in load_finqa(resolve_data("dev_200")[0]) if e.gold_inds]
    print(f"trained on {len(train)} train_2077 records with gold facts; full recall at k = {K} on {len(dev)} "
          "dev_200 records\n")
    linear = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))  # noqa: E731
    trees = lambda: HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, max_leaf_nodes=15,
                                                   random_state=0)  # noqa: E731
    variants = [("linear", linear, False), ("linear + page-relative", linear, True),
                ("boosted trees", trees, False), ("boosted trees + page-relative", trees, True)]
    for name, model, relative in variants:
        print(f"{name:<32}{_recall(model(), train, dev, relative):.3f}")
    with mock.patch.object(retrieval, "tokens", lambda text, words=retrieval.tokens: list(map(stem, words(text)))):
        print(f"{'linear, stemmed':<32}{_recall(linear(), train, dev, False):.3f}")
    with mock.patch.object(retrieval, "_YEAR", YearSpans()):
        print(f"{'linear, year spans':<32}{_recall(linear(), train, dev, False):.3f}")
    print(f"{'linear + word pairs':<32}{_pairs_recall(train, dev):.3f}")
    dev_x, _, groups = features(dev, False)
    print(f"{'bm25 alone':<32}{full_recall(dev, dev_x[:, 0], groups):.3f}")


def _pairs_recall(train, dev) -> float:
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


def _recall(model, train, dev, relative: bool) -> float:
    x, y, _ = features(train, relative)
    dev_x, _, groups = features(dev, relative)
    model.fit(x, y)
    return full_recall(dev, model.predict_proba(dev_x)[:, 1], groups)


if __name__ == "__main__":
    main()
