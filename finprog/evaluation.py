"""Scoring predictions against FinQA gold: execution accuracy, program accuracy, outcome categories.

`evaluate_programs` computes exactly what FinQA's official `evaluate.py` computes
on the same inputs: execution accuracy is the share of predictions whose executed
value equals the gold `exe_ans` (after `round(x, 5)`); program accuracy is the
share whose program is symbolically equivalent to the gold program (the official
script asserts that such a program also executes to the gold value, so both
conditions are checked here). The denominator is the number of predictions that
have a gold record; ids present on one side only are reported, not scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finprog import dsl
from finprog.data import Example, read_records

CORRECT = "correct"
WRONG_VALUE = "wrong_value"
EXECUTION_ERROR = "execution_error"
PARSE_ERROR = "parse_error"
NO_PROGRAM = "no_program"
OUTCOMES = (CORRECT, WRONG_VALUE, EXECUTION_ERROR, PARSE_ERROR, NO_PROGRAM)


class PredictionFileError(ValueError):
    """A predictions file cannot be read; the message names the file, line or entry, and field."""


@dataclass(frozen=True)
class ProgramOutcome:
    """What one predicted program did on one example."""

    outcome: str
    value: dsl.Value | None = None
    error: str | None = None
    error_kind: str | None = None
    program_correct: bool | None = None  # None when the example has no gold program


@dataclass(frozen=True)
class Evaluation:
    n: int
    execution_accuracy: float
    program_accuracy: float
    outcomes: dict[str, int]
    missing: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "execution_accuracy": self.execution_accuracy,
            "program_accuracy": self.program_accuracy,
            "outcomes": self.outcomes,
            "missing": self.missing,
        }


def gold_value(example: Example) -> dsl.Value | None:
    """The gold executed answer: `exe_ans`, or (older release, no `exe_ans`) the gold program's result."""
    if example.exe_ans is not None:
        return example.exe_ans
    if example.program is None:
        return None
    try:
        return dsl.execute(dsl.parse(example.program), example.table)
    except dsl.ProgramError:
        return None


Prediction = dsl.Program | str | dsl.ProgramParseError | None


def score_program(predicted: Prediction, example: Example) -> ProgramOutcome:
    """Parse (if text), execute and grade one predicted program under the official rules."""
    failed = False if example.program is not None else None  # program_correct of a failed prediction
    if predicted is None:
        return ProgramOutcome(NO_PROGRAM, program_correct=failed)
    if isinstance(predicted, dsl.ProgramParseError):
        return ProgramOutcome(PARSE_ERROR, error=str(predicted), program_correct=failed)
    try:
        program = dsl.parse(predicted) if isinstance(predicted, str) else predicted
    except dsl.ProgramParseError as error:
        return ProgramOutcome(PARSE_ERROR, error=str(error), program_correct=failed)
    try:
        value = dsl.execute(program, example.table)
    except dsl.ProgramExecutionError as error:
        return ProgramOutcome(EXECUTION_ERROR, error=str(error), error_kind=error.kind, program_correct=failed)
    matched = value == gold_value(example)
    return ProgramOutcome(
        CORRECT if matched else WRONG_VALUE,
        value=value,
        program_correct=_program_correct(program, example, matched),
    )


def _program_correct(program: dsl.Program, example: Example, executed_correctly: bool) -> bool | None:
    if example.program is None:
        return None
    if not executed_correctly:
        return False
    try:
        return dsl.equivalent(dsl.parse(example.program), program)
    except dsl.ProgramError:
        return False


def evaluate_programs(predictions: dict[str, Prediction], gold: list[Example]) -> Evaluation:
    """Execution and program accuracy of predicted programs, keyed by example id."""
    by_id = {example.id: example for example in gold}
    scored = [score_program(program, by_id[i]) for i, program in predictions.items() if i in by_id]
    n = len(scored)
    counts = {name: sum(s.outcome == name for s in scored) for name in OUTCOMES}
    return Evaluation(
        n=n,
        execution_accuracy=counts[CORRECT] / n if n else 0.0,
        program_accuracy=sum(bool(s.program_correct) for s in scored) / n if n else 0.0,
        outcomes=counts,
        missing={
            "no_gold": sorted(i for i in predictions if i not in by_id),
            "no_prediction": sorted(i for i in by_id if i not in predictions),
        },
    )


def load_predictions(path: str | Path) -> dict[str, Prediction]:
    """Predicted programs by id, from the official format or finprog's predictions.jsonl.

    Official: entries `{"id", "predicted": [token, ..., "EOF"]}`. finprog: entries
    `{"id", "program"}` (text, or null when the model produced none). Either may be a
    JSON list or JSON Lines. A tokenised prediction that breaks the official
    structure is kept as its `ProgramParseError`, so that it scores as a parse error.
    """
    path = Path(path)
    entries = read_records(path, PredictionFileError)
    if isinstance(_first(entries), dict) and "predicted" in _first(entries):
        return {str(_field(path, n, entry, "id")): _from_tokens(path, n, entry) for n, entry in enumerate(entries)}
    predictions = {}
    for n, entry in enumerate(entries):
        program = _field(path, n, entry, "program")
        if program is not None and not isinstance(program, str):
            raise PredictionFileError(f"{path}: entry {n}: field 'program' should be text or null")
        predictions[str(_field(path, n, entry, "id"))] = program
    return predictions


def _first(entries: list):
    return entries[0] if entries else None


def _field(path: Path, n: int, entry: object, name: str):
    if not isinstance(entry, dict) or name not in entry:
        raise PredictionFileError(f"{path}: entry {n}: missing field {name!r}")
    return entry[name]


def _from_tokens(path: Path, n: int, entry: dict) -> dsl.Program | dsl.ProgramParseError:
    try:
        return dsl.from_tokens(_field(path, n, entry, "predicted"))
    except dsl.ProgramParseError as error:
        return error
