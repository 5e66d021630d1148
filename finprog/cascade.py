"""Cascades of models: the first answers every question, the next only those whose answer the rule rejected.

A cascade runs model by model: model 1 is loaded once and answers every question in
batches, then it is freed and model 2 answers only the rejected questions, and so on;
the last model's answer is always accepted. Every model runs through solve's own path
(`scored_rows`), so each attempt is an ordinary solve row (completion, value, outcome,
confidence signals, FLOPs). A question's cascade row is the accepted attempt's, with
`answered_by`, every attempt, and the tokens, seconds and FLOPs (the ranker's included)
summed over all attempts, the rejected ones included.

An acceptance rule is one or more terms joined by `+`, all of which must hold:

    executes        the answer has a value (program mode: it parsed and executed; direct: a number was read)
    logprob:V       mean token log-probability of the completion >= V (V <= 0)
    minlogprob:V    every token's log-probability >= V (V <= 0)
    agree:F         at least a fraction F of the --samples agree with the winning value
                    (0 <= F <= 1; needs --samples >= 2)

e.g. `executes+logprob:-0.3`. Log-probabilities are the model's own (before any grammar
mask or sampling warper, see `generation`). The offline sweep (`sweep.py`) routes
recorded rows with the same `Rule.accepts` and `cascade_row`.
"""

from __future__ import annotations

import gc
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from finprog import flops, retrieval
from finprog.errors import FinprogError, check_types
from finprog.models import ModelSource
from finprog.runs import RunRecorder, eval_set, finished_record
from finprog.solve import (
    SolveOptions, check_model, context_cut_line, exemplar_retriever, fit_to_context, load, load_examples, results,
    scored_rows, training_flops,
)

SIGNALS = {
    # term: (row field, lowest threshold, highest threshold); executes has no threshold
    "executes": ("value", None, None),
    "logprob": ("logprob_mean", -math.inf, 0.0),
    "minlogprob": ("logprob_min", -math.inf, 0.0),
    "agree": ("agreement", 0.0, 1.0),
}
SUMMED = ("prompt_tokens", "new_tokens", "seconds", "flops", "flops_executed", "ranker_flops")
"""Row fields that a cascade row sums over its attempts."""
RULE_HELP = ("executes, logprob:V (mean token log-prob >= V, V <= 0), minlogprob:V (every token's >= V), "
             "agree:F (a fraction F of --samples agree), joined by + (all must hold)")


class CascadeError(FinprogError, ValueError):
    """A cascade or a sweep was asked for wrongly: too few models, a bad rule, runs that do not fit together."""


@dataclass(frozen=True)
class Term:
    """One condition of a rule: a signal and its threshold (None for `executes`, or a term left open for a sweep)."""

    signal: str
    threshold: float | None = None

    def holds(self, row: dict) -> bool:
        field = SIGNALS[self.signal][0]
        if self.signal == "executes":
            return row[field] is not None
        return row[field] >= self.threshold

    def __str__(self) -> str:
        return self.signal if self.threshold is None else f"{self.signal}:{self.threshold}"


@dataclass(frozen=True)
class Rule:
    """Terms that must all hold for an answer to be accepted."""

    terms: tuple[Term, ...]

    def accepts(self, row: dict) -> bool:
        return all(term.holds(row) for term in self.terms)

    @property
    def open_term(self) -> Term | None:
        """The term left without a threshold, which a sweep varies."""
        return next((t for t in self.terms if t.threshold is None and t.signal != "executes"), None)

    def with_threshold(self, value: float) -> Rule:
        """The rule with its open term set to `value`."""
        return Rule(tuple(replace(t, threshold=value) if t is self.open_term else t for t in self.terms))

    @property
    def needs_samples(self) -> bool:
        return any(t.signal == "agree" for t in self.terms)

    def __str__(self) -> str:
        return "+".join(map(str, self.terms))


