"""Grammar-constrained decoding: per-example grammars of DSL programs and the logits processor that enforces them.

`program_grammar(example)` writes a Lark grammar (llguidance's dialect) whose strings are
one-line programs that `finprog.dsl.parse` accepts, in FinQA's layout: an optional leading
space, steps `op(a, b)` with ", " between arguments and between steps (never a bare ",",
which could read as a thousands separator), references only to earlier steps, at most
`dsl.MAX_STEPS` steps, and an optional final newline. With
`restrict_numbers` (the default) the number literals are those that occur in the
example's question, text and table (`finprog.operands.example_numbers`), the constants are FinQA's
closed list, and row labels are the table's first cells the DSL can express; without it,
the DSL's general terminals.

`processor_factory` builds what `generation.iter_completions(logits_processor_for=...)`
calls once per batch: one `GrammarLogitsProcessor` holding an llguidance matcher per
batch row, so every row decodes under its own example's grammar. Masks are computed
on the fly (llguidance needs no per-grammar precompilation), a fraction of a millisecond
per row and token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch
from transformers import LogitsProcessor

from finprog import dsl
from finprog.data import Example
from finprog.errors import FinprogError
from finprog.generation import eos_token_ids
from finprog.operands import example_numbers, example_rows

FINQA_CONSTANTS = (
    "const_1", "const_2", "const_3", "const_4", "const_5", "const_6", "const_7", "const_8", "const_9", "const_10",
    "const_100", "const_1000", "const_10000", "const_100000", "const_1000000", "const_10000000", "const_1000000000",
    "const_m1",
)
"""FinQA's closed constant vocabulary (the official generator's constant list)."""

GENERAL_NUMBER = r"-?([0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?|[0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?%?"
"""The DSL's NUMBER terminal (grammar/finqa.lark)."""
GENERAL_CONSTANT = r"const_(m1|[0-9]+)"
"""The DSL's CONSTANT terminal (grammar/finqa.lark)."""
GENERAL_ROW = r"[^\s(),#]([^(),#\r\n]*[^\s(),#])?"
"""The DSL's ROW terminal kept to one line and without trailing space."""


class ConstrainedDecodingError(FinprogError, RuntimeError):
    """A grammar was rejected, or constrained decoding was used in a way it cannot follow."""


def program_grammar(example: Example | None = None, restrict_numbers: bool = True) -> str:
    """The Lark grammar of one-line programs for `example` (restricted) or any example (general)."""
    if restrict_numbers:
        if example is None:
            raise ConstrainedDecodingError("restricting numbers needs the example whose numbers to allow")
        numbers = sorted(example_numbers(example))
        number, constant = _choice(numbers) if numbers else None, _choice(FINQA_CONSTANTS)
        rows = sorted(example_rows(example))
        row = _choice(rows) if rows else None
    else:
        number, constant, row = f"/{GENERAL_NUMBER}/", f"/{GENERAL_CONSTANT}/", f"/{GENERAL_ROW}/"
    table = ' | TABLE_OP "(" ROW ", none)"' if row else ""
    lines = ['start: " "? steps_0 "\\n"?']
    for k in range(dsl.MAX_STEPS):
        more = f' (", " steps_{k + 1})?' if k + 1 < dsl.MAX_STEPS else ""
        references = "".join(f' | "#{i}"' for i in range(k))
        lines += [
            f"steps_{k}: step_{k}{more}",
            f'step_{k}: ARITHMETIC_OP "(" FIRST_{k} VALUE_{k} ")"{table}',
            f'FIRST_{k}: VALUE_{k} ", "',
            f"VALUE_{k}: {'NUMBER | ' if number else ''}CONSTANT{references}",
        ]
    lines += ["ARITHMETIC_OP: " + _choice(dsl.ARITHMETIC_OPS), f"CONSTANT: {constant}"]
    if number:
        lines.append(f"NUMBER: {number}")
    if row:
        lines += ["TABLE_OP: " + _choice(dsl.TABLE_OPS), f"ROW: {row}"]
    return "\n".join(lines) + "\n"


