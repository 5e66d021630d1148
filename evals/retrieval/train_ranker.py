"""Train the linear fact ranker on training records' gold facts, and measure every ranker's recall on dev_200.

The ranker is a logistic regression (scikit-learn) over `retrieval.fact_features`, one
example per candidate fact, labelled by whether the fact is among the record's
`gold_inds`. It is trained only on train_2077's records that have gold facts (dev and
test are never seen), and its weights go to finprog/ranker_linear.json. Then recall@k
of each ranker on dev_200, side by side, and the ranker's time per question.

    python evals/retrieval/train_ranker.py > evals/retrieval/train_ranker.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa; needs scikit-learn
(`pip install -e ".[evals]"`).
"""

from __future__ import annotations

import json
import time

from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from finprog import retrieval
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

KS = (1, 3, 5, 7, 10)


def training_rows(examples) -> tuple[list[str], list[list[float]], list[int]]:
    names, rows, labels = [], [], []
    for example in examples:
        facts = retrieval.candidates(example)
        for fact, features in zip(facts, retrieval.fact_features(example.question, facts)):
            names = names or list(features)
            rows.append([features[name] for name in names])
            labels.append(int(fact.key in example.gold_inds))
    return names, rows, labels


def fit(examples) -> dict:
    names, rows, labels = training_rows(examples)
    scaler = StandardScaler().fit(rows)
    model = LogisticRegression(max_iter=5000).fit(scaler.transform(rows), labels)
    return {
        "trained_on": f"train_2077 records with gold_inds ({len(examples)} records, {len(rows)} facts)",
        "bias": float(model.intercept_[0]),
        "coef": dict(zip(names, map(float, model.coef_[0]))),
        "mean": dict(zip(names, map(float, scaler.mean_))),
        "scale": dict(zip(names, map(float, scaler.scale_))),
    }


def main() -> None:
    print(header())
    train = [e for e in load_finqa(resolve_data("train_2077")[0]) if e.gold_inds]
    weights = fit(train)
    retrieval.LinearRanker.WEIGHTS.write_text(json.dumps(weights, indent=1) + "\n")
    print(f"linear ranker: {len(weights['coef'])} features, trained on {weights['trained_on']}")
    dev = load_finqa(resolve_data("dev_200")[0])
    print("\nrecall of the gold facts on dev_200 (full: every gold fact kept; mean: the share kept)")
    print(f"{'ranker':<8}{'k':>3}{'full_recall':>13}{'mean_recall':>13}{'chars kept':>12}{'of page':>9}")
    for rank in (retrieval.BM25Ranker(), retrieval.LinearRanker(weights)):
        for r in retrieval.recall_at_k(dev, rank, KS):
            print(f"{rank.name:<8}{r.k:>3}{r.full_recall:>13.3f}{r.mean_recall:>13.3f}{r.chars_retrieved:>12.0f}"
                  f"{r.chars_retrieved / r.chars_page:>9.1%}")
    print("\ntime to rank one question's page (dev_200, best of 3 passes)")
    for rank in (retrieval.BM25Ranker(), retrieval.LinearRanker(weights)):
        best = min(ranking_seconds(dev, rank) for _ in range(3))
        print(f"{rank.name:<8}{best / len(dev) * 1e3:>8.2f} ms per question")


def ranking_seconds(examples, rank) -> float:
    """Seconds to take the top 5 facts of every example's page, one after another."""
    started = time.perf_counter()
    for example in examples:
        retrieval.top_facts(example, 5, rank)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