def parse_rule(text: str, open_term: bool = False) -> Rule:
    """Read a rule such as `executes+logprob:-0.3`; with `open_term`, one term may lack its value (`logprob`)."""
    if not str(text).strip():
        raise CascadeError(f"the acceptance rule is empty; give one: {RULE_HELP}")
    terms = []
    for part in str(text).split("+"):
        name, _, value = part.strip().partition(":")
        if name not in SIGNALS:
            raise CascadeError(f"unknown acceptance rule term {part.strip()!r} in {text!r}; use {RULE_HELP}")
        terms.append(Term(name, _threshold(text, name, value.strip(), open_term)))
    rule = Rule(tuple(terms))
    if sum(t.threshold is None and t.signal != "executes" for t in terms) > 1:
        raise CascadeError(f"rule {text!r}: only one term may be left without a value (the one swept)")
    if len({t.signal for t in terms}) < len(terms):
        raise CascadeError(f"rule {text!r} names a signal twice")
    return rule


def _threshold(text: str, name: str, value: str, open_term: bool) -> float | None:
    _, low, high = SIGNALS[name]
    if low is None:
        if value:
            raise CascadeError(f"rule {text!r}: {name} takes no value")
        return None
    if not value:
        if open_term:
            return None
        raise CascadeError(f"rule {text!r}: {name} needs a value, e.g. {name}:{-0.3 if high == 0 else 0.6}")
    try:
        threshold = float(value)
    except ValueError:
        raise CascadeError(f"rule {text!r}: {name}'s value {value!r} is not a number") from None
    if not low <= threshold <= high:
        allowed = "at most 0 (a log-probability)" if high == 0 else "a fraction from 0 to 1"
        raise CascadeError(f"rule {text!r}: {name}:{value} is out of range; it must be {allowed}")
    return threshold


def is_final(rule: Rule, attempt: dict, last: bool) -> bool:
    """Whether a question's `attempt` is its answer: the rule accepts it, or no model is left."""
    return last or rule.accepts(attempt)


def route(rule: Rule, attempts: list[dict]) -> list[dict]:
    """The attempts a cascade makes on one question, given every model's attempt at it in cascade order."""
    for index, attempt in enumerate(attempts):
        if is_final(rule, attempt, index == len(attempts) - 1):
            return attempts[: index + 1]
    raise CascadeError("a cascade needs at least one model")


def cascade_row(attempts: list[dict]) -> dict:
    """A question's row: the last (accepted) attempt's answer, `answered_by`, and costs summed over every attempt.

    Each attempt is a solve row with the `model` that wrote it.
    """
    answer = attempts[-1]
    row = {key: value for key, value in answer.items() if key not in ("model", "samples")}
    row.update({key: sum(a[key] for a in attempts) for key in SUMMED})
    row["answered_by"] = answer["model"]
    row["attempts"] = [{key: value for key, value in a.items() if key != "id"} for a in attempts]
    return row


@dataclass
class CascadeOptions:
    """The models in order, as SolveOptions (they must share data, limit and mode), and the acceptance rule."""

    stages: list[SolveOptions]
    accept: str = "executes"

    def __post_init__(self):
        check_types(self, CascadeError)
        if len(self.stages) < 2:
            raise CascadeError(f"a cascade needs at least two models, got {len(self.stages)}; "
                               "for a single model use --model")
        rule = self.rule  # an unknown term or a threshold out of range fails here
        for name in ("data", "limit", "mode"):
            differing = {getattr(stage, name) for stage in self.stages}
            if len(differing) > 1:
                raise CascadeError(f"the models of a cascade must share --{name}, got {sorted(map(str, differing))}")
        if rule.needs_samples and any(stage.samples < 2 for stage in self.stages[:-1]):
            raise CascadeError(f"rule {self.accept!r} uses agreement between samples: give --samples 2 or more")

    @property
    def rule(self) -> Rule:
        return parse_rule(self.accept)

    @property
    def mode(self) -> str:
        return self.stages[0].mode

    @property
    def models(self) -> list[str]:
        return [stage.model for stage in self.stages]

    def config(self) -> dict:
        """What run.json keeps as `config`: the models, the rule, and every model's own options."""
        return {"cascade": self.models, "accept": str(self.rule), "mode": self.mode,
                "technique": f"cascade({self.rule})", "data": self.stages[0].data, "limit": self.stages[0].limit,
                "stages": [asdict(stage) for stage in self.stages]}


