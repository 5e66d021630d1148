"""Running a model over FinQA examples: prompts, batched generation, scoring, FLOPs, and the run record.

`solve` is the one call behind `finprog solve`; `finprog compare` and the training
loop's periodic evaluation use the same path (`score_completions`), so a number means
the same thing wherever it appears.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from finprog import flops, prompts
from finprog.data import Example, load_finqa, resolve_data
from finprog.evaluation import metrics, score
from finprog.runs import RUN, RunRecorder, eval_set

MODES = ("program", "direct")
EXEMPLAR_CHOICES = ("similar", "first")


class SolveError(ValueError):
    """A run was asked for with options that cannot work together."""

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
DEFAULT_SHOTS = 4


@dataclass
class SolveOptions:
    """Everything that shapes a run; saved as `config` in run.json."""

    model: str = DEFAULT_MODEL
    mode: str = "program"
    data: str | None = None
    limit: int | None = None
    batch_size: int | None = None  # None: 8 on a GPU, 1 on a CPU (see default_batch_size)
    max_new_tokens: int | None = None
    shots: int | None = None  # None: 4, or the shots of the `finprog train` run that wrote `model`
    exemplar_choice: str = "similar"
    exemplars: str | None = None
    constrained: bool | None = None  # None: on in program mode (off for a model finprog trained), off in direct mode
    restrict_numbers: bool = True  # with constrained: only numbers from the example's text and table, and constants
    samples: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    dtype: str = "auto"
    quant: str = "none"
    chat_template: bool = True
    max_prompt_tokens: int | None = None  # cut the report's least relevant sentences to fit; None: no cut, or as trained
    technique: str = ""  # derived unless given: few-shot or zero-shot; training sets lora, qlora or full

    def __post_init__(self):
        if self.mode not in MODES:
            raise SolveError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        for name in ("samples", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SolveError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.exemplar_choice not in EXEMPLAR_CHOICES:
            raise SolveError(f"unknown exemplar choice {self.exemplar_choice!r}; choose {' or '.join(EXEMPLAR_CHOICES)}")
        trained = training_record(self.model)
        if trained:  # a fine-tuned model is prompted and decoded as its training evaluated it, unless told otherwise
            self.shots = trained["config"]["shots"] if self.shots is None else self.shots
            self.max_prompt_tokens = self.max_prompt_tokens or trained["config"]["max_prompt_tokens"]
            self.constrained = False if self.constrained is None else self.constrained
        if self.constrained is None:
            self.constrained = self.mode == "program"
        if self.constrained and self.mode != "program":
            raise SolveError("--constrained decodes programs: it needs --mode program")
        self.shots = DEFAULT_SHOTS if self.shots is None else self.shots
        if self.shots < 0:
            raise SolveError(f"--shots must be at least 0, got {self.shots}")
        if not self.technique:
            self.technique = (trained["config"]["technique"] if trained
                              else "few-shot" if self.mode == "program" and self.shots else "zero-shot")

    @property
    def new_token_limit(self) -> int:
        from finprog.generation import DIRECT_MAX_NEW_TOKENS

        if self.max_new_tokens:
            return self.max_new_tokens
        return PROGRAM_MAX_NEW_TOKENS if self.mode == "program" else DIRECT_MAX_NEW_TOKENS


PROGRAM_MAX_NEW_TOKENS = 96
"""FinQA's longest gold programs (5 steps, e.g. `table_sum(...)` plus four arithmetic
steps with 7-digit operands) take about 80 tokens in the zoo's tokenizers."""


