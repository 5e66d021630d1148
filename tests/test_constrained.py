"""Grammar-constrained decoding: per-example grammars, the logits processor, and generation on tiny random models."""

import re

import llguidance
import llguidance.hf
import pytest
import torch
from transformers import LogitsProcessor

from finprog import constrained, dsl
from finprog.constrained import (
    FINQA_CONSTANTS,
    ConstrainedDecodingError,
    GrammarLogitsProcessor,
    processor_factory,
    program_grammar,
)
from finprog.data import Example, load_finqa
from finprog.generation import generate
from finprog.operands import example_numbers, example_rows
from finprog.paths import resource
from shared_data import finqa_file


def example(question="", pre_text=(), table=(), id="x"):
    return Example(id=id, pre_text=list(pre_text), post_text=[], table=[list(row) for row in table], question=question)


SALES = example(
    "what was the change in sales from 2018 to 2019?",
    ["sales rose 12 % to $ 1,234.5 million ; margins were .455 and -3 ."],
    [["", "2019", "2018"], ["sales", "$ 1,234.5", "$ 1,100"], ["cost ( net )", "( 30 )", "20"], ["total,", "1", "2"]],
)


class PreferEnd(LogitsProcessor):
    """Raises the end-of-sequence logit: a random model then ends once the grammar lets it, not at the token limit."""

    def __init__(self, tokenizer, bias: float = 2.0):
        self.eos_id, self.bias = tokenizer.eos_token_id, bias

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.eos_id] += self.bias
        return scores


