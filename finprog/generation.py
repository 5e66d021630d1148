"""Generation: batched greedy or sampled decoding with per-sequence stop rules and token accounting.

Prompts are tokenized once, sorted by length and generated in batches of similar length
with left padding, so little compute goes to padding; results come back in the prompts'
order. Each sequence stops at an end-of-sequence token, at its stop rule (by default the
end of the first answer line) or at `max_new_tokens`, and the batch stops as soon as every
sequence has: no decode step runs after that.

Every `Completion` records two token counts. The useful ones (`prompt_tokens`,
`new_tokens`) are what the example needed; the executed ones (`batch_size`,
`batch_prompt_tokens`, `batch_new_tokens`) are what its batch ran: one prefill forward
over `batch_size` x `batch_prompt_tokens` positions, then `batch_new_tokens - 1` decode
forwards of `batch_size` positions each (the last token is sampled, never fed back).

Every `Completion` also carries its confidence: the log-probability of each token it
needed, under the model's own next-token distribution (fp32 log-softmax of the logits
the forward pass already computed, before any grammar mask, temperature or top-p), so
a constrained program's forced tokens show how little the model wanted them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList

StopRule = Callable[[str], int | None]
"""Given the text generated so far, where the answer ends (a cut position), or None to go on."""

FinishReason = Literal["stop", "eos", "length"]

DIRECT_MAX_NEW_TOKENS = 24
"""Room for a direct answer and its stop. The zoo's tokenizers spend a token per digit; on
the FinQA samples a gold answer's number takes at most 9 SmolLM2 tokens (median 4) and the
longest `exe_ans` written out 16, so 24 leaves a few tokens for a lead-in ("The answer
is") and caps what a rambling model can waste."""


class GenerationError(ValueError):
    """Generation was asked for something it cannot do (an empty prompt, a batch size below 1)."""


@dataclass(frozen=True)
class Completion:
    """What one prompt produced, and the tokens it and its batch cost."""

    text: str
    """The generated text, cut where the stop rule said the answer ends (special tokens dropped)."""
    finish_reason: FinishReason
    """"stop" (the stop rule), "eos" (end-of-sequence token) or "length" (max_new_tokens)."""
    prompt_tokens: int
    """This prompt's tokens, without padding."""
    new_tokens: int
    """Tokens this example needed, up to and including the one that stopped it."""
    batch_index: int
    """Which batch of the call it ran in (0 first); one batch's completions share the fields below."""
    batch_size: int
    """Sequences in the batch it ran in."""
    batch_prompt_tokens: int
    """The batch's padded prompt length (the prefill ran `batch_size` x this many positions)."""
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
    progress).
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
    grammar per example: `constrained.processor_factory`). `add_special_tokens=False` is
    for text that already holds them (chat templates). `progress` shows a progress bar
    over prompts.
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
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start : start + batch_size]
            batch_settings = settings
            if logits_processor_for is not None:
                processors = [*settings["logits_processor"], *logits_processor_for(batch)]
                batch_settings = {**settings, "logits_processor": processors}
            completions = _generate_batch(model, tokenizer, [encoded[i] for i in batch], batch_index, stop, batch_settings)
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
    (evals/bench_decode.txt). The result is the same attention; prompts (prefill) are
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


def _generate_batch(model, tokenizer, batch, batch_index, stop, settings) -> list[Completion]:
    """Left-pad one batch of token ids, generate with `settings`, and cut each sequence at its stop."""
    pad_id = settings["pad_token_id"]
    width = max(len(ids) for ids in batch)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=model.device)
    stopper = _StopCriteria(tokenizer, width, settings["eos_token_id"], stop)
    confidence = _TokenLogProbs()
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        stopping_criteria=StoppingCriteriaList([stopper]),
        **{**settings, "logits_processor": [confidence, *settings["logits_processor"]]},
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
                new_tokens=new_tokens,
                batch_index=batch_index,
                batch_size=len(batch),
                batch_prompt_tokens=width,
                batch_new_tokens=steps,
                token_logprobs=tuple(logprobs[row][:new_tokens]),
            )
        )
    return completions


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
