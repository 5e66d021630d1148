"""The prototype's direct prompt, the shared context layout and chat templates."""

from shared_data import finqa_file

from finprog.data import Example, load_finqa
from finprog.prompts import apply_chat_template, direct_prompt, render_context, render_table

EXAMPLE = Example(
    id="ABC/2019/page_7.pdf-1",
    pre_text=["revenue rose .", "costs fell ."],
    post_text=["see note 4 ."],
    table=[["", "2019", "2018"], ["sales", "$ 120", "$ 100"]],
    question="what was the change in sales?",
    answer="SECRET_ANSWER 20",
    program="subtract(SECRET_PROGRAM, 100)",
    exe_ans=987654.0,
    gold_inds={"table_1": "SECRET_GOLD_FACT"},
)

EXPECTED_DIRECT = """You are a financial calculator. Follow these steps:
Return ONLY the final numerical answer with no text explanation

Pre Text Data:
revenue rose . costs fell .

Table Data:
 | 2019 | 2018
sales | $ 120 | $ 100

Post Text Data:
see note 4 .

Question: what was the change in sales?
Final Answer (number only): """


def test_direct_prompt_is_the_prototypes_text():
    assert direct_prompt(EXAMPLE) == EXPECTED_DIRECT
    assert direct_prompt(EXAMPLE).endswith("(number only): ")


def test_direct_prompt_leaks_nothing_of_the_answer():
    prompt = direct_prompt(EXAMPLE)
    for secret in ("SECRET_ANSWER", "SECRET_PROGRAM", "SECRET_GOLD_FACT", "987654"):
        assert secret not in prompt


def test_context_is_shared_by_prompts():
    assert render_table(EXAMPLE.table) == " | 2019 | 2018\nsales | $ 120 | $ 100"
    assert render_context(EXAMPLE) in direct_prompt(EXAMPLE)
    assert render_context(EXAMPLE).startswith("Pre Text Data:\n") and render_context(EXAMPLE).endswith("see note 4 .")


def test_direct_prompt_on_a_real_record():
    example = load_finqa(finqa_file("train3.json"))[0]
    prompt = direct_prompt(example)
    assert f"Question: {example.question}\nFinal Answer (number only): " in prompt
    for row in example.table:
        assert " | ".join(row) + "\n" in prompt
    assert example.program not in prompt


def test_chat_template_wraps_a_single_user_turn(tiny_tokenizer):
    templated = apply_chat_template(tiny_tokenizer, "What is 2+2?")
    assert templated == "<bos><|user|>\nWhat is 2+2?\n<|assistant|>\n"


def test_without_a_template_the_text_is_unchanged(tiny_tokenizer):
    assert apply_chat_template(tiny_tokenizer, "What is 2+2?", use_template=False) == "What is 2+2?"
    tiny_tokenizer.chat_template = None
    assert apply_chat_template(tiny_tokenizer, "What is 2+2?") == "What is 2+2?"
