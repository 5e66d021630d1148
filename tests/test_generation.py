"""Batched generation on tiny random models: batch-1 equivalence, stop rules, token accounting, order."""

import math
import string
from contextlib import contextmanager

import pytest
import torch
from transformers import LogitsProcessor

from conftest import build_tiny_model
from finprog.generation import GenerationError, first_line, generate, grouped_decode_attention, shared_prefix_length

PROMPTS = [
    "What is the sum?",
    "Revenue grew from 1,204 to 1,388 in 2019; by how much did it grow, in percent?",
    "x",
    "Table: 2019 | 2018\nsales | 12 | 15\nQuestion: what is the change?",
    "the net income",
    "Pre text: the company reported 34.7% growth in operating income over the prior year.",
    "ok?",
]


class AllowOnly(LogitsProcessor):
    """Masks every token but the given ones, so a random model writes readable text."""

    def __init__(self, tokenizer, text: str):
        self.allowed = sorted({tokenizer.convert_tokens_to_ids(t) for t in tokenizer.tokenize(text)})

    def __call__(self, input_ids, scores):
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.allowed] = scores[:, self.allowed]
        return masked


class Script(LogitsProcessor):
    """Forces a scripted continuation (a list of vocabulary tokens) per prompt, repeating its last token."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.pad_id = tokenizer.pad_token_id
        self.scripts = {
            tuple(tokenizer(prompt)["input_ids"]): tokenizer.convert_tokens_to_ids(tokens)
            for prompt, tokens in scripts.items()
        }

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids.tolist()):
            while ids and ids[0] == self.pad_id:
                ids = ids[1:]
            prompt, tokens = next((p, t) for p, t in self.scripts.items() if tuple(ids[: len(p)]) == p)
            forced[row, tokens[min(len(ids) - len(prompt), len(tokens) - 1)]] = 0.0
        return forced


@contextmanager
def count_forward_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def readable(tokenizer):
    return [AllowOnly(tokenizer, string.ascii_lowercase + string.digits + " .%\n")]


def test_batched_greedy_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    processors = readable(tiny_tokenizer)
    batched = generate(tiny_model, tiny_tokenizer, PROMPTS, batch_size=3, max_new_tokens=12, logits_processor=processors)
    single = [
        generate(tiny_model, tiny_tokenizer, [prompt], batch_size=1, max_new_tokens=12, logits_processor=processors)[0]
        for prompt in PROMPTS
    ]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [(c.new_tokens, c.finish_reason, c.prompt_tokens) for c in batched] == [
        (c.new_tokens, c.finish_reason, c.prompt_tokens) for c in single
    ]
    assert any(c.batch_prompt_tokens > c.prompt_tokens for c in batched), "no sequence was padded"
    assert all(c.batch_size == 1 and c.batch_prompt_tokens == c.prompt_tokens for c in single)


def test_batched_greedy_equals_one_at_a_time_without_stop(tiny_model, tiny_tokenizer):
    batched = generate(tiny_model, tiny_tokenizer, PROMPTS, batch_size=4, max_new_tokens=8, stop=None)
    single = [generate(tiny_model, tiny_tokenizer, [p], max_new_tokens=8, stop=None)[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.new_tokens == 8 and c.finish_reason == "length" for c in batched)


def test_stop_at_first_line_cuts_text_and_counts_the_stopping_token(tiny_llama, tiny_tokenizer):
    script = Script(
        tiny_tokenizer,
        {
            "alpha": ["Ċ", "Ġ", "4", "2Ċ", "x"],  # leading newline is not the end; "2\n" is one token
            "beta": ["7", "<eos>"],
            "gamma": ["1", "Ġ", "%", "Ċ"],
        },
    )
    alpha, beta, gamma = generate(
        tiny_llama, tiny_tokenizer, ["alpha", "beta", "gamma"], max_new_tokens=20, logits_processor=[script]
    )
    assert (alpha.text, alpha.new_tokens, alpha.finish_reason) == ("\n 42", 4, "stop")
    assert (beta.text, beta.new_tokens, beta.finish_reason) == ("7", 2, "eos")
    assert (gamma.text, gamma.new_tokens, gamma.finish_reason) == ("1 %", 4, "stop")
    assert alpha.batch_new_tokens == 4


def test_no_decode_step_after_every_sequence_stopped(tiny_llama, tiny_tokenizer):
    script = Script(tiny_tokenizer, {"alpha": ["4", "Ċ"], "beta": ["1", "2", "3", "4", "<eos>"], "gamma": ["<eos>"]})
    with count_forward_calls(tiny_llama) as calls:
        completions = generate(
            tiny_llama, tiny_tokenizer, ["alpha", "beta", "gamma"], max_new_tokens=20, logits_processor=[script]
        )
    assert [c.new_tokens for c in completions] == [2, 5, 1]
    assert len(calls) == 5
    assert {c.batch_new_tokens for c in completions} == {5}


def test_max_new_tokens_is_respected(tiny_llama, tiny_tokenizer):
    script = Script(tiny_tokenizer, {"alpha": ["1"]})
    with count_forward_calls(tiny_llama) as calls:
        (completion,) = generate(tiny_llama, tiny_tokenizer, ["alpha"], max_new_tokens=5, logits_processor=[script])
    assert (completion.text, completion.new_tokens, completion.finish_reason) == ("11111", 5, "length")
    assert len(calls) == 5


def test_without_stop_rule_only_eos_or_length_stop(tiny_llama, tiny_tokenizer):
    script = Script(tiny_tokenizer, {"alpha": ["4", "Ċ", "5", "<eos>"]})
    (completion,) = generate(
        tiny_llama, tiny_tokenizer, ["alpha"], stop=None, max_new_tokens=20, logits_processor=[script]
    )
    assert (completion.text, completion.new_tokens, completion.finish_reason) == ("4\n5", 4, "eos")


def test_order_is_restored_after_grouping_by_length(tiny_llama, tiny_tokenizer):
    prompts = ["a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccc", "dddddddddddddddddddddddd", "eeeee"]
    answers = ["1", "2", "3", "4", "5"]
    script = Script(tiny_tokenizer, {p: [a, "Ċ"] for p, a in zip(prompts, answers)})
    completions = generate(tiny_llama, tiny_tokenizer, prompts, batch_size=2, logits_processor=[script])
    assert [c.text for c in completions] == answers
    # longest first, two at a time: (b, d), (c, e), (a)
    lengths = [c.prompt_tokens for c in completions]
    assert lengths == [2, 31, 11, 25, 6]
    assert [c.batch_prompt_tokens for c in completions] == [2, 31, 11, 31, 11]
    assert [c.batch_size for c in completions] == [1, 2, 2, 2, 2]
    assert [c.batch_index for c in completions] == [2, 0, 1, 0, 1]


def test_checkpoint_decoding_defaults_do_not_change_greedy(fresh_tiny_llama, tiny_tokenizer):
    model = fresh_tiny_llama
    plain = generate(model, tiny_tokenizer, PROMPTS[:3], stop=None, max_new_tokens=10)
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.no_repeat_ngram_size = 1
    assert generate(model, tiny_tokenizer, PROMPTS[:3], stop=None, max_new_tokens=10) == plain


def test_sampling_is_seeded(tiny_llama, tiny_tokenizer):
    def sample(seed):
        return generate(
            tiny_llama, tiny_tokenizer, PROMPTS, do_sample=True, seed=seed, top_p=0.9, stop=None, max_new_tokens=10
        )

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_add_special_tokens_false_leaves_prompt_as_is(tiny_llama, tiny_tokenizer):
    with_bos, without_bos = (
        generate(tiny_llama, tiny_tokenizer, ["hello"], max_new_tokens=1, add_special_tokens=flag)[0]
        for flag in (True, False)
    )
    assert (with_bos.prompt_tokens, without_bos.prompt_tokens) == (6, 5)


def test_empty_inputs(tiny_llama, tiny_tokenizer):
    assert generate(tiny_llama, tiny_tokenizer, []) == []
    with pytest.raises(GenerationError, match="prompt 1 is empty"):
        generate(tiny_llama, tiny_tokenizer, ["a", ""], add_special_tokens=False)
    with pytest.raises(GenerationError, match="batch_size"):
        generate(tiny_llama, tiny_tokenizer, ["a"], batch_size=0)


@pytest.mark.parametrize(
    "text, cut",
    [("42\nmore", 2), ("42", None), ("", None), ("\n \n", None), ("\n 42\n", 4), (" 3.5 \n\n", 5)],
)
def test_first_line(text, cut):
    assert first_line(text) == cut



def test_a_16_bit_model_decodes_from_fp32_logits_and_keeps_its_tied_output_layer(fresh_tiny_llama, tiny_tokenizer):
    model = fresh_tiny_llama.to(torch.bfloat16)
    head = model.get_output_embeddings()
    seen = []

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append(bool((scores.to(torch.bfloat16).float() != scores).any()))
            return scores

    generate(model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=3, stop=None, logits_processor=[Record()])
    assert seen and all(seen), "some logits were rounded to bf16"
    assert model.get_output_embeddings() is head and head.weight is model.get_input_embeddings().weight


def test_grouped_decode_attention_gives_the_same_logits_and_is_undone(fresh_tiny_llama, tiny_tokenizer):
    model = fresh_tiny_llama
    assert model.config._attn_implementation == "sdpa" and model.config.num_key_value_heads < model.config.num_attention_heads
    ids = tiny_tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]

    def decode_logits():
        with torch.no_grad():
            prefill = model(ids[:, :-1], use_cache=True)
            return model(ids[:, -1:], cache=prefill.past_key_values).logits

    plain = decode_logits()
    with grouped_decode_attention(model):
        assert model.config._attn_implementation != "sdpa"
        grouped = decode_logits()
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(grouped, plain)


def test_token_logprobs_are_the_models_own_before_any_mask(tiny_llama, tiny_tokenizer):
    """Each token's log-probability is the unmasked model's, as a teacher-forced forward pass gives it."""
    processors = readable(tiny_tokenizer)  # a mask: the recorded log-probs must not see it
    completions = generate(tiny_llama, tiny_tokenizer, PROMPTS[:4], batch_size=2, max_new_tokens=6, stop=None,
                           logits_processor=processors)
    for prompt, completion in zip(PROMPTS, completions):
        prompt_ids = tiny_tokenizer(prompt)["input_ids"]
        new_ids = tiny_tokenizer(completion.text, add_special_tokens=False)["input_ids"][: completion.new_tokens]
        with torch.no_grad():
            logits = tiny_llama(torch.tensor([prompt_ids + new_ids])).logits[0, len(prompt_ids) - 1 : -1]
        expected = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(new_ids)[:, None]).squeeze(1)
        assert len(completion.token_logprobs) == completion.new_tokens == len(new_ids)
        torch.testing.assert_close(torch.tensor(completion.token_logprobs), expected, atol=1e-4, rtol=1e-4)
        assert completion.logprob_min <= completion.logprob_mean <= 0
    # the mask made some chosen tokens less likely than the model's favourite: proof the log-probs are unmasked
    assert any(c.logprob_mean < -0.5 for c in completions)


def test_sampled_token_logprobs_ignore_temperature_and_a_forcing_processor(tiny_llama, tiny_tokenizer):
    script = Script(tiny_tokenizer, {"alpha": ["4", "2", "<eos>"]})  # the same tokens whatever the temperature
    runs = [generate(tiny_llama, tiny_tokenizer, ["alpha"], do_sample=True, temperature=t, logits_processor=[script])[0]
            for t in (5.0, 0.2)]
    greedy_free = generate(tiny_llama, tiny_tokenizer, ["alpha"], max_new_tokens=1)[0]
    assert runs[0].text == runs[1].text == "42"
    assert runs[0].token_logprobs == pytest.approx(runs[1].token_logprobs)
    assert all(math.isfinite(x) and x <= 0 for x in runs[0].token_logprobs)
    assert greedy_free.logprob_mean >= runs[0].token_logprobs[0]  # greedy takes the model's most likely token


# ---------------------------------------------------------------- the shared-prefix cache

HEAD = "You are a careful analyst. Read the report, then answer with one number.\n\n"
"""A shared head (as instructions and a chat template's head are) before each of PROMPTS."""


def with_and_without_cache(model, tokenizer, prompts, **options):
    return [generate(model, tokenizer, prompts, prefix_cache=cached, **options) for cached in (False, True)]


def head_tokens(tokenizer, prompts) -> int:
    """The tokens every prompt starts with (the tiny tokenizer spells out every byte, so no merge crosses the head)."""
    encoded = tokenizer(list(prompts))["input_ids"]
    return next(i for i in range(min(map(len, encoded))) if len({tuple(ids[: i + 1]) for ids in encoded}) > 1)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_prefix_cache_gives_the_same_greedy_completions(tiny_model, tiny_tokenizer, batch_size):
    prompts = [HEAD + p for p in PROMPTS]  # mixed lengths: batches of 3 pad between the prefix and a row's own tokens
    plain, cached = with_and_without_cache(tiny_model, tiny_tokenizer, prompts, batch_size=batch_size,
                                           max_new_tokens=10, logits_processor=readable(tiny_tokenizer))
    assert [c.text for c in cached] == [c.text for c in plain]
    for a, b in zip(plain, cached):
        assert (b.new_tokens, b.finish_reason, b.prompt_tokens, b.batch_prompt_tokens, b.batch_new_tokens) == (
            a.new_tokens, a.finish_reason, a.prompt_tokens, a.batch_prompt_tokens, a.batch_new_tokens)
        assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-4)
    assert {c.cached_prompt_tokens for c in cached} == {head_tokens(tiny_tokenizer, prompts)}
    assert {c.cached_prompt_tokens for c in plain} == {0}
    if batch_size > 1:
        assert any(c.batch_prompt_tokens > c.prompt_tokens for c in cached), "no sequence was padded"


