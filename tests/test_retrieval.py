"""Retrieval: candidates as FinQA keys and verbalizes them, contexts, recall@k, and the bad-input lines."""

from __future__ import annotations

import json
import re

import pytest

from finprog import prompts, retrieval
from finprog.cli import main
from finprog.data import Example, load_finqa
from finprog.operands import shows_operands
from finprog.solve import SolveOptions
from shared_data import finqa_file

PAGE = Example(
    id="page-1",
    pre_text=["sales grew in 2019 .", "the company sells widgets ."],
    post_text=["costs of 2019 fell ."],
    table=[["", "2019", "2018"], ["revenue", "$ 120", "$ 100"], ["costs", "40", "45"], ["employees", "7", "6"]],
    question="what was the change in revenue from 2018 to 2019?",
    program="subtract(120, 100)",
    exe_ans=20.0,
    gold_inds={"table_1": "the revenue of 2019 is $ 120 ; the revenue of 2018 is $ 100 ;"},
)


def test_candidates_are_keyed_and_verbalized_as_finqa_gold_facts():
    for name in ("dev_200", "test_100", "train_100"):
        for example in load_finqa(finqa_file(name + ".json")):
            texts = {fact.key: fact.text for fact in retrieval.candidates(example)}
            for key, gold in example.gold_inds.items():  # equal but for the spacing of the original tables
                assert re.sub(r"\s+", "", texts[key]) == re.sub(r"\s+", "", gold), (example.id, key)


def test_candidates_are_the_facts_finqas_own_retriever_scored():
    """The official files release a score for every fact FinQA's retriever read; those are our candidates' keys."""
    for name in ("dev_200", "test_100"):
        records = {r["id"]: r for r in json.loads(finqa_file(name + ".json").read_text(encoding="utf-8"))}
        for example in load_finqa(finqa_file(name + ".json")):
            scored = records[example.id]["table_retrieved_all"] + records[example.id]["text_retrieved_all"]
            keys = [fact.key for fact in retrieval.candidates(example)]
            assert sorted(d["ind"] for d in scored) == sorted(keys), example.id


def test_text_keys_count_pre_and_post_text_together():
    keys = [fact.key for fact in retrieval.candidates(PAGE)]
    assert keys == ["text_0", "text_1", "text_2", "table_0", "table_1", "table_2", "table_3"]


def test_kept_facts_are_shown_in_page_order_with_rows_under_the_header():
    facts = [f for f in retrieval.candidates(PAGE) if f.key in {"table_3", "text_2", "table_1"}]
    shown = retrieval.with_facts(PAGE, list(reversed(facts)))
    assert shown.pre_text == [] and shown.post_text == ["costs of 2019 fell ."]
    assert shown.table == [PAGE.table[0], PAGE.table[1], PAGE.table[3]]
    assert shown.question == PAGE.question and shown.program == PAGE.program


def test_a_page_without_kept_rows_shows_no_table():
    only_text = [f for f in retrieval.candidates(PAGE) if f.key == "text_0"]
    assert retrieval.with_facts(PAGE, only_text).table == []


def test_bm25_ranks_the_matching_row_first_and_costs_no_counted_flops():
    rank = retrieval.BM25Ranker()
    assert retrieval.ranked(PAGE, rank)[0].key == "table_1"
    assert rank.flops(PAGE.question, retrieval.candidates(PAGE)) == 0.0


def test_bm25_tokens_keep_numbers_years_and_percent_signs():
    assert retrieval.tokens("Sales rose 12.5% to $1,234 in 2019.") == ["sales", "rose", "12.5%", "to", "1,234", "in",
                                                                       "2019"]


def test_contexts_page_retrieved_and_gold():
    rank = retrieval.BM25Ranker()
    assert retrieval.select_context(PAGE, "page", 2, rank) is PAGE
    retrieved = retrieval.select_context(PAGE, "retrieved", 2, rank)
    assert len(retrieved.pre_text) + len(retrieved.post_text) + max(0, len(retrieved.table) - 1) == 2
    assert retrieval.select_context(PAGE, "gold", 2, rank).table == PAGE.table[:2]


def test_recall_at_k_counts_full_and_mean_recall():
    two_gold = Example(**{**PAGE.__dict__, "id": "page-2",
                          "gold_inds": {"table_1": "x", "table_3": "y"}})
    first, everything = retrieval.recall_at_k([PAGE, two_gold], retrieval.BM25Ranker(), [1, 7])
    assert (first.n, first.full_recall, first.mean_recall) == (2, 0.5, 0.75)
    assert (everything.full_recall, everything.mean_recall) == (1.0, 1.0)
    assert everything.chars_retrieved == everything.chars_page


