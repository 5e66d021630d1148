"""Prompts: rendering a FinQA record as model input (direct and program prompts), few-shot choice, chat templates.

The record's context is rendered once (`render_context`: pre text, table, post text) and
every prompt wraps it with its own instructions and answer cue, so prompts for different
modes show the model the same page. Nothing of the asked record's answer (program,
gold_inds, answer, exe_ans) is rendered.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from finprog import retrieval
from finprog.data import Example

DIRECT_INSTRUCTIONS = (
    "You are a financial calculator. Follow these steps:\n"
    "Return ONLY the final numerical answer with no text explanation"
)
DIRECT_CUE = "Final Answer (number only): "


def render_table(table: list[list[str]]) -> str:
    """One row per line, cells separated by " | "."""
    return "\n".join(" | ".join(row) for row in table)


def render_context(example: Example) -> str:
    """The report page: pre text, table and post text under their headings, separated by blank lines."""
    return (
        f"Pre Text Data:\n{' '.join(example.pre_text)}\n\n"
        f"Table Data:\n{render_table(example.table)}\n\n"
        f"Post Text Data:\n{' '.join(example.post_text)}"
    )


def direct_prompt(example: Example) -> str:
    """The zero-shot prompt asking for the final number only (ends with "number only): ")."""
    return f"{DIRECT_INSTRUCTIONS}\n\n{render_context(example)}\n\nQuestion: {example.question}\n{DIRECT_CUE}"


MODES = ("program", "direct")
EXEMPLAR_CHOICES = ("similar", "first")
DEFAULT_SHOTS = 1  # with retrieved facts, 1 exemplar is as accurate as 2 on dev_200 (evals/context-dev.md)
PROMPT_STYLES = ("instructed", "bare")
"""instructed: the task's instructions (and exemplars) before the page and question, in the template's default
chat; bare: only the facts shown and the question, with an empty system turn (for models trained on FinQA)."""


@dataclass(kw_only=True)
class PromptOptions:
    """What a prompt shows: the options `SolveOptions` and `TrainOptions` share, declared and checked once here.

    None means "the default": for a solve, instructed prompts with DEFAULT_SHOTS exemplars (none
    when bare) and the retrieved facts, or what a finprog-trained model was trained with.
    """

    mode: str = "program"  # program or direct
    prompt: str | None = None  # PROMPT_STYLES
    shots: int | None = None  # program mode, instructed: exemplars chosen from a pool of solved records
    exemplar_choice: str = "similar"  # the most similar questions (TF-IDF), or the pool's first
    chat_template: bool = True
    max_prompt_tokens: int | None = None  # cut the report's least relevant sentences to fit; None: no cut
    context: str | None = None  # page, retrieved or gold (retrieval.CONTEXTS)
    top_k: int | None = None  # facts kept by the ranker
    ranker: str | None = None  # retrieval.RANKERS

    def check_prompt(self, error: type[Exception]) -> None:
        """Fill the defaults left unset and refuse what cannot work together, raising `error` (the caller's type)."""
        if self.mode not in MODES:
            raise error(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self.prompt = self.prompt or "instructed"
        if self.prompt not in PROMPT_STYLES:
            raise error(f"unknown prompt style {self.prompt!r}; choose {' or '.join(PROMPT_STYLES)}")
        if self.shots is None:
            self.shots = 0 if self.prompt == "bare" else DEFAULT_SHOTS
        if self.shots < 0:
            raise error(f"--shots must be at least 0, got {self.shots}")
        if self.shots and self.prompt == "bare":
            raise error("--shots needs --prompt instructed (a bare prompt shows no exemplars)")
        if self.exemplar_choice not in EXEMPLAR_CHOICES:
            raise error(f"unknown exemplar choice {self.exemplar_choice!r}; choose {' or '.join(EXEMPLAR_CHOICES)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise error(f"--max-prompt-tokens must be at least 1, got {self.max_prompt_tokens}")
        self.context = self.context or retrieval.DEFAULT_CONTEXT
        self.top_k = retrieval.DEFAULT_TOP_K if self.top_k is None else self.top_k
        self.ranker = self.ranker or retrieval.DEFAULT_RANKER
        try:
            retrieval.check_options(self.context, self.top_k, self.ranker)
        except retrieval.RetrievalError as problem:
            raise error(str(problem)) from None


def apply_chat_template(tokenizer, text: str, use_template: bool = True, bare: bool = False,
                        reply: str | None = None) -> str:
    """`text` as a single user turn in the tokenizer's chat template, ready for the assistant's reply (or followed
    by `reply` as the assistant's turn).

    `bare` replaces the template's default system prompt ("You are Qwen, created by ...") with an
    empty system turn, where the template takes one. Returns `text` unchanged when `use_template`
    is false or the tokenizer has no chat template (base models). Templated text already holds
    the model's special tokens, so tokenize it without adding more
    (`generation.generate(..., add_special_tokens=False)`).
    """
    if not has_chat_template(tokenizer, use_template):
        return text
    turns = [{"role": "user", "content": text}] + ([] if reply is None else [{"role": "assistant", "content": reply}])
    if bare:
        from jinja2.exceptions import TemplateError

        try:
            return tokenizer.apply_chat_template([{"role": "system", "content": ""}, *turns], tokenize=False,
                                                 add_generation_prompt=reply is None)
        except TemplateError:  # a template that takes no system turn: its default, if any, stays
            pass
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=reply is None)


def has_chat_template(tokenizer, use_template: bool = True) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template (asked for, and the tokenizer has one)."""
    return bool(use_template and getattr(tokenizer, "chat_template", None))


PROGRAM_INSTRUCTIONS = (
    "You are a financial analyst. Answer the question about the report by writing a program in this language.\n"
    "A program is one or more steps separated by \", \". Each step is op(arg1, arg2).\n"
    "Arithmetic operations: add, subtract, multiply, divide, exp (arg1 to the power arg2), "
    "greater (yes if arg1 > arg2, else no).\n"
    "Their arguments are numbers copied from the report (such as 5829, 3.8%, -12.5; a percent counts as a "
    "fraction), constants (const_1, const_2, const_3, const_100, const_1000, const_1000000, and const_m1 for -1), "
    "or #N, the result of step N (the first step is #0).\n"
    "Table operations: table_max, table_min, table_sum, table_average take the maximum, minimum, sum or average "
    "of the numbers in one table row. Their first argument is the row's name, written exactly as the row's first "
    "cell; their second argument is the word none.\n"
    "Reply with the program only, on one line."
)
PROGRAM_CUE = "Program:"


def program_prompt(example: Example, exemplars: Sequence[Example] = ()) -> str:
    """Instructions for the DSL, solved exemplars (context, question, gold program), then the question to answer.

    `example` and `exemplars` are rendered as given: cut them to their context first
    (`retrieval.select_context`, `exemplar_context`).
    """
    parts = [PROGRAM_INSTRUCTIONS]
    for number, exemplar in enumerate(exemplars, start=1):
        parts.append(
            f"Example {number}:\n{render_context(exemplar)}\n\n"
            f"Question: {exemplar.question}\n{PROGRAM_CUE} {exemplar.program}"
        )
    heading = "Now answer this question.\n" if exemplars else ""
    parts.append(f"{heading}{render_context(example)}\n\nQuestion: {example.question}\n{PROGRAM_CUE}")
    return "\n\n".join(parts)


BARE_DIRECT_CUE = "Answer:"


def bare_prompt(example: Example, mode: str, cue: bool) -> str:
    """The facts shown (pre text, table, post text; no headings, empty parts left out) and the question, nothing
    else; `cue` ends it with an answer cue ("Program:" or "Answer:"), the plain text marker of a model without a
    chat template."""
    facts = [" ".join(example.pre_text), render_table(example.table), " ".join(example.post_text)]
    text = "\n\n".join([*filter(None, facts), f"Question: {example.question}"])
    return f"{text}\n{PROGRAM_CUE if mode == 'program' else BARE_DIRECT_CUE}" if cue else text


def bare_without_template_note(tokenizer, options) -> str | None:
    """The line that says bare prompts fall back to plain text markers, for a model without a chat template."""
    if options.prompt != "bare" or has_chat_template(tokenizer, options.chat_template):
        return None
    cue = PROGRAM_CUE if options.mode == "program" else BARE_DIRECT_CUE
    return (f"bare prompts: no chat template in use, so each prompt ends with the plain text marker {cue!r} "
            "instead of the template's turn markers")


def exemplar_context(exemplar: Example, top_k: int, rank) -> Example:
    """A training exemplar as a prompt shows it: its gold facts (rows under the header), else its top-k facts."""
    return retrieval.select_context(exemplar, "gold" if exemplar.gold_inds else "retrieved", top_k, rank)


class ExemplarRetriever:
    """Deterministic few-shot choice from a pool of solved training examples.

    "first" takes the pool's first k; "similar" ranks the pool by TF-IDF cosine
    similarity of questions (ties keep pool order). Exemplars never share the
    evaluated example's id.
    """

    def __init__(self, pool: Sequence[Example]):
        self.pool = list(pool)
        documents = [Counter(_words(e.question)) for e in self.pool]
        frequency = Counter(word for document in documents for word in document)
        self.idf = {word: math.log((1 + len(documents)) / (1 + count)) + 1 for word, count in frequency.items()}
        self.vectors = [self._vector(document) for document in documents]

    def choose(self, example: Example, k: int, how: str = "similar") -> list[Example]:
        candidates = [index for index, e in enumerate(self.pool) if e.id != example.id]
        if how == "similar":
            query = self._vector(Counter(_words(example.question)))
            candidates.sort(key=lambda index: -_dot(query, self.vectors[index]))
        return [self.pool[index] for index in candidates[:k]]

    def _vector(self, counts: Counter) -> dict[str, float]:
        weights = {word: count * self.idf.get(word, 0.0) for word, count in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return {word: w / norm for word, w in weights.items()}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _dot(a: dict[str, float], b: dict[str, float]) -> float:
    return sum(weight * b.get(word, 0.0) for word, weight in a.items())


# ---------------------------------------------------------------- fitting a prompt to a token budget

def fit_context(example: Example, fits: Callable[[Example], bool]) -> Example:
    """`example` with the fewest report sentences, then table rows, removed so that `fits` accepts it.

    Sentences go least relevant first: fewest distinct question words shared (stop words
    aside); among equals, the farthest from the table (pre text from its start, post text
    from its end). Kept sentences keep their order. When no sentence is left and it still
    does not fit, table rows go from the bottom (the first row stays). The question is
    never cut: when even that is too long, the example comes back with no text and one row.
    """
    if fits(example):
        return example
    question = set(_words(example.question)) - retrieval.STOP_WORDS
    pre, post = len(example.pre_text), len(example.post_text)
    sentences = [("pre", i, example.pre_text[i], pre - i) for i in range(pre)]
    sentences += [("post", j, example.post_text[j], j + 1) for j in range(post)]
    order = sorted(sentences, key=lambda s: (len(question & set(_words(s[2]))), -s[3]))

    def without_sentences(k: int) -> Example:
        dropped = {(part, index) for part, index, _, _ in order[:k]}
        return replace(example,
                       pre_text=[t for i, t in enumerate(example.pre_text) if ("pre", i) not in dropped],
                       post_text=[t for j, t in enumerate(example.post_text) if ("post", j) not in dropped])

    k = bisect_left(range(len(order) + 1), True, key=lambda k: fits(without_sentences(k)))
    if k <= len(order):
        return without_sentences(k)
    bare = without_sentences(len(order))
    dropped_rows = bisect_left(range(len(bare.table), 0, -1), True,
                               key=lambda n: fits(replace(bare, table=bare.table[:n])))
    return replace(bare, table=bare.table[: max(1, len(bare.table) - dropped_rows)])


def adds_special_tokens(tokenizer, options) -> bool:
    """Whether prompts are tokenized with the tokenizer's special tokens (not when a chat template put them in)."""
    return not has_chat_template(tokenizer, options.chat_template)


def _chosen(example: Example, options, retriever: ExemplarRetriever) -> list[Example]:
    """The exemplars `options` asks for, whole (program mode only)."""
    if options.mode != "program" or not options.shots:
        return []
    return retriever.choose(example, options.shots, options.exemplar_choice)


def chosen_exemplars(example: Example, options, retriever: ExemplarRetriever) -> list[Example]:
    """The exemplars `options` asks for, each cut to its context."""
    rank = retrieval.ranker(options.ranker)
    return [exemplar_context(e, options.top_k, rank) for e in _chosen(example, options, retriever)]


def shown_example(example: Example, options) -> Example:
    """`example` as its prompt shows it: the page, its top-k retrieved facts, or its gold facts (`options.context`)."""
    return retrieval.select_context(example, options.context, options.top_k, retrieval.ranker(options.ranker))


def ranker_flops(example: Example, options, retriever: ExemplarRetriever) -> float:
    """FLOPs the ranker spends on `example`'s prompt: the question's page, and exemplars shown with retrieved facts."""
    rank = retrieval.ranker(options.ranker)
    pages = [example] if options.context == "retrieved" else []
    pages += [e for e in _chosen(example, options, retriever) if not e.gold_inds]
    return sum(rank.flops(page.question, retrieval.candidates(page)) for page in pages)


def user_turn(example: Example, tokenizer, options, retriever: ExemplarRetriever) -> tuple[str, Example]:
    """The user turn solve's prompt functions write for `example`, and `example` as that turn shows it.

    The example shown has its context chosen (`options.context`) and cut so that the prompt
    fits `options.max_prompt_tokens`. `options` needs mode, prompt, shots, exemplar_choice,
    context, top_k, ranker, chat_template and max_prompt_tokens; the limit counts the prompt's
    tokens as the model reads them (chat template applied).
    """
    exemplars = chosen_exemplars(example, options, retriever)
    shown = shown_example(example, options)
    cue = not has_chat_template(tokenizer, options.chat_template)

    def render(e: Example) -> str:
        if options.prompt == "bare":
            return bare_prompt(e, options.mode, cue)
        return direct_prompt(e) if options.mode == "direct" else program_prompt(e, exemplars)

    if options.max_prompt_tokens is not None:
        special = adds_special_tokens(tokenizer, options)

        def fits(e: Example) -> bool:
            text = chat_prompt(tokenizer, render(e), options)
            return len(tokenizer(text, add_special_tokens=special)["input_ids"]) <= options.max_prompt_tokens

        shown = fit_context(shown, fits)
    return render(shown), shown


def chat_prompt(tokenizer, user: str, options) -> str:
    """A user turn as the model reads it under `options` (chat_template, prompt style)."""
    return apply_chat_template(tokenizer, user, options.chat_template, bare=options.prompt == "bare")


def build_prompt(example: Example, tokenizer, options, retriever: ExemplarRetriever) -> str:
    """The model's input for `example` at training and evaluation time: `user_turn` in the chat template."""
    return chat_prompt(tokenizer, user_turn(example, tokenizer, options, retriever)[0], options)