def test_processors_see_the_same_input_ids_and_scores_with_and_without_the_cache(tiny_llama, tiny_tokenizer):
    seen = {False: [], True: []}

    class Record(LogitsProcessor):
        def __init__(self, log, rows):
            self.log, self.rows = log, rows

        def __call__(self, input_ids, scores):
            self.log.append((self.rows, input_ids.tolist(), scores.clone()))
            return scores

    prompts = [HEAD + p for p in PROMPTS[:5]]
    for cached in (False, True):
        generate(tiny_llama, tiny_tokenizer, prompts, batch_size=2, max_new_tokens=5, stop=None, prefix_cache=cached,
                 logits_processor=readable(tiny_tokenizer),  # no end-of-sequence: every batch runs 5 steps
                 logits_processor_for=lambda rows, log=seen[cached]: [Record(log, list(rows))])
    assert len(seen[True]) == len(seen[False]) == 3 * 5
    for (rows, ids, scores), (rows_cached, ids_cached, scores_cached) in zip(seen[False], seen[True]):
        assert (rows_cached, ids_cached) == (rows, ids)
        torch.testing.assert_close(scores_cached, scores, atol=1e-4, rtol=1e-4)


def test_the_prefix_cache_under_a_grammar_per_example(tiny_qwen2, tiny_tokenizer):
    from finprog import constrained
    from finprog.data import load_finqa
    from shared_data import REPO

    examples = load_finqa(REPO / "data" / "demo.json")[:4]
    prompts = [f"{HEAD}Question: {e.question}\nProgram:" for e in examples]
    grammar = constrained.processor_factory(tiny_qwen2, tiny_tokenizer, examples)
    plain, cached = with_and_without_cache(tiny_qwen2, tiny_tokenizer, prompts, batch_size=3, max_new_tokens=12,
                                           logits_processor_for=grammar)
    assert [c.text for c in cached] == [c.text for c in plain]
    assert all(c.cached_prompt_tokens > 0 for c in cached)