def accepts(grammar: str, text: str, tokenizer) -> bool:
    """Whether `text` is a complete string of the grammar (token by token, as in decoding)."""
    lltokenizer = llguidance.hf.from_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(lltokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    return matcher.consume_tokens(tokenizer(text, add_special_tokens=False)["input_ids"]) and matcher.is_accepting()


def literals_and_rows(program: dsl.Program) -> tuple[set[str], set[str]]:
    literals = {arg.text for step in program.steps for arg in (step.first, step.second) if isinstance(arg, dsl.Literal)}
    rows = {step.first.label for step in program.steps if isinstance(step.first, dsl.Row)}
    return literals, rows


def dev_examples(n: int) -> list[Example]:
    return load_finqa(finqa_file("dev_200.json"))[:n]


def short_prompt(e: Example) -> str:
    """The tiny models know 512 positions: the question only, cut short."""
    return f"Question: {e.question[:160]}\nProgram:"


# ---------------------------------------------------------------- numbers, rows and grammars


def test_example_numbers_take_the_forms_finqa_programs_write():
    numbers = example_numbers(SALES)
    assert {"2018", "2019", "12", "12%", "1,234.5", "1234.5", "1,100", "1100", ".455", "-3", "3", "30", "20"} <= numbers
    assert not {"12 %", "$", "1,234", "234.5", "455"} & numbers
    assert all(re.fullmatch(constrained.GENERAL_NUMBER, n) for n in numbers)


def test_example_rows_are_the_first_cells_the_dsl_can_name():
    assert example_rows(SALES) == {"sales"}  # "" is empty; "cost ( net )" and "total," cannot be written in a step
    dev = load_finqa(finqa_file("dev_200.json"))
    assert all(re.fullmatch(constrained.GENERAL_ROW, row) for e in dev for row in example_rows(e))


def test_general_terminals_match_the_dsl_grammar():
    grammar = resource("grammar", "finqa.lark").read_text()
    assert f"NUMBER: /{constrained.GENERAL_NUMBER}/" in grammar
    assert f"CONSTANT: /{constrained.GENERAL_CONSTANT}/" in grammar


@pytest.mark.parametrize("restrict_numbers", [True, False])
def test_every_gold_program_is_in_its_examples_grammar(restrict_numbers, tiny_tokenizer):
    examples = load_finqa(finqa_file("dev_200.json"))[:60] + load_finqa(finqa_file("test_100.json"))[:40]
    for e in examples:
        text = dsl.format(dsl.parse(e.program))
        assert accepts(program_grammar(e, restrict_numbers), text, tiny_tokenizer), (e.id, text)


@pytest.mark.parametrize(
    "text, accepted",
    [
        ("subtract(1,234.5, 1,100), divide(#0, 1,100)", True),
        (" table_max(sales, none)\n", True),  # a leading space (after "Program:") and a final newline
        ("add(12%, const_m1), multiply(#0, const_1000)", True),
        ("add(.455, -3)", True),
        ("add(12,20)", False),  # arguments are separated by ", "
        ("add(13, 12)", False),  # 13 is not in the example
        ("add(12, const_12)", False),  # not one of FinQA's constants
        ("add(#0, 12)", False),  # a reference to a step that does not come before
        ("add(12, 20), add(#1, 12)", False),
        ("table_sum(cost ( net ), none)", False),
        ("table_sum(2019, none)", False),  # the header's first cell is empty, so no row is called 2019
        ("add(12, 20) ", False),  # nothing after the program but a newline
        ("add(12, 20)\n\n", False),
        ("\nadd(12, 20)", False),
    ],
)
def test_restricted_grammar(text, accepted, tiny_tokenizer):
    assert accepts(program_grammar(SALES), text, tiny_tokenizer) is accepted
    if accepted:
        dsl.parse(text)


@pytest.mark.parametrize(
    "text, accepted",
    [
        ("add(1,234, 5)", True),  # a thousands separator, as the DSL reads it
        ("add(1, 234)", True),
        ("add(1e5, const_77), table_sum(any row, none)", True),
        ("add(1,234)", False),
        ("add(#0, 1)", False),
        ("table_sum(two\nlines, none)", False),
    ],
)
def test_general_grammar(text, accepted, tiny_tokenizer):
    assert accepts(program_grammar(restrict_numbers=False), text, tiny_tokenizer) is accepted


def test_a_grammar_without_table_rows_has_no_table_steps(tiny_tokenizer):
    no_table = example("what is 7 minus 5?")
    assert "TABLE_OP" not in program_grammar(no_table)
    assert accepts(program_grammar(no_table), "subtract(7, 5)", tiny_tokenizer)


def test_restricting_numbers_needs_an_example():
    with pytest.raises(ConstrainedDecodingError, match="needs the example"):
        program_grammar(None)


# ---------------------------------------------------------------- the logits processor


def test_processor_allows_end_of_sequence_only_after_a_complete_program(tiny_llama, tiny_tokenizer):
    tok = tiny_tokenizer
    (processor,) = processor_factory(tiny_llama, tok, [SALES])([0])
    ids = tok("Program:")["input_ids"]
    width = len(tok) + 50  # a model vocabulary larger than the tokenizer's: the extra ids are never allowed

    def allowed_after(token: str | None) -> set[str]:
        if token:
            ids.append(tok.convert_tokens_to_ids(token))
        scores = processor(torch.tensor([ids]), torch.zeros(1, width))
        assert torch.isinf(scores[0, len(tok) :]).all()
        return set(tok.convert_ids_to_tokens(torch.nonzero(scores[0] == 0).flatten().tolist()))

    allowed = allowed_after(None)
    assert {"a", "d", "Ġ"} <= allowed and not {"<eos>", "1", "Ċ"} & allowed
    for token in tok.tokenize("add(12, 20)"):
        assert token in allowed and "<eos>" not in allowed
        allowed = allowed_after(token)
    assert {"<eos>", "Ċ", ","} <= allowed
    assert allowed_after("Ċ") == {"<eos>"}  # after the final newline only the end remains


def test_processor_leaves_a_finished_row_alone(tiny_llama, tiny_tokenizer):
    tok = tiny_tokenizer
    (processor,) = processor_factory(tiny_llama, tok, [SALES, SALES])([0, 1])
    prompt = tok("Program:")["input_ids"]
    ended = tok.tokenize("add(12, 20)") + ["<eos>", "<pad>", "<pad>"]  # generation pads a finished sequence
    going_on = tok.tokenize("subtract(1,234.5, 1,100), divide(#0, ")
    for length in range(len(ended) + 1):
        rows = [prompt + tok.convert_tokens_to_ids(tokens[:length]) for tokens in (ended, going_on)]
        scores = processor(torch.tensor(rows), torch.zeros(2, len(tok)))
    assert (scores[0] == 0).all()
    assert torch.isinf(scores[1]).any()


def test_processor_checks_the_batch_size(tiny_llama, tiny_tokenizer):
    (processor,) = processor_factory(tiny_llama, tiny_tokenizer, [SALES])([0])
    with pytest.raises(ConstrainedDecodingError, match="1 grammars but the batch has 2 rows"):
        processor(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, len(tiny_tokenizer)))


