"""Batched generation on tiny random models: batch-1 equivalence, stop rules, token accounting, order."""

import math
import string
from contextlib import contextmanager

import pytest
import torch
from transformers import LogitsProcessor

from finprog.generation import GenerationError, first_line, generate, grouped_decode_attention

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