def _choice(strings: Sequence[str]) -> str:
    return " | ".join(json.dumps(s, ensure_ascii=False) for s in strings)


def processor_factory(
    model, tokenizer, examples: Sequence[Example], restrict_numbers: bool = True
) -> Callable[[Sequence[int]], list[LogitsProcessor]]:
    """What `iter_completions(logits_processor_for=...)` needs: prompt indices -> that batch's processors.

    `examples[i]` is the example of prompt i (repeat an example for repeated prompts).
    The model's end-of-sequence tokens (those generation stops at) are allowed once a
    program is complete. Grammars are written once per example and checked here, so a
    bad one fails before any decoding.
    """
    try:
        lltokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=eos_token_ids(model, tokenizer))
    except ValueError as error:  # llguidance reads only fast (Rust) tokenizers
        raise ConstrainedDecodingError(f"constrained decoding needs a fast tokenizer: {error}") from None
    grammars: dict[int, str] = {}  # id(example) -> grammar, shared by an example's repeated prompts
    for example in examples:
        if id(example) not in grammars:
            grammar = llguidance.LLMatcher.grammar_from_lark(program_grammar(example, restrict_numbers))
            error = llguidance.LLMatcher.validate_grammar(grammar, lltokenizer)
            if error:
                raise ConstrainedDecodingError(f"the grammar for example {example.id!r} was rejected: {error}")
            grammars[id(example)] = grammar

    def for_batch(indices: Sequence[int]) -> list[LogitsProcessor]:
        return [GrammarLogitsProcessor(lltokenizer, [grammars[id(examples[i])] for i in indices])]

    return for_batch


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each batch row's scores to the tokens its grammar allows next (one generate call, one grammar per row).

    The first call sees the prompts; every later call first feeds each row's last token
    to its matcher. A row is left alone once its matcher has stopped (end of sequence,
    or a complete program that cannot go on) or rejects its token: the sampled tokens
    come from masked scores, so a rejected one is the padding generation feeds a
    sequence that has already finished (at its stop rule).
    """

    def __init__(self, lltokenizer: llguidance.LLTokenizer, grammars: Sequence[str]):
        self.matchers = [llguidance.LLMatcher(lltokenizer, grammar, log_level=0) for grammar in grammars]
        for matcher in self.matchers:
            if matcher.is_error():
                raise ConstrainedDecodingError(f"a grammar was rejected: {matcher.get_error()}")
        self.vocab_size = lltokenizer.vocab_size
        self.active = [True] * len(self.matchers)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = len(self.matchers)
        if input_ids.shape[0] != rows:
            raise ConstrainedDecodingError(
                f"the processor holds {rows} grammars but the batch has {input_ids.shape[0]} rows"
            )
        if self.started:
            self._consume(input_ids[:, -1].tolist())
        self.started = True
        bitmask = np.full(llguidance.numpy.get_bitmask_shape(rows, self.vocab_size), -1, dtype=np.int32)
        for row, matcher in enumerate(self.matchers):
            if self.active[row]:
                llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, row)
        # one bit per token id, set where allowed; ids past the tokenizer's are never allowed
        blocked = torch.from_numpy(np.unpackbits((~bitmask).view(np.uint8), axis=1, bitorder="little")).view(torch.bool)
        missing = scores.shape[1] - blocked.shape[1]
        if missing > 0:
            blocked = torch.nn.functional.pad(blocked, (0, missing), value=True)
        return scores.masked_fill(blocked[:, : scores.shape[1]].to(scores.device), float("-inf"))

    def _consume(self, tokens: list[int]) -> None:
        for row, token in enumerate(tokens):
            matcher = self.matchers[row]
            if self.active[row] and (matcher.is_stopped() or not matcher.consume_token(token)):
                self.active[row] = False