def test_a_context_shows_the_operands_when_it_writes_every_number_and_row_label_of_the_program():
    facts = {f.key: f for f in retrieval.candidates(PAGE)}
    revenue, costs = (retrieval.with_facts(PAGE, [facts[key]]) for key in ("table_1", "table_2"))
    assert shows_operands(PAGE, revenue) is True and shows_operands(PAGE, costs) is False
    table_step = Example(**{**PAGE.__dict__, "program": "table_sum(costs, none), divide(#0, const_100)"})
    assert shows_operands(table_step, costs) is True and shows_operands(table_step, revenue) is False
    question_number = Example(**{**PAGE.__dict__, "program": "subtract(2019, 2018)"})
    assert shows_operands(question_number, costs) is True  # the question is always shown
    for program in ("subtract(120, 99)", "subtract(120,", None):  # a number the page lacks; no parse; no program
        assert shows_operands(Example(**{**PAGE.__dict__, "program": program}), PAGE) is None


def test_recall_at_k_counts_operand_recall_over_the_records_whose_page_writes_the_operands():
    off_page = Example(**{**PAGE.__dict__, "id": "page-2", "program": "subtract(120, 99)"})
    costs = Example(**{**PAGE.__dict__, "id": "page-3", "program": "table_max(costs, none)"})
    first, everything = retrieval.recall_at_k([PAGE, off_page, costs], retrieval.BM25Ranker(), [1, 7])
    assert (first.n, first.n_operands, first.operand_recall) == (3, 2, 0.5)  # table_1 is first; costs is not
    assert everything.operand_recall == 1.0
    assert retrieval.recall_at_k([off_page], retrieval.BM25Ranker(), [1])[0].operand_recall is None


def test_recall_needs_records_with_gold_facts():
    with pytest.raises(retrieval.RetrievalError, match="no record has gold_inds"):
        retrieval.recall_at_k([Example(**{**PAGE.__dict__, "gold_inds": {}})], retrieval.BM25Ranker(), [5])


def test_exemplars_show_gold_facts_and_cut_tables():
    shown = prompts.exemplar_context(PAGE, 5, retrieval.BM25Ranker())
    assert shown.table == PAGE.table[:2] and shown.pre_text == [] and shown.post_text == []


