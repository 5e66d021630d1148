"""The numbers and row labels a page offers a program, and whether a context shows a gold program's operands.

Constrained decoding keeps a program's number literals to `example_numbers` and its row
labels to `example_rows` of the context shown. `shows_operands` asks the same of the
gold program: could it be written from this context? That is the recall a generator
needs, whatever facts the annotators marked as gold. Where one record is asked of many
contexts, take its `needed_operands` once and ask `writes` of each context.
"""

from __future__ import annotations

import re

from finprog import dsl
from finprog.data import Example

_NUMBER_IN_TEXT = re.compile(r"(?<![\w.#])-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:\s*%)?")


def example_numbers(example: Example) -> set[str]:
    """Number literals as FinQA programs write the numbers of the question, text and table.

    Each number keeps its written form and gets the forms without thousands separators,
    without a minus sign and, for a percentage, without the `%`: "$ 1,234.5" gives
    1,234.5 and 1234.5; "12 %" gives 12% and 12; "-3" gives -3 and 3.
    """
    texts = [example.question, *example.pre_text, *example.post_text, *(cell for row in example.table for cell in row)]
    literals = set()
    for match in _NUMBER_IN_TEXT.finditer("\n".join(texts)):
        written = match.group().replace(" ", "")
        percent = written.endswith("%")
        body = written.removesuffix("%")
        bodies = {body, body.replace(",", "")}
        bodies |= {b.removeprefix("-") for b in bodies}
        literals |= bodies
        if percent:
            literals |= {b + "%" for b in bodies}
    return literals


def example_rows(example: Example) -> set[str]:
    """The table's first cells that a table step can name: one line of single spaces, no "(", ")", "," or "#"."""
    return {
        row[0]
        for row in example.table
        if row and row[0] and " ".join(row[0].split()) == row[0] and not set("(),#") & set(row[0])
    }


def program_operands(program: str) -> tuple[set[str], set[str]] | None:
    """A program's number literals (constants aside) and the row labels its table steps name; None if it
    does not parse."""
    try:
        steps = dsl.parse(program).steps
    except dsl.ProgramError:
        return None
    arguments = [arg for step in steps for arg in (step.first, step.second)]
    numbers = {arg.text for arg in arguments if isinstance(arg, dsl.Literal) and not arg.text.startswith("const_")}
    return numbers, {arg.label for arg in arguments if isinstance(arg, dsl.Row)}


def needed_operands(example: Example) -> tuple[set[str], set[str]] | None:
    """The number literals and row labels of `example`'s gold program, which every context is asked to write
    (`writes`). None when that cannot be asked: no program, one that does not parse, or one that uses a number
    or row label the whole page does not write either."""
    operands = program_operands(example.program) if example.program else None
    return operands if operands is not None and writes(example, operands) else None


def writes(shown: Example, operands: tuple[set[str], set[str]]) -> bool:
    """Whether `shown` (the question included) writes every number literal and row label of `operands`."""
    numbers, rows = operands
    return numbers <= example_numbers(shown) and rows <= example_rows(shown)


def shows_operands(example: Example, shown: Example) -> bool | None:
    """Whether `shown`, a context of `example`, writes every operand of `example`'s gold program; None when
    that cannot be asked (`needed_operands`)."""
    operands = needed_operands(example)
    return None if operands is None else writes(shown, operands)