def test_sampled_repeats_of_prompts_share_the_prefix_and_sample_the_same(tiny_llama, tiny_tokenizer):
    prompts = [p for p in [HEAD + "alpha?", HEAD + "what grew by 12%?"] for _ in range(3)]  # 3 samples each, as solve
    plain, cached = with_and_without_cache(tiny_llama, tiny_tokenizer, prompts, batch_size=4, do_sample=True,
                                           temperature=0.9, top_p=0.95, seed=3, stop=None, max_new_tokens=8)
    assert [c.text for c in cached] == [c.text for c in plain]
    assert len({c.text for c in cached}) > 2  # the samples differ: sampling ran
    assert {c.cached_prompt_tokens for c in cached} == {head_tokens(tiny_tokenizer, prompts)}


def test_a_prompt_alone_or_without_a_shared_prefix_runs_whole(tiny_llama, tiny_tokenizer):
    (alone,) = generate(tiny_llama, tiny_tokenizer, [HEAD + "alpha"], prefix_cache=True, stop=None, max_new_tokens=4)
    (plain,) = generate(tiny_llama, tiny_tokenizer, [HEAD + "alpha"], stop=None, max_new_tokens=4)
    assert (alone.text, alone.cached_prompt_tokens) == (plain.text, 0)
    unshared = ["alpha", "beta", "x"]  # without <bos>, not even a first token is shared
    plain, cached = with_and_without_cache(tiny_llama, tiny_tokenizer, unshared, add_special_tokens=False,
                                           batch_size=2, stop=None, max_new_tokens=4)
    assert [c.text for c in cached] == [c.text for c in plain] and {c.cached_prompt_tokens for c in cached} == {0}
    same = generate(tiny_llama, tiny_tokenizer, ["x"] * 3, prefix_cache=True, stop=None, max_new_tokens=4)
    assert {(c.prompt_tokens, c.cached_prompt_tokens) for c in same} == {(2, 1)}  # <bos> cached, "x" its own


