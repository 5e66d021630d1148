"""FinQA's program language: parse to a typed `Program`, format back, execute over a table, compare symbolically.

Execution reproduces FinQA's official evaluation script (`evaluate.py`): a table
step finds its row by the row's first cell (the last such row wins), cleans each
cell of `$` and of everything from `(` on, reads `%` as /100, and fails on any
non-numeric cell; `const_m1` is -1 and `const_N` is N; `greater` gives "yes" or
"no"; the final number is rounded with Python's `round(x, 5)`. `equivalent`
follows the official symbolic comparison (sympy), within a size limit that keeps
it under a second. Nothing is `eval`ed: the parser is a Lark LALR grammar
(`grammar/finqa.lark`) and execution is plain float arithmetic over a bounded
number of steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache

from finprog.errors import FinprogError
from finprog.paths import resource

MAX_PROGRAM_CHARS = 4000
MAX_STEPS = 32
ARITHMETIC_OPS = ("add", "subtract", "multiply", "divide", "exp", "greater")
TABLE_OPS = ("table_max", "table_min", "table_sum", "table_average")


class ProgramError(FinprogError, ValueError):
    """Any failure of a program: parsing, execution or comparison."""


class ProgramParseError(ProgramError):
    """The text is not a program of the DSL; the message says where."""


class ProgramExecutionError(ProgramError):
    """A well-formed program cannot be evaluated over this table; `kind` names why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Literal:
    """A number or constant exactly as written (`3.8%`, `1,234`, `const_100`) and its value."""

    text: str
    value: float


@dataclass(frozen=True)
class Reference:
    """`#N`: the result of step N (counted from 0)."""

    index: int


@dataclass(frozen=True)
class Row:
    """A table row, named by its first cell."""

    label: str


@dataclass(frozen=True)
class Step:
    """One operation: arithmetic on two values, or a table operation on a row (second argument `none`)."""

    op: str
    first: Literal | Reference | Row
    second: Literal | Reference | None = None


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]


Value = float | str  # a number, or "yes"/"no" from `greater`


# ---------------------------------------------------------------- parsing


def build_parser():
    """A new LALR parser of grammar/finqa.lark (`parse` builds one per process and keeps it)."""
    from lark import Lark

    return Lark(resource("grammar", "finqa.lark").read_text(), start="program", parser="lalr")


_parser = cache(build_parser)


def parse(text: str) -> Program:
    """Parse program text such as `subtract(5829, 5735), divide(#0, 5735)`."""
    from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedToken

    if not isinstance(text, str):
        raise ProgramParseError(f"a program must be text, got {type(text).__name__}")
    if len(text) > MAX_PROGRAM_CHARS:
        raise ProgramParseError(f"program is {len(text)} characters long; the limit is {MAX_PROGRAM_CHARS}")
    try:
        tree = _parser().parse(text)
    except UnexpectedToken as error:
        found = "end of program" if error.token.type == "$END" else repr(str(error.token))
        expected = ", ".join(sorted(_readable(name) for name in error.expected))
        raise ProgramParseError(
            f"unexpected {found} at column {error.column} of {_preview(text)}; expected {expected}"
        ) from None
    except UnexpectedCharacters as error:
        raise ProgramParseError(
            f"unexpected {text[error.pos_in_stream]!r} at column {error.column} of {_preview(text)}"
        ) from None
    except LarkError as error:  # any other Lark failure is still a parse error
        raise ProgramParseError(f"cannot parse {_preview(text)}: {error}") from None
    steps = tuple(_step(node) for node in tree.children)
    _check_structure(steps)
    return Program(steps)


def _step(node) -> Step:
    op, first, *rest = node.children
    if node.data == "table":
        return Step(str(op), Row(" ".join(str(first).split())))
    return Step(str(op), _value(first), _value(rest[0]))


def _value(node) -> Literal | Reference:
    token = node.children[0]
    if node.data == "reference":
        return Reference(int(token[1:]))
    return Literal(str(token), literal_value(str(token)))


