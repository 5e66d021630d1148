"""solve and compare on a tiny random checkpoint: records, resume, FLOPs fields, scoring, exemplars."""

import json
import shutil

import pytest

from finprog import flops, models, prompts
from finprog.cli import main
from finprog.compare import compare_runs
from finprog.data import load_finqa
from finprog.evaluation import score
from finprog.runs import RunError
from finprog.solve import SolveOptions, SolveError, solve
from shared_data import REPO, finqa_file

DEMO = REPO / "data" / "demo.json"


@pytest.fixture
def checkpoint(tiny_checkpoint_dir):
    return tiny_checkpoint_dir


def options(checkpoint, **changes):
    base = dict(model=checkpoint, data=str(DEMO), limit=3, batch_size=2, max_new_tokens=6, shots=2,
                exemplars=str(finqa_file("train_100.json")), dtype="fp32")
    return SolveOptions(**{**base, **changes})


@pytest.mark.parametrize("mode", ["program", "direct"])
def test_solve_writes_a_complete_run_record(tmp_path, checkpoint, mode):
    record = solve(options(checkpoint, mode=mode), tmp_path / mode, progress=False)
    rows = [json.loads(line) for line in (tmp_path / mode / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in load_finqa(DEMO)[:3])
    assert json.loads((tmp_path / mode / "run.json").read_text()) == record
    assert record["status"] == "finished" and record["metrics"]["n"] == 3
    assert record["eval_set"]["n"] == 3 and len(record["eval_set"]["ids_sha256"]) == 64
    assert record["config"]["technique"] == ("few-shot" if mode == "program" else "zero-shot")
    for row in rows:
        assert 1 <= row["new_tokens"] <= 6 and row["flops"] > 0 and row["flops_executed"] >= row["flops"]
    flops = record["flops"]
    assert flops["inference_total"] == sum(r["flops"] for r in rows)
    assert flops["inference_total_executed"] >= flops["inference_total"] and flops["training_total"] == 0
    assert {"torch", "transformers", "finprog"} <= set(record["versions"])


def test_resume_skips_finished_ids_and_refuses_another_config(tmp_path, checkpoint):
    out = tmp_path / "run"
    solve(options(checkpoint, limit=2), out, progress=False)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:10])  # an interrupted second line
    with pytest.raises(RunError, match="--resume"):
        solve(options(checkpoint, limit=2), out, progress=False)
    with pytest.raises(RunError, match="shots: 2 -> 3"):
        solve(options(checkpoint, limit=2, shots=3), out, resume=True, progress=False)
    record = solve(options(checkpoint, limit=2), out, resume=True, progress=False)
    rows = (out / "predictions.jsonl").read_text().splitlines()
    assert rows[0] == lines[0] and len(rows) == 2 and record["metrics"]["n"] == 2


def test_scoring_uses_the_same_rules_in_both_modes():
    example = load_finqa(DEMO)[0]  # gold 0.13636, answer "13.6%"
    program = score(example, "subtract(1250, 1100), divide(#0, 1100)\n", "program")
    assert program["outcome"] == "correct" and program["exact"] and program["tolerant"] and program["program_correct"]
    direct = score(example, "13.6%", "direct")
    assert not direct["exact"] and direct["tolerant"]
    assert score(example, "no idea", "program")["outcome"] == "no_program"
    assert score(example, "divide(1, 0)", "program")["error_kind"] == "division_by_zero"


def test_exemplars_never_include_the_evaluated_example():
    pool = load_finqa(finqa_file("train_100.json"))
    retriever = prompts.ExemplarRetriever(pool)
    for example in pool[:20]:
        chosen = retriever.choose(example, 4, "similar")
        assert len(chosen) == 4 and example.id not in {e.id for e in chosen}
    assert retriever.choose(pool[50], 3, "first") == pool[:3]
    prompt = prompts.program_prompt(pool[50], retriever.choose(pool[50], 2))
    assert pool[50].program not in prompt and prompt.endswith("Program:")


def test_similar_exemplars_share_the_question_words():
    pool = load_finqa(finqa_file("train_100.json"))
    target = pool[10]
    best = prompts.ExemplarRetriever(pool[:10] + pool[11:]).choose(target, 1, "similar")[0]
    words = set(target.question.lower().split())
    assert len(words & set(best.question.lower().split())) >= 3


