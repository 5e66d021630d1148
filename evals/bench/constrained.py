"""Per-example grammar cost of llguidance (finprog's constrained decoding) against xgrammar, on FinQA test_100.

    pip install xgrammar==0.2.9
    python evals/bench/constrained.py [FINQA_DIR] > evals/bench/constrained.txt

FINQA_DIR defaults to $FINPROG_DATA_DIR, else ../shared/finqa.

Every example gets its own grammar (`finprog.constrained.program_grammar`, numbers restricted to the
example's); xgrammar gets the same grammar written as GBNF, once with its masks precomputed at compile
time and once with them built on first use (dynamic compilation). Preparation is the work done once per
example before decoding, mask time the cost of one decoding step (qwen2.5-coder-0.5b's vocabulary,
one CPU thread), and the total what constraining a 30-token program adds per example.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llguidance  # noqa: E402
import llguidance.hf  # noqa: E402
import llguidance.numpy  # noqa: E402
import numpy as np  # noqa: E402
import xgrammar  # noqa: E402

from finprog.constrained import program_grammar  # noqa: E402
from finprog.data import Example, load_finqa  # noqa: E402
from finprog.models import load_tokenizer  # noqa: E402
from finprog.provenance import header  # noqa: E402

MODEL = "qwen2.5-coder-0.5b"
REPEATS = 3
PROGRAM_TOKENS = 30
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass
class Library:
    """One way to constrain decoding: a matcher per grammar, a mask per step, then the chosen token."""

    name: str
    setup_seconds: float
    new_matcher: Callable[[str], object]  # Lark grammar from program_grammar -> matcher at the start
    fill_mask: Callable[[object], np.ndarray]  # matcher -> bitmask of allowed tokens (bit set = allowed)
    accept: Callable[[object, int], bool]
    is_finished: Callable[[object], bool]


@dataclass
class Walk:
    """One example's gold tokens fed through a fresh matcher."""

    prepare_seconds: float
    mask_seconds: list[float]
    accept_seconds: list[float]
    rejected_at: int | None  # index of the first gold token not allowed, or None


def lark_to_gbnf(lark: str) -> str:
    """The same grammar in GBNF: `name: body` becomes `name ::= body` (root `start`).

    `program_grammar(restrict_numbers=True)` writes only rules and terminals built from
    JSON string literals, groups, `|` and `?`, which GBNF reads with the same meaning.
    """
    if "/" in _STRING_LITERAL.sub("", lark):
        raise ValueError("the grammar has a regular expression; only grammars of string literals translate")
    return re.sub(r"^(\w+): ", r"\1 ::= ", lark, flags=re.M)


def llguidance_library(tokenizer, stop_tokens: list[int]) -> Library:
    start = time.perf_counter()
    lltokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=stop_tokens)
    setup = time.perf_counter() - start
    bitmask = np.zeros(llguidance.numpy.get_bitmask_shape(1, lltokenizer.vocab_size), dtype=np.int32)

    def new_matcher(lark: str) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(lltokenizer, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
        if matcher.is_error():
            raise ValueError(f"llguidance rejected the grammar: {matcher.get_error()}")
        return matcher

    def fill_mask(matcher: llguidance.LLMatcher) -> np.ndarray:
        llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
        return bitmask

    return Library(
        "llguidance", setup, new_matcher, fill_mask,
        lambda matcher, token: matcher.consume_token(token), lambda matcher: matcher.is_stopped(),
    )


def xgrammar_library(tokenizer, stop_tokens: list[int], dynamic: bool) -> Library:
    start = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=stop_tokens)
    compiler = xgrammar.GrammarCompiler(
        info, max_threads=1, cache_enabled=False, enable_dynamic_compilation=dynamic
    )
    setup = time.perf_counter() - start
    bitmask = xgrammar.allocate_token_bitmask(1, info.vocab_size)

    def new_matcher(lark: str) -> xgrammar.GrammarMatcher:
        return xgrammar.GrammarMatcher(compiler.compile_grammar(lark_to_gbnf(lark), root_rule_name="start"))

    def fill_mask(matcher: xgrammar.GrammarMatcher) -> np.ndarray:
        matcher.fill_next_token_bitmask(bitmask, 0)
        return bitmask.numpy()

    return Library(
        "xgrammar dynamic" if dynamic else "xgrammar", setup, new_matcher, fill_mask,
        lambda matcher, token: matcher.accept_token(token), lambda matcher: matcher.is_terminated(),
    )


def allows(bitmask: np.ndarray, token: int) -> bool:
    return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)


def walk(library: Library, lark: str, tokens: list[int]) -> Walk:
    """Prepare a matcher, then for each gold token: mask, check the token is allowed, accept it."""
    start = time.perf_counter()
    matcher = library.new_matcher(lark)
    result = Walk(time.perf_counter() - start, [], [], None)
    for index, token in enumerate(tokens):
        start = time.perf_counter()
        bitmask = library.fill_mask(matcher)
        masked = time.perf_counter()
        allowed = allows(bitmask, token)
        accepted = allowed and library.accept(matcher, token)
        result.mask_seconds.append(masked - start)
        result.accept_seconds.append(time.perf_counter() - masked)
        if not accepted:
            result.rejected_at = index
            return result
    if not library.is_finished(matcher):
        result.rejected_at = len(tokens)
    return result