_PROGRAM_START = re.compile(r"\b(" + "|".join(TABLE_OPS + ARITHMETIC_OPS) + r")\s*\(")


def extract_program(completion: str) -> str | None:
    """The first program in a model's free text (code fences, prose and later programs ignored).

    From the first operation name, the longest stretch of that line that parses is
    taken, unless a comma and another step follow it (an unfinished step: the
    program was cut short). When nothing there parses, that line is returned as it is, so scoring
    reports the parse error; None when the text names no operation at all.
    """
    match = _PROGRAM_START.search(completion)
    if match is None:
        return None
    line = completion[match.start() :].split("\n", 1)[0].strip()
    closings = [i for i, char in enumerate(line) if char == ")"]
    for end in reversed(closings):
        rest = line[end + 1 :].strip()
        if rest.startswith(",") and (rest == "," or _PROGRAM_START.match(rest[1:].lstrip())):
            continue
        try:
            return format(parse(line[: end + 1]))
        except ProgramParseError:
            continue
    return line


def literal_value(text: str) -> float:
    """The value of a number or constant as FinQA reads it: commas dropped, `%` is /100, `const_m1` is -1."""
    if text.startswith("const_"):
        return -1.0 if text == "const_m1" else float(text[len("const_") :])
    number = text.replace(",", "")
    return float(number[:-1]) / 100 if number.endswith("%") else float(number)


def _check_structure(steps: tuple[Step, ...]) -> None:
    if len(steps) > MAX_STEPS:
        raise ProgramParseError(f"program has {len(steps)} steps; the limit is {MAX_STEPS}")
    for index, step in enumerate(steps):
        for arg in (step.first, step.second):
            if isinstance(arg, Reference) and arg.index >= index:
                raise ProgramParseError(
                    f"step {index} ({step.op}) refers to #{arg.index}, but only steps before it (#0..#{index - 1}) exist"
                    if index
                    else f"step 0 ({step.op}) refers to #{arg.index}, but no step comes before it"
                )


def _readable(terminal: str) -> str:
    names = {"LPAR": "'('", "RPAR": "')'", "COMMA": "','", "NONE": "'none'", "$END": "end of program"}
    return names.get(terminal, terminal.lower().replace("_", " "))