def cascade(options: CascadeOptions, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run the cascade over the data, writing `out/predictions.jsonl` and `out/run.json`; returns run.json.

    Every model is checked (known, FLOPs countable, tokenizer found) before any is loaded.
    The run folder is locked and recorded like a solve run's: an interrupted cascade keeps
    every answered question, and `resume` reruns the others from the first model.
    """
    data_path, described, examples = load_examples(options.stages[0])
    if any(stage.context == "gold" for stage in options.stages):
        retrieval.check_gold(examples, str(data_path))
    checked = [check_model(stage) for stage in options.stages]
    for stage in options.stages:
        _check_tokenizer(stage.model)
    record = {
        "kind": "cascade",
        "config": {**options.config(), "data": str(data_path)},
        "eval_set": eval_set(data_path.stem, [e.id for e in examples]),
    }
    finished = finished_record(out, "cascade", record["config"], resume)
    if finished:
        _say(progress, f"{out}: the cascade is finished, every example answered; nothing to run")
        return finished
    costs = [training_flops(stage.model, source) for stage, (source, _, _) in zip(options.stages, checked)]
    training = None if None in costs else sum(costs)
    with RunRecorder(out, record, resume=resume) as recorder:
        todo = [e for e in examples if e.id not in recorder.done_ids]
        _say(progress, f"data: {described}; {len(examples)} examples, {len(todo)} to run; accept: {options.rule}")

        attempts: dict[str, list[dict]] = {}
        entries, load_seconds = [], 0.0
        for index, (stage, (source, config, shape)) in enumerate(zip(options.stages, checked)):
            last = index == len(options.stages) - 1
            entry = {"name": stage.model, "source": source.kind, "params": flops.parameter_counts(shape)["total"]}
            if todo:
                loaded, entry, seconds = load(stage, source, shape)
                load_seconds += seconds
                retriever = exemplar_retriever(stage, examples, progress)  # never an exemplar from any evaluated one
                fitted, cut = fit_to_context(stage, todo, loaded.tokenizer, retriever,
                                             config.get("max_position_embeddings"))
                if cut:
                    entry["context_cut"] = cut
                    _say(progress, f"{stage.model}: {context_cut_line(cut)}")
                rejected = set()
                for row in scored_rows(loaded.model, loaded.tokenizer, todo, fitted, retriever, progress, shape):
                    attempts.setdefault(row["id"], []).append({"model": stage.model, **row})
                    if is_final(options.rule, row, last):
                        recorder.add(cascade_row(attempts.pop(row["id"])))
                    else:
                        rejected.add(row["id"])
                _say(progress, f"{stage.model}: answered {len(todo) - len(rejected)} of {len(todo)}")
                todo = [e for e in todo if e.id in rejected]
                loaded = None
                _free_memory()
            entries.append(entry)
        record["model"] = {"name": " > ".join(ModelSource(e["source"], e["name"]).name for e in entries),
                           "params": sum(e["params"] for e in entries), "stages": entries}
        rows = recorder.rows
        return recorder.finish(**results(rows, options.mode, training, load_seconds),
                               answered_by=dict(Counter(row["answered_by"] for row in rows)))


def _check_tokenizer(model: str) -> None:
    from finprog import models

    try:
        models.load_tokenizer(model)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CascadeError(f"{model}: its tokenizer cannot be found ({reason})") from None


def _free_memory() -> None:
    """Give a freed model's memory back before the next model loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)