def test_retrieve_command_prints_one_json_object(capsys):
    assert main(["retrieve", str(finqa_file("dev_200.json")), "--top-k", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"n", "k", "full_recall", "mean_recall", "chars_page", "chars_retrieved", "operand_recall"} <= set(result)
    assert result["n"] == 200 and result["k"] == 5 and 0 < result["chars_retrieved"] < result["chars_page"]


def test_retrieve_command_prints_the_table_for_k_1_to_10(capsys):
    assert main(["retrieve", str(finqa_file("test_100.json"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == [str(k) for k in range(1, 11)]


@pytest.mark.parametrize("argv, message", [
    (["retrieve", "demo", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["solve", "--data", "demo", "--top-k", "-2"], "--top-k must be at least 1, got -2"),
])
def test_a_k_below_one_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"finprog: error: {message}"


def test_an_unknown_ranker_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["retrieve", "demo", "--ranker", "tfidf"])
    assert stop.value.code == 2 and "invalid choice: 'tfidf'" in capsys.readouterr().err


def test_retrieve_on_a_file_without_gold_facts_says_so(tmp_path, capsys):
    record = {"id": "a", "pre_text": ["x 1"], "post_text": [], "table": [["a", "1"]], "qa": {"question": "q?"}}
    path = tmp_path / "nogold.json"
    path.write_text(json.dumps([record]))
    assert main(["retrieve", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"finprog: error: {path}: no record has gold_inds, so recall cannot "
                                               "be measured; give FinQA records with their annotated facts (such as "
                                               "dev_200)")


def test_gold_context_on_records_without_gold_facts_fails_before_loading(tmp_path, capsys):
    record = {"id": "a", "pre_text": ["x 1"], "post_text": [], "table": [["a", "1"]], "qa": {"question": "q?"}}
    path = tmp_path / "nogold.json"
    path.write_text(json.dumps([record]))
    assert main(["solve", "--data", str(path), "--context", "gold", "--model", "no-such-model",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--context gold needs gold_inds" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_linear_ranker_ships_its_weights_and_counts_its_flops():
    rank = retrieval.ranker("linear")
    facts = retrieval.candidates(PAGE)
    assert set(rank.weights["coef"]) == set(retrieval.fact_features(PAGE.question, facts)[0])
    assert "train_2077" in rank.weights["trained_on"]
    assert rank.flops(PAGE.question, facts) == 4 * len(rank.weights["coef"]) * len(facts)
    assert retrieval.ranked(PAGE, rank)[0].key == "table_1"


def test_the_linear_ranker_beats_bm25_on_dev_recall_at_5():
    dev = load_finqa(finqa_file("dev_200.json"))
    bm25, linear = (retrieval.recall_at_k(dev, retrieval.ranker(name), [5])[0] for name in ("bm25", "linear"))
    assert linear.full_recall > bm25.full_recall and linear.mean_recall > bm25.mean_recall


def test_a_ranker_added_to_rankers_picks_the_facts_shown_and_counts_its_flops(monkeypatch):
    class LastFacts:  # what a library user might add: the page's last facts first, 10 FLOPs a fact
        def scores(self, question, facts):
            return [float(i) for i in range(len(facts))]

        def flops(self, question, facts):
            return 10.0 * len(facts)

    monkeypatch.setitem(retrieval.RANKERS, "last-facts", LastFacts)
    options = SolveOptions(model="qwen2.5-coder-0.5b", context="retrieved", top_k=2, ranker="last-facts",
                           shots=0)
    shown = prompts.shown_example(PAGE, options)
    assert shown.table == [PAGE.table[0], *PAGE.table[2:]] and not shown.pre_text and not shown.post_text
    assert prompts.ranker_flops(PAGE, options, prompts.ExemplarRetriever([PAGE])) == 70.0


def test_rankings_are_measured_like_a_rankers_and_pools_are_reranked_in_place():
    facts = {f.key: f for f in retrieval.candidates(PAGE)}
    two_gold = Example(**{**PAGE.__dict__, "id": "page-2", "gold_inds": {"table_1": "x", "table_3": "y"}})
    rank = retrieval.BM25Ranker()
    rankings = [retrieval.ranked(PAGE, rank), retrieval.ranked(two_gold, rank)]
    assert retrieval.recall_of_rankings([PAGE, two_gold], rankings, [1, 7]) == retrieval.recall_at_k(
        [PAGE, two_gold], rank, [1, 7])
    assert retrieval.best_first([facts["text_0"], facts["text_1"], facts["table_1"]], [1.0, 2.0, 1.0]) == [
        facts["text_1"], facts["text_0"], facts["table_1"]]  # ties keep the order given

    pooled = retrieval.pools([PAGE, two_gold], rank, 2)
    assert [len(pool.facts) for pool in pooled] == [2, 2] and pooled[0].facts[0].key == "table_1"
    assert pooled[0].scores == sorted(pooled[0].scores, reverse=True)
    assert retrieval.reranked(pooled) == [pool.facts for pool in pooled]
    flipped = retrieval.reranked(pooled, [0.0, 1.0, 5.0, -5.0])  # one score per pooled fact, pool after pool
    assert flipped == [pooled[0].facts[::-1], pooled[1].facts]
    first, second = retrieval.recall_of_rankings([PAGE, two_gold], flipped, [1, 2])
    assert (first.full_recall, second.mean_recall) == (0.0, 0.75)  # facts outside a pool are never ranked
    table = retrieval.format_recall({"bm25": [first, second]}, operands=True).splitlines()
    assert table[0].split() == ["ranker", "k", "full_recall", "mean_recall", "operand_recall"]
    assert table[1].split() == ["bm25", "1", "0.000", "0.250", "0.500"]  # page-2's first fact writes 120, 100
    with pytest.raises(ValueError, match="1 rankings for 2 examples"):
        retrieval.recall_of_rankings([PAGE, two_gold], flipped[:1], [1])


def test_the_features_read_words_and_years_as_told():
    facts = retrieval.candidates(PAGE)
    question = "what were the sales from 2018 to 2019?"
    assert retrieval.years("from 2018 to 2019, not 1850 or 20190") == ["2018", "2019"]
    plain = retrieval.fact_features(question, facts)
    assert plain == retrieval.fact_features(question, facts, read_words=retrieval.tokens, read_years=retrieval.years)
    no_years = retrieval.fact_features(question, facts, read_years=lambda text: [])
    assert plain[0]["year_overlap"] == 0.5 and no_years[0]["year_overlap"] == 0.0
    shouting = retrieval.fact_features(question, facts, read_words=lambda text: ["same"])
    assert {f["word_overlap"] for f in shouting} == {1.0} and {f["bm25_share"] for f in shouting} == {1.0}
    assert len(set(retrieval.BM25Ranker(read_words=lambda text: ["same"]).scores("q", facts))) == 1


def test_a_programs_operand_facts_hold_its_numbers_or_are_the_rows_it_names():
    assert retrieval.operand_facts(PAGE) == {"table_1"}  # 120 and 100, both in the revenue row
    mentioned = Example(**{**PAGE.__dict__, "program": "subtract(2019, 45)"})
    assert retrieval.operand_facts(mentioned) == {"text_0", "text_2", "table_0", "table_2"}
    assert retrieval.operand_facts(mentioned, unique=True) == {"table_2"}  # 2019 is in three facts, 45 in one
    rows = Example(**{**PAGE.__dict__, "program": "table_sum( Costs , none), divide(#0, const_100)"})
    assert retrieval.operand_facts(rows) == {"table_2"}
    assert retrieval.written_numbers("$ 1,234.5 and -3 % of 7") == {1234.5, 3.0, 7.0}
    nothing = Example(**{**PAGE.__dict__, "id": "page-2", "program": "add(1, 2)"})
    labelled = retrieval.weakly_labelled([PAGE, nothing])
    assert [(e.id, set(e.gold_inds)) for e in labelled] == [("page-1", {"table_1"})]  # no fact found: left out
