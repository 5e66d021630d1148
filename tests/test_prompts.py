"""The prototype's direct prompt, the shared context layout and chat templates."""

from shared_data import REPO, finqa_file

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


DEFAULT_SYSTEM = "{% if messages[0]['role'] != 'system' %}<|system|>\nYou are a helpful assistant.\n{% endif %}"


def test_a_bare_prompt_shows_only_the_facts_and_the_question():
    from finprog.prompts import PROGRAM_INSTRUCTIONS, bare_prompt

    text = bare_prompt(EXAMPLE, "program", cue=False)
    assert text == ("revenue rose . costs fell .\n\n | 2019 | 2018\nsales | $ 120 | $ 100\n\nsee note 4 .\n\n"
                    "Question: what was the change in sales?")
    assert "SECRET" not in text and PROGRAM_INSTRUCTIONS not in text and "987654" not in text
    no_text = Example(id="x", pre_text=[], post_text=[], table=EXAMPLE.table, question="q?")
    assert bare_prompt(no_text, "program", cue=False) == " | 2019 | 2018\nsales | $ 120 | $ 100\n\nQuestion: q?"
    assert bare_prompt(no_text, "program", cue=True).endswith("\nProgram:")
    assert bare_prompt(no_text, "direct", cue=True).endswith("\nAnswer:")


def test_bare_prompts_replace_the_default_system_turn_with_an_empty_one(tiny_tokenizer):
    tiny_tokenizer.chat_template = DEFAULT_SYSTEM + tiny_tokenizer.chat_template.removeprefix("{{ bos_token }}")
    instructed = apply_chat_template(tiny_tokenizer, "Q")
    bare = apply_chat_template(tiny_tokenizer, "Q", bare=True)
    assert "helpful assistant" in instructed and "helpful assistant" not in bare
    assert bare == "<|system|>\n\n<|user|>\nQ\n<|assistant|>\n"
    assert apply_chat_template(tiny_tokenizer, "Q", bare=True, reply="add(1, 2)") == (
        "<|system|>\n\n<|user|>\nQ\n<|assistant|>\nadd(1, 2)\n")


def test_a_template_without_a_system_role_keeps_its_own_turns(tiny_tokenizer):
    tiny_tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                                    "{{ raise_exception('no system role') }}{% endif %}[{{ m['content'] }}]{% endfor %}")
    assert apply_chat_template(tiny_tokenizer, "Q", bare=True) == "[Q]"


def test_bare_options_refuse_exemplars_and_name_the_style(tiny_tokenizer):
    import pytest

    from finprog.prompts import bare_without_template_note
    from finprog.solve import SolveError, SolveOptions
    from finprog.training import TrainingError, TrainOptions

    prompted = "qwen2.5-coder-0.5b"  # a zoo model: no training run sets its prompt options
    assert SolveOptions(prompted, prompt="bare").shots == 0 and SolveOptions(prompted).shots == 1
    with pytest.raises(SolveError, match="--shots needs --prompt instructed"):
        SolveOptions(prompted, prompt="bare", shots=2)
    with pytest.raises(TrainingError, match="unknown prompt style 'plain'"):
        TrainOptions("m", "t", "e", prompt="plain")
    options = TrainOptions("m", "t", "e")
    assert (options.prompt, options.shots) == ("bare", 0)
    assert bare_without_template_note(tiny_tokenizer, options) is None
    tiny_tokenizer.chat_template = None
    assert "'Program:'" in bare_without_template_note(tiny_tokenizer, options)


def test_solve_asks_a_trained_model_in_its_style_and_refuses_the_other(tmp_path):
    import json

    import pytest

    from finprog.solve import SolveError, SolveOptions

    committed = json.loads((REPO / "evals" / "adapters" / "smollm2-135m_lora" / "run.json").read_text())

    def trained(name: str, **config) -> str:
        """A finished training record (a committed one, instructed) with `config` changed."""
        folder = tmp_path / name
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({**committed, "config": {**committed["config"], **config}}))
        return str(folder)

    bare = trained("bare", prompt="bare")
    assert (SolveOptions(bare).prompt, SolveOptions(bare).shots) == ("bare", 0)
    with pytest.raises(SolveError, match="was trained with bare prompts; ask it with --prompt bare"):
        SolveOptions(bare, prompt="instructed")
    assert SolveOptions(trained("before")).prompt == "instructed"  # run.json of version 1: instructed
    with pytest.raises(SolveError, match="was trained with instructed prompts"):
        SolveOptions(trained("old"), prompt="bare")


def test_solve_asks_with_a_trained_models_measured_defaults_unless_told_otherwise(tmp_path):
    import json

    import pytest

    from finprog.models import SOLVE_DEFAULTS, ModelOptionError
    from finprog.solve import SolveOptions

    committed = json.loads((REPO / "evals" / "adapters" / "smollm2-135m_lora" / "run.json").read_text())
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({**committed, "config": {**committed["config"], "top_k": 5,
                                                                           "context": "retrieved"}}))
    assert SolveOptions(str(folder)).top_k == 5  # as trained
    defaults = folder / SOLVE_DEFAULTS
    defaults.write_text(json.dumps({"why": "dev: as accurate, fewer FLOPs", "top_k": 4, "max_prompt_tokens": 300}))
    asked = SolveOptions(str(folder))
    assert (asked.top_k, asked.max_prompt_tokens, asked.context) == (4, 300, "retrieved")
    assert SolveOptions(str(folder), top_k=5).top_k == 5  # the user's setting wins
    for saved, problem in (({"top_k": 4}, '"why"'), ({"why": "x", "shots": 2}, "unknown setting 'shots'"),
                           ({"why": "x", "top_k": "4"}, "top_k must be an integer"), ("[", "cannot be read")):
        defaults.write_text(saved if isinstance(saved, str) else json.dumps(saved))
        with pytest.raises(ModelOptionError, match=problem) as error:
            SolveOptions(str(folder))
        assert str(defaults) in str(error.value) and "\n" not in str(error.value)


def test_solves_default_adapter_is_asked_with_its_measured_four_facts():
    from finprog.solve import SolveOptions

    assert SolveOptions().top_k == 4 and SolveOptions(model="qwen2.5-coder-1.5b_lora_1ep").top_k == 5