def test_compare_runs_both_modes_on_the_same_examples(tmp_path, checkpoint, capsys):
    code = main(["compare", "--mode", "direct", "--mode", "program", "--model", checkpoint, "--data", str(DEMO),
                 "--limit", "2", "--max-new-tokens", "4", "--shots", "1", "--exemplars", str(finqa_file("train_100.json")),
                 "--dtype", "fp32", "--out", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["mode"] for r in result["runs"]] == ["direct", "program"]
    assert json.loads((tmp_path / "comparison.json").read_text()) == result
    assert [(t["metric"], t["only_a"] + t["only_b"] + t["both"] + t["neither"]) for t in result["paired"]] == [
        ("exact", 2), ("tolerant", 2)]  # one pair of runs, each metric over both questions
    assert compare_runs([tmp_path / "direct", tmp_path / "program"]) == result


def test_compare_refuses_runs_on_different_examples(tmp_path, checkpoint):
    solve(options(checkpoint, limit=1, mode="direct"), tmp_path / "a", progress=False)
    solve(options(checkpoint, limit=2, mode="direct"), tmp_path / "b", progress=False)
    with pytest.raises(RunError, match="different examples"):
        compare_runs([tmp_path / "a", tmp_path / "b"])


def test_compare_puts_training_curves_side_by_side_step_by_step():
    from finprog.compare import format_comparison
    from finprog.runs import evaluation_file, read_rows
    from finprog.stats import paired

    runs = [REPO / "evals" / "studies" / "techniques" / "runs" / f"qwen2.5-coder-0.5b_{name}_sweep60_lr5e-4"
            for name in ("lora", "qlora")]
    result = compare_runs(runs)
    (point,) = result["steps"]  # each sweep evaluated once, at step 60, on dev_200's first 100
    records = [json.loads((run / "run.json").read_text()) for run in runs]
    assert point["step"] == 60 and point["exact"] == [r["curve"][-1]["exact"] for r in records]
    assert point["train_flops"] == [r["curve"][-1]["train_flops"] for r in records]
    rows = [{row["id"]: row["exact"] for row in read_rows(evaluation_file(run, 60))} for run in runs]
    (test,) = point["paired"]
    assert (test["only_a"], test["only_b"], test["p"]) == (paired(*rows).only_a, paired(*rows).only_b, paired(*rows).p)
    assert "step 60: qwen2.5-coder-0.5b_lora_sweep60_lr5e-4 26.0%" in format_comparison(result)
    assert "steps" not in compare_runs([REPO / "evals" / "studies" / "techniques" / "runs" /
                                        "qwen2.5-coder-0.5b_lora_2ep_dev_top4"] * 2)  # solves have no curve


def test_a_comparison_of_two_models_names_each_column_s_model():
    from finprog.compare import format_comparison

    runs = REPO / "evals" / "studies" / "techniques" / "runs"
    table = format_comparison(compare_runs([runs / f"qwen2.5-coder-0.5b_{name}_2ep_test_program"
                                            for name in ("lora", "qlora")]))
    header, _, model_line = table.splitlines()[:3]
    assert header == "test_100: 100 examples"
    assert model_line.split() == ["model", "evals/adapters/qwen2.5-coder-0.5b_lora_2ep",
                                  "evals/adapters/qwen2.5-coder-0.5b_qlora_2ep"]
    same = format_comparison(compare_runs([runs / "qwen2.5-coder-0.5b_lora_2ep_dev_top4"] * 2))
    assert same.splitlines()[0] == "dev_200: 200 examples, model qwen2.5-coder-0.5b_lora_2ep"


def test_curves_compare_as_far_as_each_has_come_and_only_training_runs_have_curves(tmp_path):
    from finprog.compare import compare_curves, format_steps

    runs = REPO / "evals" / "studies" / "techniques" / "runs"
    lora = runs / "qwen2.5-coder-0.5b_lora_2ep"
    running = tmp_path / "running"  # the LoRA curve stopped after its second evaluation
    (running / "evals").mkdir(parents=True)
    record = json.loads((lora / "run.json").read_text())
    (running / "run.json").write_text(json.dumps({**record, "status": "interrupted", "curve": record["curve"][:2]}))
    for step in (130, 260):
        shutil.copy(lora / "evals" / f"step-{step:06d}.jsonl", running / "evals")
    result = compare_curves([lora, running])
    assert [point["step"] for point in result["steps"]] == [130, 260]
    assert all(point["paired"][0]["only_a"] == point["paired"][0]["only_b"] == 0 for point in result["steps"])
    assert format_steps(result)[1] == "  step 130: qwen2.5-coder-0.5b_lora_2ep 21.0% (2.23e14), running 21.0% (2.23e14)"
    with pytest.raises(RunError, match="not a training run; only training runs have curves"):
        compare_curves([lora, runs / "qwen2.5-coder-0.5b_lora_2ep_dev_top4"])


def test_bad_options_are_refused():
    with pytest.raises(SolveError, match="--samples"):
        SolveOptions(samples=0)
    with pytest.raises(SolveError, match="--constrained decodes programs"):
        SolveOptions(mode="direct", constrained=True)


def test_programs_are_decoded_constrained_unless_told_otherwise():
    assert SolveOptions("qwen2.5-coder-0.5b", mode="program").constrained is True
    assert SolveOptions(mode="program").constrained is False  # the default, a trained adapter, decodes as trained
    assert SolveOptions(mode="program", constrained=False).constrained is False
    assert SolveOptions(mode="direct").constrained is False


def test_constrained_solve_writes_only_parseable_programs_or_cut_ones(tmp_path, checkpoint):
    record = solve(options(checkpoint, constrained=True, max_new_tokens=40, limit=2), tmp_path / "c", progress=False)
    assert record["config"]["constrained"] and record["metrics"]["n"] == 2
    assert "no_program" not in record["metrics"]["outcomes"]  # the grammar forces a program to start
    with pytest.raises(SolveError, match="--mode program"):
        SolveOptions(mode="direct", constrained=True)


def test_the_grammar_reads_the_numbers_of_the_context_the_cut_prompt_shows(tmp_path, checkpoint, monkeypatch):
    from finprog import constrained

    real, read = constrained.processor_factory, []

    def recording(model, tokenizer, examples, **kwargs):
        read.extend(examples)
        return real(model, tokenizer, examples, **kwargs)

    monkeypatch.setattr(constrained, "processor_factory", recording)
    cut = options(checkpoint, constrained=True, context="page", shots=0, max_prompt_tokens=300, limit=1)
    solve(cut, tmp_path / "c", progress=False)
    (example,) = load_finqa(DEMO)[:1]
    _, shown = prompts.user_turn(example, models.load_tokenizer(checkpoint), cut, prompts.ExemplarRetriever([]))
    assert read == [shown]
    assert len(shown.pre_text) + len(shown.post_text) < len(example.pre_text) + len(example.post_text)


def test_self_consistency_votes_over_samples_and_counts_their_flops(tmp_path, checkpoint):
    single = solve(options(checkpoint, limit=1, max_new_tokens=5), tmp_path / "one", progress=False)
    record = solve(options(checkpoint, limit=1, max_new_tokens=5, samples=3, prefix_cache=False), tmp_path / "three",
                   progress=False)  # each sample's prompt computed whole (with the cache, they share all but a token)
    row = json.loads((tmp_path / "three" / "predictions.jsonl").read_text())
    assert len(row["samples"]) == 3 and row["new_tokens"] >= 3
    assert record["flops"]["inference_total"] > 2 * single["flops"]["inference_total"]


def test_the_shared_prefix_runs_once_changes_no_answer_and_is_charged_to_one_row(tmp_path, checkpoint):
    records, rows = {}, {}
    for name, cache in (("whole", False), ("cached", True)):
        records[name] = solve(options(checkpoint, limit=4, prefix_cache=cache), tmp_path / name, progress=False)
        lines = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        rows[name] = {row["id"]: row for row in map(json.loads, lines)}
    completions = {name: {i: r["completion"] for i, r in by_id.items()} for name, by_id in rows.items()}
    assert completions["cached"] == completions["whole"]
    (tokens,) = {r["cached_prompt_tokens"] for r in rows["cached"].values()}
    shape = flops.ModelShape.from_config(models.model_config(checkpoint))
    prefix = flops.prefix_flops(shape, tokens)
    assert tokens > 100 and sorted(r["prefix_flops"] for r in rows["cached"].values()) == [0, 0, 0, prefix]
    assert records["cached"]["flops"]["prefix_total"] == prefix and records["whole"]["flops"]["prefix_total"] == 0
    assert {r["cached_prompt_tokens"] for r in rows["whole"].values()} == {0}
    for which in ("inference_total", "inference_total_executed"):
        assert records["cached"]["flops"][which] < records["whole"]["flops"][which]
    assert records["cached"]["config"]["prefix_cache"] and not records["whole"]["config"]["prefix_cache"]


def test_no_prefix_cache_turns_the_cache_off(tmp_path, checkpoint):
    common = ["solve", "--model", checkpoint, "--data", str(DEMO), "--limit", "2", "--max-new-tokens", "3",
              "--shots", "0", "--dtype", "fp32", "--json"]
    for flag, cache in ((), True), (("--no-prefix-cache",), False):
        assert main([*common, *flag, "--out", str(tmp_path / str(cache))]) == 0
        assert json.loads((tmp_path / str(cache) / "run.json").read_text())["config"]["prefix_cache"] is cache


def test_vote_prefers_the_most_frequent_value_and_breaks_ties_by_order():
    from finprog.solve import _vote

    def sample(value):
        return (value, {"value": value})

    assert _vote([sample(None), sample(2.0), sample(3.0), sample(3.0)])[1]["value"] == 3.0
    assert _vote([sample(2.0), sample(3.0)])[1]["value"] == 2.0
    assert _vote([sample(None), sample(None)])[1]["value"] is None
    assert _vote([sample(1.000001), sample(1.0000012), sample(2.0)])[1]["value"] == 1.000001  # equal at 5 decimals


def test_an_unknown_model_fails_before_a_run_folder_is_made(tmp_path):
    from finprog.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        solve(SolveOptions(model="no-such-model", data=str(DEMO), limit=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_model_whose_flops_cannot_be_counted_fails_before_loading(tmp_path, checkpoint, monkeypatch):
    import shutil

    from finprog import models
    from finprog.flops import UnsupportedModelError

    folder = tmp_path / "moe"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}))
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(UnsupportedModelError, match="model_type .mixtral."):
        solve(SolveOptions(model=str(folder), data=str(DEMO), limit=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
