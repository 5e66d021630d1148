"""Generation: batched greedy or sampled decoding with per-sequence stop rules and token accounting.

Prompts are tokenized once, sorted by length and generated in batches of similar length
with left padding, so little compute goes to padding; results come back in the prompts'
order. Each sequence stops at an end-of-sequence token, at its stop rule (by default the
end of the first answer line) or at `max_new_tokens`, and the batch stops as soon as every
sequence has: no decode step runs after that.

With `prefix_cache`, the tokens that every prompt of the call starts with (the chat
template's head, the instructions: the longest common prefix of the tokenized prompts,
leaving each prompt at least one token of its own) are prefilled once, and every batch
starts from a copy of their keys and values (`SharedPrefix`) instead of computing them
again. A batch's rows are then the prefix, the row's padding, and its own tokens: the
attention mask hides the padding, and generate numbers positions by the mask's running
count, so each row sees exactly the prefix and its own tokens, at the positions it would
have alone. Greedy results are those without the cache, up to floating-point rounding
(a model with sliding-window layers shares a prefix at batch size 1 only: `SharedPrefix.of`).

Every `Completion` records two token counts. The useful ones (`prompt_tokens`,
`new_tokens`) are what the example needed; the executed ones (`batch_size`,
`batch_prompt_tokens`, `batch_new_tokens`) are what its batch ran: one prefill forward
over `batch_size` x `batch_prompt_tokens` positions, then `batch_new_tokens - 1` decode
forwards of `batch_size` positions each (the last token is sampled, never fed back).
Both prefills skip the `cached_prompt_tokens` a shared prefix supplied; that prefix ran
once per call, one forward over its tokens without logits.

Every `Completion` also carries its confidence: the log-probability of each token it
needed, under the model's own next-token distribution (fp32 log-softmax of the logits
the forward pass already computed, before any grammar mask, temperature or top-p), so
a constrained program's forced tokens show how little the model wanted them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from finprog.errors import FinprogError

StopRule = Callable[[str], int | None]
"""Given the text generated so far, where the answer ends (a cut position), or None to go on."""

FinishReason = Literal["stop", "eos", "length"]

DIRECT_MAX_NEW_TOKENS = 24
"""Room for a direct answer and its stop. The zoo's tokenizers spend a token per digit; on
the FinQA samples a gold answer's number takes at most 9 SmolLM2 tokens (median 4) and the
longest `exe_ans` written out 16, so 24 leaves a few tokens for a lead-in ("The answer
is") and caps what a rambling model can waste."""


class GenerationError(FinprogError, ValueError):
    """Generation was asked for something it cannot do (an empty prompt, a batch size below 1)."""


@dataclass(frozen=True)
class Completion:
    """What one prompt produced, and the tokens it and its batch cost."""

    text: str
    """The generated text, cut where the stop rule said the answer ends (special tokens dropped)."""
    finish_reason: FinishReason
    """"stop" (the stop rule), "eos" (end-of-sequence token) or "length" (max_new_tokens)."""
    prompt_tokens: int
    """This prompt's tokens, without padding (a cached prefix included)."""
    cached_prompt_tokens: int
    """The prompt's first tokens, whose keys and values came from the call's shared prefix (0: none)."""
    new_tokens: int
    """Tokens this example needed, up to and including the one that stopped it."""
    batch_index: int
    """Which batch of the call it ran in (0 first); one batch's completions share the fields below."""
    batch_size: int
    """Sequences in the batch it ran in."""
    batch_prompt_tokens: int
    """The batch's padded prompt length, a cached prefix included (the prefill ran `batch_size` x this many
    positions less the cached ones)."""
    batch_new_tokens: int
    """Positions the batch generated for every sequence: one per forward pass, the prefill included."""
    token_logprobs: tuple[float, ...] = ()
    """The log-probability of each of the `new_tokens` tokens under the model's own distribution (see above)."""

    @property
    def logprob_mean(self) -> float:
        """Mean token log-probability: the completion's confidence (0 is certain)."""
        return sum(self.token_logprobs) / len(self.token_logprobs)

    @property
    def logprob_min(self) -> float:
        """The least likely token's log-probability."""
        return min(self.token_logprobs)


def first_line(text: str) -> int | None:
    """The default stop rule: the position of the first newline after some non-whitespace text."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return None if end < 0 else end


def generate(model, tokenizer, prompts: Sequence[str], **options) -> list[Completion]:
    """Complete every prompt; the completions come back in the prompts' order.

    `options` are those of `iter_completions` (batch_size, max_new_tokens, do_sample,
    temperature, top_p, seed, stop, logits_processor, logits_processor_for, add_special_tokens,
    prefix_cache, progress).
    """
    by_index = dict(iter_completions(model, tokenizer, prompts, **options))
    return [by_index[index] for index in range(len(prompts))]


# Over 60 lines only by its keyword arguments and their documentation; the body fits one screen.
def iter_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = DIRECT_MAX_NEW_TOKENS,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop: StopRule | None = first_line,
    logits_processor: Sequence[LogitsProcessor] = (),
    logits_processor_for: Callable[[list[int]], Sequence[LogitsProcessor]] | None = None,
    add_special_tokens: bool = True,
    prefix_cache: bool = False,
    progress: bool = False,
) -> Iterator[tuple[int, Completion]]:
    """Yield `(prompt index, completion)` as each batch finishes (longest prompts first).

    Greedy unless `do_sample`; sampling uses exactly `temperature` and `top_p` (no top-k),
    seeded once per call with `seed`, so sampled text depends on how prompts are batched.
    The checkpoint's own decoding defaults (repetition penalty, top-k, ...) are
    overridden so every model decodes the same way. `stop` is applied to each sequence's
    text after every step (None: stop only at end-of-sequence or `max_new_tokens`).
    `logits_processor` runs on every step's scores before token selection;
    `logits_processor_for`, when given, is called once per batch with the batch's prompt
    indices (in row order) and its processors run after those, for that batch only (a
    grammar per example: `constrained.processor_factory`); both see the input ids as they
    would be without a prefix cache. `add_special_tokens=False` is for text that already
    holds them (chat templates). `prefix_cache` computes the prompts' shared prefix once
    (`SharedPrefix.of`); its cost is the caller's to count, once (`flops.prefix_flops`).
    `progress` shows a progress bar over prompts.
    """
    if batch_size < 1:
        raise GenerationError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        return
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    for index, ids in enumerate(encoded):
        if not ids:
            raise GenerationError(f"prompt {index} is empty after tokenization; give it some text")
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        logits_processor=list(logits_processor),
    )
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p, top_k=0)
        torch.manual_seed(seed)
    order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
    with float32_logits(model), grouped_decode_attention(model), \
            tqdm(total=len(order), disable=not progress, unit="prompt", desc="generating") as bar:
        prefix = SharedPrefix.of(model, encoded, batch_size) if prefix_cache else None
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start : start + batch_size]
            batch_settings = settings
            if logits_processor_for is not None:
                processors = [*settings["logits_processor"], *logits_processor_for(batch)]
                batch_settings = {**settings, "logits_processor": processors}
            completions = _generate_batch(model, tokenizer, [encoded[i] for i in batch], batch_index, stop,
                                          batch_settings, prefix)
            bar.update(len(batch))
            yield from zip(batch, completions)


@contextmanager
def float32_logits(model):
    """While generating with a 16-bit model, compute its logits in fp32 (a temporary fp32 output layer).

    bf16 keeps 8 significant bits: logits around 20 are rounded to multiples of 0.125, so
    near-tied tokens tie exactly and greedy decoding picks the lower token id (on
    qwen2.5-coder-0.5b the reply "Yes" became "No" that way). Upcasting the last hidden
    state and the output layer costs little, because only the positions being decoded
    reach it; the FLOP count is unchanged.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32:
        yield
        return
    model.set_output_embeddings(_Float32Linear(head))
    try:
        yield
    finally:
        model.set_output_embeddings(head)


class _Float32Linear(torch.nn.Linear):
    """An fp32 copy of a linear layer that upcasts its input."""

    def __init__(self, layer: torch.nn.Linear):
        super().__init__(layer.in_features, layer.out_features, bias=layer.bias is not None,
                         device=layer.weight.device, dtype=torch.float32)
        self.requires_grad_(False)
        self.weight.copy_(layer.weight)
        if layer.bias is not None:
            self.bias.copy_(layer.bias)

    def reset_parameters(self) -> None:
        """Nothing to initialise: the weights are copied in."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.float())


GROUPED_SDPA = "finprog_grouped_sdpa"


@contextmanager
def grouped_decode_attention(model):
    """While generating on a CPU, one new token attends per key/value head instead of per query head.

    transformers hands a grouped-query model's single decode token to PyTorch's
    `scaled_dot_product_attention` with `enable_gqa=True` when no mask is needed (batch 1),
    and PyTorch's CPU kernel runs that case about 12x slower than the same attention with
    the query heads of each group stacked as rows against their shared key/value head
    (evals/bench/decode.txt). The result is the same attention; prompts (prefill) are
    untouched.
    """
    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        yield
        return
    _register_grouped_sdpa()
    model.set_attn_implementation(GROUPED_SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


@cache
def _register_grouped_sdpa() -> None:
    """Make GROUPED_SDPA known to transformers (once)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        groups = getattr(module, "num_key_value_groups", 1)
        if query.shape[2] != 1 or groups == 1 or attention_mask is not None or kwargs.get("position_bias") is not None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        batch, heads, _, dim = query.shape
        stacked = query.reshape(batch, heads // groups, groups, dim)
        output = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, scale=scaling)
        return output.reshape(batch, heads, 1, dim).transpose(1, 2), None

    AttentionInterface.register(GROUPED_SDPA, attention)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


class SharedPrefix:
    """The tokens every prompt of a call starts with, and their keys and values, computed once for all batches."""

    def __init__(self, model, tokens: Sequence[int]):
        """Prefill `tokens`: one forward that keeps every layer's keys and values and computes no logits."""
        self.tokens = list(tokens)
        self.cache = _empty_cache(model)
        no_logits = torch.tensor([], dtype=torch.long, device=model.device)
        with torch.no_grad():
            model(input_ids=torch.tensor([self.tokens], device=model.device), cache=self.cache, use_cache=True,
                  logits_to_keep=no_logits)

    @classmethod
    def of(cls, model, encoded: Sequence[Sequence[int]], batch_size: int) -> SharedPrefix | None:
        """The prompts' shared prefix, prefilled; None when there is nothing to share or sharing would change results.

        The prefix is the prompts' longest common prefix, less what would leave a prompt no
        token of its own; nothing is shared by fewer than two prompts. A model with
        sliding-window layers shares only at batch size 1: its window counts cache slots,
        and the padding that follows the prefix in a batch would take some of them.
        """
        length = shared_prefix_length(encoded)
        if not length or (batch_size > 1 and any(_empty_cache(model).is_sliding)):
            return None
        return cls(model, encoded[0][:length])

    def expanded(self, rows: int) -> DynamicCache:
        """A copy of the cache for a batch of `rows` sequences (generate extends the copy, never the prefix's own)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def _empty_cache(model) -> DynamicCache:
    """The cache `generate` would make for `model`: one layer per decoder layer, sliding where its attention is."""
    return DynamicCache(config=model.config.get_text_config(decoder=True))


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens that every prompt starts with, leaving each at least one of its own; 0 for fewer than two prompts."""
    if len(encoded) < 2:
        return 0
    length = min(len(ids) for ids in encoded) - 1
    first = encoded[0]
    for ids in encoded[1:]:
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    return length


def batch_inputs(batch: Sequence[Sequence[int]], pad_id: int, device, prefix: SharedPrefix | None = None) -> dict:
    """`generate`'s inputs for a batch of token ids: input_ids and attention_mask, and the cache after a prefix.

    Without a prefix, rows are left-padded. After a shared prefix (which every row starts
    with), a row is the prefix, its padding, then its own tokens: the mask hides the padding,
    and generate's positions (the mask's running count) go on from the prefix's end.
    """
    cached = len(prefix.tokens) if prefix else 0
    width = max(len(ids) for ids in batch)
    rows = [[*ids[:cached], *[pad_id] * (width - len(ids)), *ids[cached:]] for ids in batch]
    mask = [[1] * cached + [0] * (width - len(ids)) + [1] * (len(ids) - cached) for ids in batch]
    inputs = {"input_ids": torch.tensor(rows, device=device), "attention_mask": torch.tensor(mask, device=device)}
    if prefix:
        inputs["cache"] = prefix.expanded(len(batch))
    return inputs


def _generate_batch(model, tokenizer, batch, batch_index, stop, settings,
                    prefix: SharedPrefix | None) -> list[Completion]:
    """Pad one batch of token ids (after the shared prefix, if any), generate with `settings`, and cut each
    sequence at its stop."""
    pad_id = settings["pad_token_id"]
    inputs = batch_inputs(batch, pad_id, model.device, prefix)
    width = inputs["input_ids"].shape[1]
    processors = settings["logits_processor"]
    if prefix and processors:
        processors = [_AsIfUncached(processors, batch_inputs(batch, pad_id, model.device)["input_ids"])]
    stopper = _StopCriteria(tokenizer, width, settings["eos_token_id"], stop)
    confidence = _TokenLogProbs()
    output = model.generate(
        **inputs,
        stopping_criteria=StoppingCriteriaList([stopper]),
        **{**settings, "logits_processor": [confidence, *processors]},
    )
    generated = output[:, width:].tolist()
    steps = len(generated[0])
    logprobs = confidence.finish(output)
    completions = []
    for row, (ids, new_ids) in enumerate(zip(batch, generated)):
        new_tokens, reason, text = stopper.finished.get(row) or (steps, "length", _decode(tokenizer, new_ids))
        completions.append(
            Completion(
                text=text,
                finish_reason=reason,
                prompt_tokens=len(ids),
                cached_prompt_tokens=len(prefix.tokens) if prefix else 0,
                new_tokens=new_tokens,
                batch_index=batch_index,
                batch_size=len(batch),
                batch_prompt_tokens=width,
                batch_new_tokens=steps,
                token_logprobs=tuple(logprobs[row][:new_tokens]),
            )
        )
    return completions


class _AsIfUncached(LogitsProcessor):
    """Runs the caller's processors on the input ids as the batch would hold them without the prefix cache.

    After a shared prefix a row's padding sits between the prefix and its own tokens;
    without it, in front. The processors see the left-padded prompts, then the tokens
    generated so far, so nothing they read depends on the cache.
    """

    def __init__(self, processors: Sequence[LogitsProcessor], left_padded: torch.LongTensor):
        self.processors = processors
        self.left_padded = left_padded

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = torch.cat([self.left_padded, input_ids[:, self.left_padded.shape[1] :]], dim=1)
        for processor in self.processors:
            scores = processor(ids, scores)
        return scores


class _TokenLogProbs(LogitsProcessor):
    """Records each chosen token's log-probability under the model's own distribution; changes no score.

    It runs first among the caller's processors, so it sees the fp32 logits before any
    grammar mask and before the sampling warpers (temperature, top-p), which generate
    applies after every caller's processor. A step's choice is only known at the next
    call (as the last input id) or, for the last step, from the output: `finish` reads it there.
    The log-softmax is elementwise work on logits already computed: no FLOPs are added.
    """

    def __init__(self):
        self.last: torch.Tensor | None = None  # the previous step's log-probabilities, batch x vocabulary
        self.chosen: list[torch.Tensor] = []  # one per step: the chosen tokens' log-probabilities, batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids)
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, input_ids: torch.LongTensor) -> None:
        if self.last is not None:
            self.chosen.append(self.last.gather(1, input_ids[:, -1:]).squeeze(1))
            self.last = None

    def finish(self, output: torch.LongTensor) -> list[list[float]]:
        """Per row, the log-probability of every generated token (rows past their end hold padding's)."""
        self._take(output)
        return torch.stack(self.chosen, dim=1).tolist()


class _StopCriteria(StoppingCriteria):
    """Per-sequence stop flags: end-of-sequence or the stop rule; remembers where and why each sequence stopped."""

    def __init__(self, tokenizer, prompt_width: int, eos_ids: list[int], stop: StopRule | None):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.eos_ids = set(eos_ids)
        self.stop = stop
        self.finished: dict[int, tuple[int, FinishReason, str]] = {}

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_width :].tolist()):
            if row in self.finished:
                continue
            text = _decode(self.tokenizer, ids)
            if ids[-1] in self.eos_ids:
                self.finished[row] = (len(ids), "eos", text)
                continue
            cut = self.stop(text) if self.stop else None
            if cut is not None:
                self.finished[row] = (len(ids), "stop", text[:cut])
        done = [row in self.finished for row in range(input_ids.shape[0])]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids from the model's generation config (chat models list several) and the tokenizer."""
    configured = model.generation_config.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise GenerationError("neither the model's generation config nor the tokenizer names an end-of-sequence token")
    return ids
