"""Does a small language model's reading of (question, fact) pairs rerank the linear ranker's top 10 past
0.85 full recall at k = 5 on dev_200?

A probe, not a fine-tuned cross-encoder: a frozen zoo model reads each pair of a question and
one of the linear ranker's top 10 facts, and a logistic regression (scikit-learn) over the
last token's hidden states at a middle and the last layer, plus the linear ranker's score,
says whether the fact is gold. It is trained on train_2077's records with gold facts only
(as the linear ranker; with --weak, also on the others, weakly labelled by their programs'
operands: `retrieval.weakly_labelled`), with its regularisation chosen by 5-fold cross-validation over
those records (full recall at k = 5). Then it reranks dev_200's top 10, and the script
prints full and mean recall at k = 3, 5, 7 beside the linear ranker's, and the forward
FLOPs it would add to every question (`flops.prefill_flops` of each pair).

    python evals/retrieval/ranker_probe.py [--model smollm2-135m] > evals/retrieval/ranker_probe.txt
    python evals/retrieval/ranker_probe.py --weak > evals/retrieval/ranker_probe_weak.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1;
needs scikit-learn (`pip install -e ".[evals]"`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finprog import flops, models, retrieval
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

POOL = 10  # the linear ranker's top facts the probe reranks
KS = (3, 5, 7)
MAX_FACT_CHARS = 600  # a wide table's verbalized row is cut here
BATCH = 16


def pair_text(question: str, fact: retrieval.Fact) -> str:
    return f"Fact: {fact.text[:MAX_FACT_CHARS]}\nQuestion: {question}\nDoes the fact help answer the question?"


@torch.inference_mode()
def hidden_features(loaded, texts: list[str]) -> tuple[np.ndarray, int]:
    """The last token's hidden state at the middle and last layers of every text, and their forward FLOPs."""
    model, tokenizer = loaded.model, loaded.tokenizer
    shape = flops.ModelShape.from_config(loaded.config)
    layers = model.config.num_hidden_layers
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows: list[np.ndarray] = [None] * len(texts)
    cost = 0
    for start in range(0, len(order), BATCH):
        batch = [texts[i] for i in order[start : start + BATCH]]
        inputs = tokenizer(batch, return_tensors="pt", padding=True)
        out = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        states = torch.cat([out.hidden_states[layers // 2][:, -1], out.hidden_states[layers][:, -1]], dim=1)
        for i, row in zip(order[start : start + BATCH], states.float().numpy()):
            rows[i] = row
        cost += sum(flops.prefill_flops(shape, int(n)) for n in inputs["attention_mask"].sum(1))
    return np.stack(rows), cost


def design(loaded, pooled) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Features (linear score, its rank, hidden states), gold labels and record groups of every pooled fact."""
    texts, extra, labels, groups = [], [], [], []
    for group, (example, facts, scores) in enumerate(pooled):
        for rank, (fact, score) in enumerate(zip(facts, scores)):
            texts.append(pair_text(example.question, fact))
            extra.append([score, 1 / (1 + rank)])
            labels.append(int(fact.key in example.gold_inds))
            groups.append(group)
    hidden, cost = hidden_features(loaded, texts)
    return np.hstack([np.array(extra), hidden]), np.array(labels), np.array(groups), cost


def recall(pooled, probability: np.ndarray | None, ks=KS) -> list[retrieval.Recall]:
    """Recall at each k when each pool is reordered by `probability` (None: the linear order); facts outside a
    pool never enter the top k (k <= POOL)."""
    return retrieval.recall_of_rankings([pool.example for pool in pooled], retrieval.reranked(pooled, probability), ks)


def cross_validated_c(x, y, groups, pooled) -> tuple[float, dict[float, float]]:
    """The regularisation with the best 5-fold full recall at k = 5 over training records."""
    results = {}
    for c in (0.001, 0.01, 0.1, 1.0):
        probability = np.zeros(len(y))
        for fit_rows, held_rows in GroupKFold(n_splits=5).split(x, y, groups):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x[fit_rows], y[fit_rows])
            probability[held_rows] = model.predict_proba(x[held_rows])[:, 1]
        results[c] = recall(pooled, probability, [5])[0].full_recall
    return max(results, key=results.get), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, help="only the first N records of each file (a quick check)")
    parser.add_argument("--weak", action="store_true", help="also train on the records without gold facts, weakly "
                        "labelled (`retrieval.weakly_labelled`)")
    args = parser.parse_args()
    train = load_finqa(resolve_data("train_2077")[0])
    weak = retrieval.weakly_labelled([e for e in train if not e.gold_inds]) if args.weak else []
    train = ([e for e in train if e.gold_inds] + weak)[: args.limit]
    dev = [e for e in load_finqa(resolve_data("dev_200")[0]) if e.gold_inds][: args.limit]
    print(header())
    linear = retrieval.ranker("linear")
    loaded = models.load_model(args.model, dtype="auto")
    started = time.perf_counter()
    train_pool, dev_pool = retrieval.pools(train, linear, POOL), retrieval.pools(dev, linear, POOL)
    x, y, groups, _ = design(loaded, train_pool)
    dev_x, _, _, dev_cost = design(loaded, dev_pool)
    seconds = time.perf_counter() - started
    c, scores = cross_validated_c(x, y, groups, train_pool)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x, y)
    probability = probe.predict_proba(dev_x)[:, 1]

    layers = loaded.model.config.num_hidden_layers
    labels = "gold and weak labels" if args.weak else "gold labels"
    print(f"probe: {args.model} ({loaded.dtype}), last-token states of layers {layers // 2} and {layers} + the linear "
          f"score, trained on {len(train)} train_2077 records ({labels}; {len(y)} pooled facts, "
          f"{int(y.sum())} labelled gold)")
    print("5-fold full recall at k = 5 on the training records, by C: "
          + ", ".join(f"{key:g}: {value:.3f}" for key, value in scores.items()) + f" (chosen: {c:g})")
    print(f"\ndev_200 ({len(dev)} records), reranking the linear top {POOL}")
    print(retrieval.format_recall({"linear": recall(dev_pool, None), "linear+probe": recall(dev_pool, probability)}))
    print(f"\nthe probe's forward passes: {dev_cost / len(dev):.3g} FLOPs per dev question "
          f"({len(dev_x) / len(dev):.1f} pairs); {seconds:.0f} s for train and dev features on this machine")


if __name__ == "__main__":
    main()