def _preview(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


# ---------------------------------------------------------------- formatting


def format_step(step: Step) -> str:
    if isinstance(step.first, Row):
        return f"{step.op}({step.first.label}, none)"
    return f"{step.op}({_format_value(step.first)}, {_format_value(step.second)})"


def format(program: Program) -> str:  # noqa: A001 - the DSL's own name for it
    """Program text in FinQA's layout: `op(a, b), op(c, d)`."""
    return ", ".join(format_step(step) for step in program.steps)


def _format_value(arg: Literal | Reference) -> str:
    return f"#{arg.index}" if isinstance(arg, Reference) else arg.text


def tokens(program: Program) -> list[str]:
    """FinQA's official token list for a program: `["add(", "1", "2", ")", ..., "EOF"]`."""
    out = []
    for step in program.steps:
        second = "none" if isinstance(step.first, Row) else _format_value(step.second)
        first = step.first.label if isinstance(step.first, Row) else _format_value(step.first)
        out += [f"{step.op}(", first, second, ")"]
    return out + ["EOF"]


def from_tokens(tokens: list[str]) -> Program:
    """Parse FinQA's official prediction format (tokens then `EOF`), with its structure rules.

    As in the official script, the last token is dropped whatever it is, and an
    unfinished last step (fewer than 4 tokens) is ignored.
    """
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ProgramParseError("a tokenised program must be a list of strings")
    body = tokens[:-1]
    for position, token in enumerate(body):
        if position % 4 == 0 and not (token.endswith("(") and token[:-1] in ARITHMETIC_OPS + TABLE_OPS):
            raise ProgramParseError(f"token {position} should be an operation such as `add(`; got {token!r}")
        if position % 4 == 3 and token != ")":
            raise ProgramParseError(f"token {position} should be `)`; got {token!r}")
    steps = [f"{op}{first}, {second})" for op, first, second, _ in zip(*[iter(body)] * 4)]
    if not steps:
        raise ProgramParseError(f"no complete step in the tokens {tokens!r:.80}")
    return parse(", ".join(steps))


# ---------------------------------------------------------------- execution


def execute(program: Program, table: list[list[str]]) -> Value:
    """Run a program over a table; a number rounded to 5 decimals, or "yes"/"no"."""
    rows = {row[0]: row[1:] for row in table if row}
    results: list[Value] = []
    for index, step in enumerate(program.steps):
        if isinstance(step.first, Row):
            result = _table_op(step.op, step.first.label, rows, index)
        else:
            first = _operand(step.first, results, index)
            second = _operand(step.second, results, index)
            result = _arithmetic(step.op, first, second, index)
        results.append(result)
    final = results[-1]
    return final if isinstance(final, str) else round(final, 5)


def _operand(arg: Literal | Reference, results: list[Value], index: int) -> float:
    value = arg.value if isinstance(arg, Literal) else results[arg.index]
    if isinstance(value, str):
        raise ProgramExecutionError(
            "yes_no_operand", f"step {index} uses #{arg.index}, which is {value!r} (from greater), as a number"
        )
    return value


def _arithmetic(op: str, a: float, b: float, index: int) -> Value:
    if op == "greater":
        return "yes" if a > b else "no"
    try:
        if op == "add":
            result = a + b
        elif op == "subtract":
            result = a - b
        elif op == "multiply":
            result = a * b
        elif op == "divide":
            result = a / b
        else:
            result = a**b
    except ZeroDivisionError:
        raise ProgramExecutionError("division_by_zero", f"step {index} ({op}) divides by zero") from None
    except OverflowError:
        raise ProgramExecutionError("overflow", f"step {index} ({op}) overflows") from None
    if isinstance(result, complex):
        raise ProgramExecutionError("complex_result", f"step {index} ({op}) has no real result: {a}**{b}")
    if not math.isfinite(result):
        raise ProgramExecutionError("overflow", f"step {index} ({op}) gives {result}")
    return result


def _table_op(op: str, label: str, rows: dict[str, list[str]], index: int) -> float:
    if label not in rows:
        raise ProgramExecutionError("unknown_row", f"step {index} ({op}) names row {label!r}, which the table lacks")
    values = [_cell_value(cell) for cell in rows[label]]
    if any(value is None for value in values):
        raise ProgramExecutionError(
            "non_numeric_row", f"step {index} ({op}): row {label!r} has a non-numeric cell: {rows[label]}"
        )
    if op == "table_sum":
        return sum(values)
    if not values:
        raise ProgramExecutionError("empty_row", f"step {index} ({op}): row {label!r} has no values")
    if op == "table_max":
        return max(values)
    if op == "table_min":
        return min(values)
    return sum(values) / len(values)


def _cell_value(cell: str) -> float | None:
    """A table cell's number under the official rules, or None when it has none."""
    text = cell.replace("$", "").strip().split("(")[0].strip().replace(",", "")
    try:
        return _finite(float(text))
    except ValueError:
        pass
    if "%" in text:
        try:
            return _finite(float(text.replace("%", "")) / 100)
        except ValueError:
            return None
    if "const" in text:
        try:
            return literal_value(text)
        except ValueError:
            return None
    return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- symbolic comparison


MAX_SIMPLIFIED_OPERANDS = 10
"""Formulas with more operands than this are not given to sympy (see `equivalent`).

FinQA's gold programs have at most 7. Comparing two of the worst 10-operand formulas
found (continued fractions) takes sympy about 0.3 s, two of 12 operands about 0.7 s,
of 17 operands over 2 s, and a 10-step tower of `exp(#i, #i)` (2,049 operands) over
5 s (evals/bench/equivalent.txt)."""


def equivalent(gold: Program, predicted: Program) -> bool:
    """FinQA's program accuracy rule: the same symbolic expression over the gold program's operands.

    Each distinct operand text of the gold program (`100` and `const_100` differ)
    and each distinct table step becomes a symbol; a predicted program that uses
    any other operand is not equivalent. Programs that compute the same formula up to
    the order of `add`'s and `multiply`'s arguments are equivalent (sympy builds them
    identically). Otherwise, as in the official script, both formulas are simplified
    with sympy and compared, when each has at most MAX_SIMPLIFIED_OPERANDS operands
    written out as the official script writes it (a step used twice counts twice);
    beyond that limit, where sympy can run for minutes, they are not equivalent.
    """
    symbols = operand_symbols(gold)
    if any(key not in symbols for step in predicted.steps for key in _operand_keys(step)):
        return False
    nodes: dict[tuple, int] = {}
    if _formula_id(gold, symbols, nodes) == _formula_id(predicted, symbols, nodes):
        return True
    if max(operand_count(gold), operand_count(predicted)) > MAX_SIMPLIFIED_OPERANDS:
        return False
    try:
        return symbolic(gold, symbols) == symbolic(predicted, symbols)
    except Exception as error:  # sympy can fail in many ways on odd expressions
        raise ProgramError(f"symbolic comparison failed: {error}") from None


def operand_count(program: Program) -> int:
    """The operands of the program's final value written out as one formula (a reused step's operands count again)."""
    counts: list[int] = []
    for step in program.steps:
        if isinstance(step.first, Row):
            counts.append(1)
        else:
            counts.append(sum(counts[arg.index] if isinstance(arg, Reference) else 1 for arg in (step.first, step.second)))
    return counts[-1]


def _formula_id(program: Program, symbols: dict[str, str], nodes: dict[tuple, int]) -> int:
    """A number naming the program's formula in `nodes`: equal numbers, the same formula up to argument order
    of add and multiply (linear in the steps, however often a step is reused)."""
    ids: list[int] = []
    for step in program.steps:
        if isinstance(step.first, Row):
            key: tuple = (symbols[format_step(step)],)
        else:
            args = [ids[arg.index] if isinstance(arg, Reference) else nodes.setdefault((symbols[arg.text],), len(nodes))
                    for arg in (step.first, step.second)]
            key = (step.op, *(sorted(args) if step.op in ("add", "multiply") else args))
        ids.append(nodes.setdefault(key, len(nodes)))
    return ids[-1]


def operand_symbols(program: Program) -> dict[str, str]:
    """A symbol name (`a0`, `a1`, ...) for each distinct operand of `program`, in order: a literal's text, or a
    table step as written."""
    symbols: dict[str, str] = {}
    for step in program.steps:
        for key in _operand_keys(step):
            symbols.setdefault(key, f"a{len(symbols)}")
    return symbols


def _operand_keys(step: Step) -> list[str]:
    if isinstance(step.first, Row):
        return [format_step(step)]
    return [arg.text for arg in (step.first, step.second) if isinstance(arg, Literal)]


def symbolic(program: Program, symbols: dict[str, str]):
    """The program's final value as a sympy expression over `symbols` (`operand_symbols`), simplified: the slow
    part of `equivalent`, which skips it for formulas of more than MAX_SIMPLIFIED_OPERANDS operands."""
    import sympy

    expressions = []
    for step in program.steps:
        if isinstance(step.first, Row):
            expressions.append(sympy.Symbol(symbols[format_step(step)]))
            continue
        a, b = (
            expressions[arg.index] if isinstance(arg, Reference) else sympy.Symbol(symbols[arg.text])
            for arg in (step.first, step.second)
        )
        expressions.append(
            {
                "add": lambda: a + b,
                "subtract": lambda: a - b,
                "multiply": lambda: a * b,
                "divide": lambda: a / b,
                "exp": lambda: a**b,
                "greater": lambda: a > b,
            }[step.op]()
        )
    return sympy.simplify(expressions[-1])