@pytest.mark.parametrize("encoded, length", [
    ([[1, 2, 3, 4], [1, 2, 3, 5, 6]], 3),
    ([[1, 2, 3], [1, 2, 3, 4]], 2),  # the shorter prompt keeps a token of its own
    ([[1, 2], [1, 2], [1, 2]], 1),
    ([[7, 2], [1, 2]], 0),
    ([[1, 2, 3]], 0),  # one prompt shares nothing
    ([[1], [1]], 0),
])
def test_shared_prefix_length(encoded, length):
    assert shared_prefix_length(encoded) == length


def test_a_sliding_window_model_shares_a_prefix_only_one_prompt_at_a_time(tiny_tokenizer):
    model = build_tiny_model("qwen2", tiny_tokenizer, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    prompts = [HEAD + p for p in PROMPTS[:4]]  # the prefix is longer than the window
    single, single_cached = with_and_without_cache(model, tiny_tokenizer, prompts, batch_size=1, max_new_tokens=8,
                                                   stop=None)
    assert [c.text for c in single_cached] == [c.text for c in single]
    assert {c.cached_prompt_tokens for c in single_cached} == {head_tokens(tiny_tokenizer, prompts)}
    assert head_tokens(tiny_tokenizer, prompts) > 16
    batched = generate(model, tiny_tokenizer, prompts, batch_size=2, max_new_tokens=8, stop=None, prefix_cache=True)
    assert [c.text for c in batched] == [c.text for c in single] and {c.cached_prompt_tokens for c in batched} == {0}