def test_a_rejected_grammar_is_a_typed_error(tiny_tokenizer):
    with pytest.raises(ConstrainedDecodingError, match="rejected"):
        GrammarLogitsProcessor(llguidance.hf.from_tokenizer(tiny_tokenizer), ['start: "unclosed'])


# ---------------------------------------------------------------- generation on tiny random models


def test_constrained_generation_yields_only_parseable_programs(tiny_model, tiny_tokenizer):
    examples = dev_examples(24)
    factory = processor_factory(tiny_model, tiny_tokenizer, examples)
    completions = generate(
        tiny_model, tiny_tokenizer, [short_prompt(e) for e in examples], batch_size=8, max_new_tokens=120,
        logits_processor=[PreferEnd(tiny_tokenizer)], logits_processor_for=factory,
    )
    assert {c.finish_reason for c in completions} <= {"eos", "stop"}
    for e, completion in zip(examples, completions):
        literals, rows = literals_and_rows(dsl.parse(completion.text))
        assert literals <= example_numbers(e) | set(FINQA_CONSTANTS), (e.id, completion.text)
        assert rows <= example_rows(e), (e.id, completion.text)


@pytest.mark.parametrize("restrict_numbers", [True, False])
def test_constrained_text_always_parses_unless_cut_at_the_token_limit(restrict_numbers, tiny_model, tiny_tokenizer):
    examples = dev_examples(16)
    factory = processor_factory(tiny_model, tiny_tokenizer, examples, restrict_numbers=restrict_numbers)
    completions = generate(
        tiny_model, tiny_tokenizer, [short_prompt(e) for e in examples], batch_size=8, max_new_tokens=48,
        logits_processor_for=factory,
    )
    assert any(c.finish_reason != "length" for c in completions)
    for completion in completions:
        if completion.finish_reason != "length":
            dsl.parse(completion.text)


def test_each_batch_row_decodes_under_its_own_examples_grammar(tiny_llama, tiny_tokenizer):
    left = example("values 11 and 22", id="left")
    right = example("values 33 and 44", table=[["x", "1"], ["sales", "5"]], id="right")
    # samples of one example share its object; prompt lengths differ, so batches are not in prompt order
    examples = [left, right, left, right, right, left, left]
    prompts = [f"{'?' * (3 * i)} {e.question}\nProgram:" for i, e in enumerate(examples)]
    seen: list[list[int]] = []
    factory = processor_factory(tiny_llama, tiny_tokenizer, examples)

    def recording(indices):
        seen.append(list(indices))
        return factory(indices)

    completions = generate(
        tiny_llama, tiny_tokenizer, prompts, batch_size=3, max_new_tokens=80, do_sample=True, seed=3,
        logits_processor=[PreferEnd(tiny_tokenizer, bias=1.0)], logits_processor_for=recording,
    )
    assert seen == [[6, 5, 4], [3, 2, 1], [0]]
    used = {"left": set(), "right": set()}  # numbers from the text or table, constants aside
    for e, completion in zip(examples, completions):
        literals, rows = literals_and_rows(dsl.parse(completion.text))
        assert literals <= example_numbers(e) | set(FINQA_CONSTANTS), (e.id, completion.text)
        assert rows <= example_rows(e), (e.id, completion.text)
        used[e.id] |= literals - set(FINQA_CONSTANTS)
    assert used["left"] and used["right"]
    assert example_numbers(left) == {"11", "22"} and example_numbers(right) == {"33", "44", "1", "5"}


def test_unconstrained_generation_is_unchanged(tiny_model, tiny_tokenizer):
    prompts = [short_prompt(e) for e in dev_examples(5)]
    plain = generate(tiny_model, tiny_tokenizer, prompts, batch_size=2, max_new_tokens=10)
    no_processors = generate(
        tiny_model, tiny_tokenizer, prompts, batch_size=2, max_new_tokens=10, logits_processor_for=lambda indices: []
    )
    assert no_processors == plain
