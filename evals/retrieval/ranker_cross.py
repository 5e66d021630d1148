"""Does a fine-tuned cross-encoder rerank the linear ranker's top facts past 0.85 full recall at k = 5 on
dev_200?

A small zoo model with a LoRA adapter (rank 16, all linear layers of its top TOP_LAYERS
layers, so that the backward pass stops there) reads a fact and a question and answers
" yes" or " no": is the fact one of the record's gold facts? It is trained for one epoch
on train_2077's records with gold facts (the only records the linear ranker trained on;
dev and test are never seen): each record's gold facts within the linear ranker's top
POOL, and its NEGATIVES best-ranked other facts (the ones that compete), with
`training.reply_loss` on the one answer token. On dev_200 the pool is reranked by the
cross-encoder's log-odds (logit " yes" minus logit " no") plus the linear ranker's
(a logistic regression's logit), the combination fixed before any dev number was seen,
and by the cross-encoder alone. It prints full and mean recall at k = 3, 5, 7 beside the
linear ranker's, the training FLOPs, and the forward FLOPs the reranking adds per question.

    python evals/retrieval/ranker_cross.py > evals/retrieval/ranker_cross.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1, with the CPU to itself.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import torch
from peft import LoraConfig, get_peft_model

from finprog import flops, models, retrieval, training
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

KS = (3, 5, 7)
POOL = 8  # the linear ranker's top facts the cross-encoder reranks
NEGATIVES = 3  # per training record
TOP_LAYERS = 10
MAX_FACT_CHARS = 400  # a wide table's verbalized row is cut here
BATCH = 16
LR = 3e-4


def pair_prompt(question: str, fact: retrieval.Fact) -> str:
    return f"Fact: {fact.text[:MAX_FACT_CHARS]}\nQuestion: {question}\nIs the fact needed to answer the question?"


def encoded_pairs(tokenizer, pooled, answers: tuple[int, int], negatives: int | None = None) -> list[training.Encoded]:
    """Pooled (question, fact) pairs as prompt ids and answer id (" yes" for a gold fact): every pair, or each
    record's gold facts and its first `negatives` others."""
    yes, no = answers
    pairs = []
    for example, facts, _ in pooled:
        others = [fact for fact in facts if fact.key not in example.gold_inds]
        for fact in facts:
            gold = fact.key in example.gold_inds
            if gold or negatives is None or fact in others[:negatives]:
                pairs.append(training.Encoded(tokenizer(pair_prompt(example.question, fact))["input_ids"],
                                              [yes if gold else no]))
    return pairs


def step_flops(shape: flops.ModelShape, batch: list[training.Encoded]) -> int:
    """The forward of the frozen lower layers, then a LoRA step over the top TOP_LAYERS (no dx below them)."""
    width, lower = max(e.length for e in batch), shape.layers - TOP_LAYERS
    below = replace(shape, layers=lower, layer_types=shape.layer_types[:lower])
    above = replace(shape, layers=TOP_LAYERS, layer_types=shape.layer_types[lower:])
    return (flops.forward_flops(below, width, logits=0, batch=len(batch))
            + flops.training_step_flops(above, width, len(batch), method="lora", lora_rank=16, targets="all-linear",
                                        inputs_require_grad=False, logits=2))


def train_adapter(model, pairs, pad_id, shape) -> tuple[float, float]:
    """One epoch of AdamW over shuffled batches; (training FLOPs, mean loss of the last 50 steps)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)
    cost, losses = 0.0, []
    model.train()
    for start in range(0, len(order), BATCH):
        batch = [pairs[i] for i in order[start : start + BATCH]]
        loss = training.reply_loss(model, training.collate(batch, pad_id, "cpu"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        cost += step_flops(shape, batch)
    model.eval()
    return cost, sum(losses[-50:]) / len(losses[-50:])


@torch.inference_mode()
def log_odds(model, pairs, pad_id, answers: tuple[int, int], shape) -> tuple[list[float], float]:
    """The cross-encoder's logit(" yes") - logit(" no") for every pair, and the forward FLOPs."""
    yes, no = answers
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    scores, cost = [0.0] * len(pairs), 0.0
    for start in range(0, len(order), BATCH):
        indices = order[start : start + BATCH]
        inputs = training.collate([training.Encoded(pairs[i].prompt, []) for i in indices], pad_id, "cpu")
        inputs.pop("labels")
        logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].float()
        for i, row in zip(indices, logits):
            scores[i] = (row[yes] - row[no]).item()
        cost += sum(flops.prefill_flops(shape, pairs[i].length) for i in indices)
    return scores, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, help="only the first N records of each file (a quick check)")
    args = parser.parse_args()
    train = [e for e in load_finqa(resolve_data("train_2077")[0]) if e.gold_inds][: args.limit]
    dev = [e for e in load_finqa(resolve_data("dev_200")[0]) if e.gold_inds][: args.limit]
    print(header())
    linear = retrieval.ranker("linear")
    train_pool, dev_pool = retrieval.pools(train, linear, POOL), retrieval.pools(dev, linear, POOL)
    loaded = models.load_model(args.model, dtype="auto")
    tokenizer, pad_id = loaded.tokenizer, loaded.tokenizer.pad_token_id
    answers = tuple(tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" yes", " no"))
    shape = flops.ModelShape.from_config(loaded.config)
    torch.manual_seed(0)
    layers = loaded.model.config.num_hidden_layers
    model = get_peft_model(loaded.model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=list(flops.lora_targets("all-linear", shape)),
        layers_to_transform=list(range(layers - TOP_LAYERS, layers))))
    started = time.perf_counter()
    train_pairs = encoded_pairs(tokenizer, train_pool, answers, NEGATIVES)
    train_flops, last_loss = train_adapter(model, train_pairs, pad_id, shape)
    trained = time.perf_counter() - started
    dev_pairs = encoded_pairs(tokenizer, dev_pool, answers)
    cross, dev_flops = log_odds(model, dev_pairs, pad_id, answers, shape)
    linear_scores = [score for _, _, scores in dev_pool for score in scores]

    print(f"cross-encoder: {args.model} ({loaded.dtype}) + LoRA r16 on its top {TOP_LAYERS} layers, one epoch ({len(train_pairs)} pairs of "
          f"{len(train)} train_2077 records, {sum(e.target[0] == answers[0] for e in train_pairs)} gold; batch {BATCH}, "
          f"lr {LR:g}): {train_flops:.3g} training FLOPs, {trained / 60:.1f} minutes, mean loss of the last 50 steps "
          f"{last_loss:.3f}")
    print(f"\ndev_200 ({len(dev)} records), reranking the linear top {POOL} (which holds every gold fact of "
          f"{retrieval.recall_of_rankings(dev, retrieval.reranked(dev_pool), [POOL])[0].full_recall:.3f} of the "
          "records)")
    rankings = {"linear": linear_scores, "cross + linear": [c + s for c, s in zip(cross, linear_scores)],
                "cross alone": cross}
    print(retrieval.format_recall({name: retrieval.recall_of_rankings(dev, retrieval.reranked(dev_pool, scores), KS)
                                   for name, scores in rankings.items()}))
    print(f"\nthe reranking's forward passes: {dev_flops / len(dev):.3g} FLOPs per dev question "
          f"({len(dev_pairs) / len(dev):.1f} pairs)")


if __name__ == "__main__":
    main()