@dataclass
class Timing:
    """One library on one example: medians over the repeats."""

    prepare: float
    mask_per_token: float
    accept_per_token: float
    rejected_at: int | None

    @property
    def total(self) -> float:
        return self.prepare + PROGRAM_TOKENS * (self.mask_per_token + self.accept_per_token)


def time_example(libraries: list[Library], lark: str, tokens: list[int]) -> dict[str, Timing]:
    """Each library's median timing, the repeats interleaved across libraries so load changes hit all alike."""
    walks: dict[str, list[Walk]] = {library.name: [] for library in libraries}
    for _ in range(REPEATS):
        for library in libraries:
            walks[library.name].append(walk(library, lark, tokens))
    return {
        name: Timing(
            statistics.median(w.prepare_seconds for w in runs),
            statistics.median(statistics.fmean(w.mask_seconds) for w in runs),
            statistics.median(statistics.fmean(w.accept_seconds) for w in runs),
            runs[0].rejected_at,
        )
        for name, runs in walks.items()
    }


def gold_tokens(tokenizer, example: Example, stop_token: int) -> list[int]:
    return tokenizer.encode(" " + example.program, add_special_tokens=False) + [stop_token]


def print_table(libraries: list[Library], timings: list[dict[str, Timing]], examples: list[Example]) -> None:
    names = [library.name for library in libraries]
    headers = names + [f"{name} / {names[0]}" for name in names[1:]]
    widths = [len(header) + 3 for header in headers]

    def print_row(label: str, values: list[float], digits: int) -> None:
        cells = [f"{v:.{digits}f}" for v in values] + [f"{v / values[0]:.2f}x" for v in values[1:]]
        print(f"{label:42}" + "".join(cell.rjust(width) for cell, width in zip(cells, widths)))

    def over_examples(summary: Callable, value: Callable[[Timing], float]) -> list[float]:
        return [summary([value(t[name]) for t in timings]) for name in names]

    print(f"{'':42}" + "".join(header.rjust(width) for header, width in zip(headers, widths)))
    print_row("tokenizer setup, once, ms", [library.setup_seconds * 1e3 for library in libraries], 0)
    median = statistics.median
    print_row("preparation per example, median, ms", over_examples(median, lambda t: t.prepare * 1e3), 2)
    print_row("mask per token, median, us", over_examples(median, lambda t: t.mask_per_token * 1e6), 1)
    print_row("accept per token, median, us", over_examples(median, lambda t: t.accept_per_token * 1e6), 1)
    print_row(f"total, {PROGRAM_TOKENS} tokens, median, ms", over_examples(median, lambda t: t.total * 1e3), 2)
    print_row(f"total, {PROGRAM_TOKENS} tokens, mean, ms", over_examples(statistics.fmean, lambda t: t.total * 1e3), 2)
    accepted = [f"{sum(t[name].rejected_at is None for t in timings)}/{len(timings)}" for name in names]
    print(f"{'gold programs accepted':42}" + "".join(a.rjust(width) for a, width in zip(accepted, widths)))
    for example, timing in zip(examples, timings):
        for name in names:
            if timing[name].rejected_at is not None:
                print(f"{name} rejects {example.id!r} at gold token {timing[name].rejected_at}: {example.program}")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FINPROG_DATA_DIR", "../shared/finqa"))
    examples = load_finqa(folder / "test_100.json")
    tokenizer = load_tokenizer(MODEL)
    stop_token = tokenizer.eos_token_id
    libraries = [
        llguidance_library(tokenizer, [stop_token]),
        xgrammar_library(tokenizer, [stop_token], dynamic=False),
        xgrammar_library(tokenizer, [stop_token], dynamic=True),
    ]
    grammars = [program_grammar(example, restrict_numbers=True) for example in examples]
    tokens = [gold_tokens(tokenizer, example, stop_token) for example in examples]
    time_example(libraries, grammars[0], tokens[0])  # warm-up, not counted
    timings = [time_example(libraries, lark, gold) for lark, gold in zip(grammars, tokens)]

    print(header())
    print(f"xgrammar {metadata.version('xgrammar')}, llguidance {metadata.version('llguidance')}")
    print(f"{len(examples)} examples of {folder.name}/test_100.json, tokenizer {MODEL} "
          f"(vocabulary {len(tokenizer)}), one thread, medians of {REPEATS} repeats per example; "
          f"gold programs are {statistics.median(map(len, tokens)):.0f} tokens long (median, with end of sequence)")
    print(f"total = preparation + {PROGRAM_TOKENS} x (mask + accept per token), per example")
    print()
    print_table(libraries, timings, examples)


if __name__ == "__main__":
    main()
