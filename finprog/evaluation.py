"""The one scoring path: outcomes, grading a completion or a predicted program, execution and program accuracy, run metrics.

`evaluate_programs` computes exactly what FinQA's official `evaluate.py` computes
on the same inputs: execution accuracy is the share of predictions whose executed
value equals the gold `exe_ans` (after `round(x, 5)`); program accuracy is the
share whose program is symbolically equivalent to the gold program (the official
script asserts that such a program also executes to the gold value, so both
conditions are checked here). Execution accuracy's denominator is the number of
predictions that have a gold record; program accuracy's is those whose gold record
has a program (all of them in the official files). Ids present on one side only are
reported, not scored. `score` and `metrics` grade a model's completions with the
same rules, for `solve`, `compare` and training's evaluations.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from finprog import answers, dsl
from finprog.data import Example, read_records
from finprog.errors import FinprogError

CORRECT = "correct"
WRONG_VALUE = "wrong_value"
EXECUTION_ERROR = "execution_error"
PARSE_ERROR = "parse_error"
NO_PROGRAM = "no_program"
PROGRAM_OUTCOMES = (CORRECT, WRONG_VALUE, EXECUTION_ERROR, PARSE_ERROR, NO_PROGRAM)
ANSWERED = "answered"  # direct mode: a number was read from the completion (right or wrong)
NO_NUMBER = "no_number"  # direct mode: the completion holds no number
DIRECT_OUTCOMES = (ANSWERED, NO_NUMBER)
OUTCOMES = PROGRAM_OUTCOMES + DIRECT_OUTCOMES
METRICS = ("exact", "tolerant")  # the accuracies a run is judged by: exact match, and a tolerant match for reference


class PredictionFileError(FinprogError, ValueError):
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
    program_accuracy: float | None  # None when no gold record has a program
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
    counts = {name: sum(s.outcome == name for s in scored) for name in PROGRAM_OUTCOMES}
    return Evaluation(
        n=n,
        execution_accuracy=counts[CORRECT] / n if n else 0.0,
        program_accuracy=program_accuracy([s.program_correct for s in scored]),
        outcomes=counts,
        missing={
            "no_gold": sorted(i for i in predictions if i not in by_id),
            "no_prediction": sorted(i for i in by_id if i not in predictions),
        },
    )


def score(example: Example, completion: str, mode: str) -> dict:
    """Grade one completion: the value it gives, exact/tolerant match, and (program mode) the program's outcome."""
    gold = gold_value(example)
    if mode == "direct":
        value = answers.read_answer(completion)
        row = {"value": value, "outcome": ANSWERED if value is not None else NO_NUMBER}
        row["similarity"] = answers.similarity(completion, example.answer)
    else:
        program = dsl.extract_program(completion)
        outcome = score_program(program, example)
        value = outcome.value
        row = {"program": program, "value": value, "outcome": outcome.outcome, "error_kind": outcome.error_kind,
               "error": outcome.error, "program_correct": outcome.program_correct}
    row["exact"] = answers.exact_match(value, gold)
    row["tolerant"] = answers.tolerant_match(value, example.answer, gold)
    row["gold"] = gold
    row["answer"] = example.answer
    return row


def metrics(rows: list[dict], mode: str) -> dict:
    """Summary metrics over scored rows (fractions in [0, 1])."""
    n = len(rows)
    result = {
        "n": n,
        "exact": sum(r["exact"] for r in rows) / n if n else 0.0,
        "tolerant": sum(r["tolerant"] for r in rows) / n if n else 0.0,
        "outcomes": dict(Counter(r["outcome"] for r in rows)),
        "prompt_tokens_per_example": sum(r["prompt_tokens"] for r in rows) / n if n else 0.0,
        "new_tokens_per_example": sum(r["new_tokens"] for r in rows) / n if n else 0.0,
    }
    if mode == "direct":
        result["similarity"] = sum(r["similarity"] for r in rows) / n if n else 0.0
        result["program_accuracy"] = None
    else:
        result["program_accuracy"] = program_accuracy([r["program_correct"] for r in rows])
    return result


def program_accuracy(program_correct: list[bool | None]) -> float | None:
    """FinQA's program accuracy: the share of scored predictions with a gold program whose program is
    equivalent to it (`program_correct` is None where the gold record has no program); None if none has one."""
    graded = [correct for correct in program_correct if correct is not None]
    return sum(graded) / len(graded) if graded else None


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