def solve(options: SolveOptions, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run `options.model` over the data, writing `out/predictions.jsonl` and `out/run.json`; returns run.json."""
    data_path, described, examples = load_examples(options)
    retriever = exemplar_retriever(options, examples, progress)
    record = {
        "kind": "solve",
        "config": {**asdict(options), "data": str(data_path)},
        "eval_set": eval_set(data_path.stem, [e.id for e in examples]),
    }
    source, shape = check_model(options)  # an unknown model, or one whose FLOPs cannot be counted, fails here
    recorder = RunRecorder(out, record, resume=resume)
    todo = [e for e in examples if e.id not in recorder.done_ids]
    _say(progress, f"data: {described}; {len(examples)} examples, {len(todo)} to run")

    loaded, record["model"], load_seconds = load(options, source, shape)
    for row in scored_rows(loaded.model, loaded.tokenizer, todo, options, retriever, progress):
        recorder.add(row)
    return recorder.finish(**results(recorder.rows, options.mode, training_flops(options.model), load_seconds))


def load_examples(options: SolveOptions) -> tuple[Path, str, list[Example]]:
    """The data file, how it was found, and its examples (the first `options.limit`)."""
    data_path, described = resolve_data(options.data)
    return data_path, described, load_finqa(data_path)[: options.limit]


def exemplar_retriever(options: SolveOptions, examples: list[Example], progress: bool) -> prompts.ExemplarRetriever:
    """The exemplar pool for `options`, never holding one of `examples` (all the evaluated ones)."""
    pool, pool_described = _exemplar_pool(options, {e.id for e in examples})
    if pool_described:
        _say(progress, f"exemplars: {options.shots} per question ({options.exemplar_choice}) from {pool_described}")
    return prompts.ExemplarRetriever(pool)


def check_model(options: SolveOptions):
    """The model's source and FLOP shape, read without loading it: an unknown model or an uncountable one fails here."""
    from finprog import models

    source = models.resolve_model(options.model)
    return source, flops.ModelShape.from_config(models.model_config(options.model))


def load(options: SolveOptions, source, shape) -> tuple:
    """Load the model: (LoadedModel, the run record's `model` entry, seconds it took)."""
    from finprog import models

    started = time.perf_counter()
    loaded = models.load_model(options.model, dtype=options.dtype, quant=options.quant)
    entry = {"name": options.model, "source": source.kind, "dtype": str(loaded.dtype),
             "device": str(loaded.device), "params": flops.parameter_counts(shape)["total"]}
    return loaded, entry, time.perf_counter() - started


def results(rows: list[dict], mode: str, training: float, load_seconds: float) -> dict:
    """A finished run's metrics, FLOPs and timing (the fields `RunRecorder.finish` adds to run.json)."""
    seconds = sum(r["seconds"] for r in rows)
    return {
        "metrics": metrics(rows, mode),
        "flops": flop_totals(rows, training),
        "timing": {"seconds_total": seconds, "seconds_per_example": seconds / len(rows) if rows else 0.0,
                   "model_load_seconds": load_seconds},
    }


def training_flops(model: str) -> float:
    """The training FLOPs behind `model`: those of the `finprog train` run that wrote it, else 0."""
    return (training_record(model) or {}).get("flops", {}).get("training_total", 0.0)


def default_batch_size(device) -> int:
    """8 on a GPU; 1 on a CPU, where generation is compute-bound and a batch's padding and
    masked attention cost more than batching saves (evals/bench_solve.txt measures both)."""
    return 8 if device.type == "cuda" else 1


def scored_rows(model, tokenizer, examples: list[Example], options: SolveOptions,
                retriever: prompts.ExemplarRetriever, progress: bool = False) -> Iterator[dict]:
    """Generate for every example and yield its scored row as soon as its batch is done (longest prompts first).

    With `options.samples` > 1 each prompt is sampled that many times and the executed
    values vote. A row's seconds are its share of its batch's generation time.
    """
    from finprog import generation

    shape = flops.ModelShape.from_config(model.config.to_dict())
    texts = [prompts.build_prompt(e, tokenizer, options, retriever) for e in examples]
    repeated = [text for text in texts for _ in range(options.samples)]
    grammar = None
    if options.constrained:
        from finprog import constrained

        grammar = constrained.processor_factory(model, tokenizer, [e for e in examples for _ in range(options.samples)],
                                                restrict_numbers=options.restrict_numbers)
    pending: dict[int, list] = {}  # example index -> its finished samples
    batch, seconds, clock = None, 0.0, time.perf_counter()
    for index, completion in generation.iter_completions(
        model, tokenizer, repeated,
        batch_size=options.batch_size or default_batch_size(model.device), max_new_tokens=options.new_token_limit,
        do_sample=options.samples > 1, temperature=options.temperature, top_p=options.top_p, seed=options.seed,
        add_special_tokens=prompts.adds_special_tokens(tokenizer, options), logits_processor_for=grammar,
        progress=progress,
    ):
        if completion.batch_index != batch:  # a batch's completions arrive together, right after it ran
            batch = completion.batch_index
            seconds = (time.perf_counter() - clock) / completion.batch_size
        example_index = index // options.samples
        samples = pending.setdefault(example_index, [])
        samples.append((completion, seconds))
        if len(samples) == options.samples:
            del pending[example_index]
            yield _row(examples[example_index], samples, options.mode, shape)
        clock = time.perf_counter()


def _row(example: Example, samples: list, mode: str, shape) -> dict:
    """One example's record: its completion(s), score, confidence, token counts, seconds and FLOPs."""
    scored = [(completion, score(example, completion.text, mode)) for completion, _ in samples]
    completion, row = _vote(scored) if len(scored) > 1 else scored[0]
    cost = flops.inference_flops(shape, [c for c, _ in scored])
    row = {
        "id": example.id,
        "completion": completion.text,
        **row,
        **confidence(completion),
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "new_tokens": sum(c.new_tokens for c, _ in scored),
        "seconds": sum(s for _, s in samples),
        "flops": cost["useful"],
        "flops_executed": cost["executed"],
    }
    if len(scored) > 1:
        row["agreement"] = agreement(row["value"], [r["value"] for _, r in scored])
        row["samples"] = [{"completion": c.text, "value": r["value"], "outcome": r["outcome"], **confidence(c)}
                          for c, r in scored]
    return row


def confidence(completion) -> dict:
    """A completion's confidence signals: mean and least token log-probability (the model's own, before any mask)."""
    return {"logprob_mean": completion.logprob_mean, "logprob_min": completion.logprob_min}


def agreement(winner, values: list) -> float:
    """The fraction of samples whose value equals the winning value (at 5 decimals); 0 when the winner has none."""
    if winner is None:
        return 0.0
    return sum(v is not None and _vote_key(v) == _vote_key(winner) for v in values) / len(values)


def _vote(scored: list) -> tuple:
    """Self-consistency: the most frequent executed value wins; ties go to the value seen first.

    Samples without a value (parse or execution errors) do not vote unless no sample has one.
    """
    with_value = [(c, r) for c, r in scored if r["value"] is not None] or scored
    counts = Counter(_vote_key(r["value"]) for _, r in with_value)
    best = max(counts.values())
    return next((c, r) for c, r in with_value if counts[_vote_key(r["value"])] == best)


def _vote_key(value):
    return round(value, 5) if isinstance(value, float) else value


def training_record(model: str) -> dict | None:
    """The run.json of the `finprog train` run that wrote the checkpoint `model`, if it is one."""
    path = Path(model) / RUN
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("kind") == "train" else None


def flop_totals(rows: list[dict], training_flops: float) -> dict:
    n = len(rows)
    useful = sum(r["flops"] for r in rows)
    executed = sum(r["flops_executed"] for r in rows)
    return {
        "inference_total": useful,
        "inference_per_example": useful / n if n else 0.0,
        "inference_total_executed": executed,
        "inference_per_example_executed": executed / n if n else 0.0,
        "training_total": training_flops,
    }


def _exemplar_pool(options: SolveOptions, evaluated_ids: set[str]) -> tuple[list[Example], str]:
    """Training examples with programs, never one of the evaluated ids, and which file they come from."""
    if options.mode != "program" or not options.shots:
        return [], ""
    path, described = resolve_data(options.exemplars, default_split="train")
    return [e for e in load_finqa(path) if e.program and e.id not in evaluated_ids], described


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


def summary(record: dict) -> dict:
    """The machine-readable summary of a finished run (what `--json` prints)."""
    metrics, timing, cost = record["metrics"], record["timing"], record["flops"]
    return {
        "n": metrics["n"], "exact": metrics["exact"], "tolerant": metrics["tolerant"],
        "program_accuracy": metrics["program_accuracy"], "outcomes": metrics["outcomes"],
        "similarity": metrics.get("similarity"),
        "seconds_total": timing["seconds_total"], "seconds_per_example": timing["seconds_per_example"],
        "flops_total": cost["inference_total"], "flops_per_example": cost["inference_per_example"],
        "flops_total_executed": cost["inference_total_executed"],
        **({"answered_by": record["answered_by"]} if "answered_by" in record else {}),
    }


def summary_lines(record: dict) -> list[str]:
    """The human summary: the prototype's lines, then both metrics, outcomes and FLOPs."""
    metrics, timing, cost = record["metrics"], record["timing"], record["flops"]
    n = metrics["n"]
    lines = [
        f"Total Samples: {n}",
        f"Correct Predictions: {round(metrics['tolerant'] * n)} (tolerant), {round(metrics['exact'] * n)} (exact)",
        f"Accuracy: {metrics['tolerant']:.2%} (tolerant), {metrics['exact']:.2%} (exact)",
    ]
    if metrics.get("similarity") is not None:
        lines.append(f"Average Similarity Score: {metrics['similarity']:.4f}")
    if metrics["program_accuracy"] is not None:
        lines.append(f"Program Accuracy: {metrics['program_accuracy']:.2%}")
    lines += [
        "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(metrics["outcomes"].items())),
        f"Elapsed time: {timing['seconds_total']:.1f} s generating (+{timing['model_load_seconds']:.1f} s model load)",
        f"Avg inference time: {timing['seconds_per_example']:.2f} s per example",
        f"FLOPs: {cost['inference_total']:.3g} total, {cost['inference_per_example']:.3g} per example "
        f"({cost['inference_total_executed']:.3g} executed, padding and post-stop steps included)",
    ]
    if "answered_by" in record:  # a cascade
        lines.append("Answered by: " + ", ".join(f"{model} {n}" for model, n in record["answered_by"].items()))
    return lines
