"""Running a model over FinQA examples: prompts, batched generation, scoring, FLOPs, and the run record.

`solve` is the one call behind `finprog solve`; `finprog compare` and the training
loop's periodic evaluation use the same path (`score_completions`), so a number means
the same thing wherever it appears.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from finprog import flops, prompts, retrieval
from finprog.data import Example, first_without_page, load_finqa, resolve_data
from finprog.errors import FinprogError, check_types
from finprog.evaluation import metrics, score
from finprog.runs import RunRecord, RunRecorder, eval_set, finished_record

MODES, EXEMPLAR_CHOICES, DEFAULT_SHOTS = prompts.MODES, prompts.EXEMPLAR_CHOICES, prompts.DEFAULT_SHOTS


class SolveError(FinprogError, ValueError):
    """A run was asked for with options that cannot work together."""

DEFAULT_MODEL = "qwen2.5-coder-0.5b_lora_2ep"
"""Program mode's default: finprog's frugal trained adapter (56% on test_100 at 0.29 TFLOPs per correct answer, asked
with the 4 facts of its models.SOLVE_DEFAULTS)."""
PROMPTED_MODEL = "qwen2.5-coder-0.5b"
"""Direct mode's default, and what `train` and `compare` start from: the zoo model under DEFAULT_MODEL."""


@dataclass
class SolveOptions(prompts.PromptOptions):
    """Everything that shapes a run; saved as `config` in run.json. For a model that `finprog train` wrote, the
    prompt options left unset (`prompts.PromptOptions`) are those its training evaluated it with."""

    model: str | None = None  # None: DEFAULT_MODEL in program mode, PROMPTED_MODEL in direct mode
    data: str | None = None
    limit: int | None = None
    batch_size: int | None = None  # None: 8 on a GPU, 1 on a CPU (see default_batch_size)
    max_new_tokens: int | None = None
    exemplars: str | None = None
    gold_exemplars: bool = False  # only training records with annotated facts (the others are shown with retrieved ones)
    constrained: bool | None = None  # None: on in program mode (off for a model finprog trained), off in direct mode
    restrict_numbers: bool = True  # with constrained: only numbers from the example's text and table, and constants
    page_numbers: bool = False  # with restrict_numbers: numbers of the whole page, not only of the facts shown
    samples: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    dtype: str = "auto"
    quant: str = "none"
    prefix_cache: bool = True  # the prompts' shared prefix computed once, its keys and values reused (generation)
    technique: str = ""  # derived unless given: few-shot or zero-shot; training sets lora, qlora or full

    def __post_init__(self):
        if self.model is None:
            self.model = DEFAULT_MODEL if self.mode == "program" else PROMPTED_MODEL
        check_types(self, SolveError, paths=("model", "data", "exemplars"))
        self._inherit_training()
        self.check_prompt(SolveError)
        for name in ("samples", "batch_size", "limit", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SolveError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.samples > 1 and not self.temperature > 0:
            raise SolveError(f"--samples {self.samples} samples: --temperature must be above 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SolveError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.constrained is None:
            self.constrained = self.mode == "program"
        if self.constrained and self.mode != "program":
            raise SolveError("--constrained decodes programs: it needs --mode program")
        if not self.technique:
            self.technique = "few-shot" if self.mode == "program" and self.shots else "zero-shot"

    def _inherit_training(self) -> None:
        """A model that `finprog train` wrote is prompted and decoded as its training evaluated it (shots, prompt
        cut, facts shown, free decoding, technique) wherever a field is left unset, except where its folder's
        models.SOLVE_DEFAULTS holds a measured setting."""
        from finprog.models import solve_defaults

        trained = RunRecord.trained(self.model)
        if not trained:
            return
        config = trained.data["config"]
        style = config.get("prompt", "instructed")  # runs trained before bare prompts were instructed
        if self.prompt not in (None, style):
            raise SolveError(f"{self.model} was trained with {style} prompts; ask it with --prompt {style} "
                             f"(or leave --prompt out), not {self.prompt}")
        self.prompt = style
        for name, value in solve_defaults(trained.folder).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.shots = config["shots"] if self.shots is None else self.shots
        self.max_prompt_tokens = self.max_prompt_tokens or config["max_prompt_tokens"]
        self.constrained = False if self.constrained is None else self.constrained
        self.technique = self.technique or config["technique"]
        for name in ("context", "top_k", "ranker"):  # a run trained before retrieval showed the page
            if getattr(self, name) is None:
                setattr(self, name, config.get(name, "page" if name == "context" else None))

    @property
    def new_token_limit(self) -> int:
        from finprog.generation import DIRECT_MAX_NEW_TOKENS

        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return PROGRAM_MAX_NEW_TOKENS if self.mode == "program" else DIRECT_MAX_NEW_TOKENS


PROGRAM_MAX_NEW_TOKENS = 96
"""FinQA's longest gold programs (5 steps, e.g. `table_sum(...)` plus four arithmetic
steps with 7-digit operands) take about 80 tokens in the zoo's tokenizers."""


def solve(options: SolveOptions, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run `options.model` over the data, writing `out/predictions.jsonl` and `out/run.json`; returns run.json."""
    data_path, described, examples = load_examples(options)
    if options.context == "gold":
        retrieval.check_gold(examples, str(data_path))
    retriever = exemplar_retriever(options, examples, progress)
    record = {
        "kind": "solve",
        "config": {**asdict(options), "data": str(data_path)},
        "eval_set": eval_set(data_path.stem, [e.id for e in examples]),
    }
    finished = finished_record(out, "solve", record["config"], resume)
    if finished:
        _say(progress, f"{out}: the run is finished, every example answered; nothing to run")
        return finished
    source, config, shape = check_model(options)  # an unknown model, or one whose FLOPs cannot be counted, fails here
    training = training_flops(options.model, source)
    with RunRecorder(out, record, resume=resume) as recorder:
        todo = [e for e in examples if e.id not in recorder.done_ids]
        _say(progress, f"data: {described}; {len(examples)} examples, {len(todo)} to run")
        loaded, record["model"], load_seconds = load(options, source, shape)
        note = prompts.bare_without_template_note(loaded.tokenizer, options)
        if note:
            _say(progress, note)
        fitted, cut = fit_to_context(options, todo, loaded.tokenizer, retriever, config.get("max_position_embeddings"))
        if cut:
            record["context_cut"] = cut
            _say(progress, context_cut_line(cut))
        recorder.update()
        for row in scored_rows(loaded.model, loaded.tokenizer, todo, fitted, retriever, progress, shape):
            recorder.add(row)
        return recorder.finish(**results(recorder.rows, options.mode, training, load_seconds))


def load_examples(options: SolveOptions) -> tuple[Path, str, list[Example]]:
    """The data file, how it was found, and its examples (the first `options.limit`); SolveError if there are none."""
    data_path, described = resolve_data(options.data)
    examples = load_finqa(data_path)[: options.limit]
    if not examples:
        raise SolveError(f"{data_path} holds no examples")
    pageless = first_without_page(examples)
    if pageless:
        raise SolveError(f"{data_path}: record {pageless!r} has no page (no text, no table) to answer from; "
                         "solve a FinQA file with pages")
    return data_path, described, examples


def exemplar_retriever(options: SolveOptions, examples: list[Example], progress: bool) -> prompts.ExemplarRetriever:
    """The exemplar pool for `options`, never holding one of `examples` (all the evaluated ones)."""
    pool, pool_described = _exemplar_pool(options, {e.id for e in examples})
    if pool_described:
        _say(progress, f"exemplars: {options.shots} per question ({options.exemplar_choice}) from {pool_described}")
    return prompts.ExemplarRetriever(pool)


def check_model(options: SolveOptions) -> tuple:
    """The model's source, config and FLOP shape, read without loading it: an unknown model or an uncountable one
    fails here."""
    from finprog import models

    source = models.resolve_model(options.model)
    config = models.model_config(source)
    return source, config, flops.ModelShape.from_config(config)


def load(options: SolveOptions, source, shape: flops.ModelShape) -> tuple:
    """Load the model: (LoadedModel, the run record's `model` entry, seconds it took)."""
    from finprog import models

    started = time.perf_counter()
    loaded = models.load_model(source, dtype=options.dtype, quant=options.quant)
    entry = {"name": options.model, "source": source.kind, "dtype": str(loaded.dtype),
             "device": str(loaded.device), "params": flops.parameter_counts(shape)["total"]}
    if source.base:  # an adapter's base, under which the report compares it
        entry["base"] = source.base.name
    return loaded, entry, time.perf_counter() - started


def results(rows: list[dict], mode: str, training: float | None, load_seconds: float) -> dict:
    """A finished run's metrics, FLOPs and timing (the fields `RunRecorder.finish` adds to run.json)."""
    seconds = sum(r["seconds"] for r in rows)
    return {
        "metrics": metrics(rows, mode),
        "flops": flop_totals(rows, training),
        "timing": {"seconds_total": seconds, "seconds_per_example": seconds / len(rows) if rows else 0.0,
                   "model_load_seconds": load_seconds},
    }


UNKNOWN_TRAINING = "an adapter it ran has no run.json of the `finprog train` run that made it"
"""Why a run's `flops.training_total` is null (unknown)."""


def training_flops(model: str, source) -> float | None:
    """The training FLOPs behind `model` (resolved as `source`): those of the `finprog train` run that wrote it;
    None (unknown, with a warning) for an adapter without that run's run.json; else 0, a pretrained model's."""
    trained = RunRecord.trained(model)
    if trained:
        return trained.data["flops"]["training_total"]
    if source.kind != "adapter":
        return 0.0
    print(f"finprog: warning: {model} is an adapter without the run.json of the `finprog train` run that made it: "
          "its training cost is recorded as unknown, and it is asked with solve's defaults (--prompt, --shots, "
          "--context, --constrained), not as it was trained; put that run.json beside it (finprog export-adapter "
          "copies it)", file=sys.stderr)
    return None


def fit_to_context(options: SolveOptions, examples: list[Example], tokenizer, retriever: prompts.ExemplarRetriever,
                   positions: int | None) -> tuple[SolveOptions, dict | None]:
    """Options whose prompts leave room for the new tokens in the model's `positions`, and what was cut.

    A prompt longer than `positions` minus the new-token limit gets the `--max-prompt-tokens`
    cut at that room (the report's least relevant sentences, then table rows, go first);
    when even the cut prompt cannot fit, SolveError says which example.
    """
    if positions is None:
        return options, None
    room = positions - options.new_token_limit
    if room < 1:
        raise SolveError(f"--max-new-tokens {options.new_token_limit} leaves no room for a prompt in the model's "
                         f"{positions} positions")
    special = prompts.adds_special_tokens(tokenizer, options)

    def length(e: Example, settings: SolveOptions) -> int:
        return len(tokenizer(prompts.build_prompt(e, tokenizer, settings, retriever), add_special_tokens=special)["input_ids"])

    too_long = [e for e in examples if length(e, options) > room]
    if not too_long:
        return options, None
    fitted = replace(options, max_prompt_tokens=room)
    for example in too_long:
        if length(example, fitted) > room:
            raise SolveError(f"example {example.id}: the prompt is {length(example, fitted)} tokens even cut to its "
                             f"question and one table row; the model takes {positions} positions, "
                             f"{options.new_token_limit} of them for new tokens")
    return fitted, {"positions": positions, "max_prompt_tokens": room, "prompts_cut": len(too_long)}


def context_cut_line(cut: dict) -> str:
    return (f"context: {cut['prompts_cut']} prompt(s) longer than the model's {cut['positions']} positions allow "
            f"were cut to {cut['max_prompt_tokens']} tokens (the --max-prompt-tokens rule)")


def default_batch_size(device) -> int:
    """8 on a GPU; 1 on a CPU, where generation is compute-bound and a batch's padding and
    masked attention cost more than batching saves (evals/bench/solve.txt measures both)."""
    return 8 if device.type == "cuda" else 1


def scored_rows(model, tokenizer, examples: list[Example], options: SolveOptions,
                retriever: prompts.ExemplarRetriever, progress: bool = False,
                shape: flops.ModelShape | None = None) -> Iterator[dict]:
    """Generate for every example and yield its scored row as soon as its batch is done (longest prompts first).

    With `options.samples` > 1 each prompt is sampled that many times and the executed
    values vote. A row's seconds are its share of its batch's generation time. With
    `options.prefix_cache` the prompts' shared prefix runs once, and its FLOPs are charged
    to the first row (`prefix_flops`); every row records the prompt tokens it took from it.
    """
    from finprog import generation

    shape = shape or flops.ModelShape.from_config(model.config.to_dict())
    turns = [prompts.user_turn(e, tokenizer, options, retriever) for e in examples]
    texts = [prompts.chat_prompt(tokenizer, text, options) for text, _ in turns]
    ranking = [prompts.ranker_flops(e, options, retriever) for e in examples]
    repeated = [text for text in texts for _ in range(options.samples)]
    grammar = None
    if options.constrained:
        from finprog import constrained

        shown = examples if options.page_numbers else [shown for _, shown in turns]
        grammar = constrained.processor_factory(model, tokenizer, [e for e in shown for _ in range(options.samples)],
                                                restrict_numbers=options.restrict_numbers)
    pending: dict[int, list] = {}  # example index -> its finished samples
    charged = False  # whether a row carries the shared prefix's FLOPs yet
    batch, seconds, clock = None, 0.0, time.perf_counter()
    for index, completion in generation.iter_completions(
        model, tokenizer, repeated,
        batch_size=options.batch_size or default_batch_size(model.device), max_new_tokens=options.new_token_limit,
        do_sample=options.samples > 1, temperature=options.temperature, top_p=options.top_p, seed=options.seed,
        add_special_tokens=prompts.adds_special_tokens(tokenizer, options), logits_processor_for=grammar,
        prefix_cache=options.prefix_cache, progress=progress,
    ):
        if completion.batch_index != batch:  # a batch's completions arrive together, right after it ran
            batch = completion.batch_index
            seconds = (time.perf_counter() - clock) / completion.batch_size
        example_index = index // options.samples
        samples = pending.setdefault(example_index, [])
        samples.append((completion, seconds))
        if len(samples) == options.samples:
            del pending[example_index]
            prefix = 0 if charged else flops.prefix_flops(shape, completion.cached_prompt_tokens)
            charged = True
            yield _row(examples[example_index], samples, options.mode, shape, ranking[example_index], prefix)
        clock = time.perf_counter()


def _row(example: Example, samples: list, mode: str, shape, ranker_flops: float = 0.0,
         prefix_flops: float = 0.0) -> dict:
    """One example's record: its completion(s), score, confidence, token counts, seconds and FLOPs (the ranker's
    included, and `prefix_flops`: the shared prefix's, on the one row that carries them)."""
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
        "cached_prompt_tokens": completion.cached_prompt_tokens,
        "new_tokens": sum(c.new_tokens for c, _ in scored),
        "seconds": sum(s for _, s in samples),
        "flops": cost["useful"] + ranker_flops + prefix_flops,
        "flops_executed": cost["executed"] + ranker_flops + prefix_flops,
        "ranker_flops": ranker_flops,
        "prefix_flops": prefix_flops,
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


def flop_totals(rows: list[dict], training_flops: float | None) -> dict:
    """A run's FLOPs from its rows; `prefix_total` is the shared prefixes' part of both inference totals (a cascade
    row's attempts each count theirs). Unknown training FLOPs (None) are recorded as null, with the reason."""
    n = len(rows)
    useful = sum(r["flops"] for r in rows)
    executed = sum(r["flops_executed"] for r in rows)
    prefix = sum(a.get("prefix_flops", 0.0) for r in rows for a in r.get("attempts", [r]))
    return {
        "inference_total": useful,
        "inference_per_example": useful / n if n else 0.0,
        "inference_total_executed": executed,
        "inference_per_example_executed": executed / n if n else 0.0,
        "prefix_total": prefix,
        "training_total": training_flops,
        **({} if training_flops is not None else {"training_unknown": UNKNOWN_TRAINING}),
    }


def _exemplar_pool(options: SolveOptions, evaluated_ids: set[str]) -> tuple[list[Example], str]:
    """Training examples with programs (and gold facts, if asked), never an evaluated id, and their file."""
    if options.mode != "program" or not options.shots:
        return [], ""
    path, described = resolve_data(options.exemplars, default_split="train")
    pool = [e for e in load_finqa(path) if e.program and e.id not in evaluated_ids
            and (e.gold_inds or not options.gold_exemplars)]
    return pool, described + (", records with gold facts" if options.gold_exemplars else "")


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
        "flops_total_executed": cost["inference_total_executed"], "context_cut": record.get("context_cut"),
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
    if record.get("context_cut"):
        lines.append(context_cut_line(record["context_cut"]))
    lines += [
        "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(metrics["outcomes"].items())),
        f"Elapsed time: {timing['seconds_total']:.1f} s generating (+{timing['model_load_seconds']:.1f} s model load)",
        f"Avg inference time: {timing['seconds_per_example']:.2f} s per example",
        f"FLOPs: {cost['inference_total']:.3g} total, {cost['inference_per_example']:.3g} per example "
        f"({cost['inference_total_executed']:.3g} executed, padding and post-stop steps included)",
    ]
    if cost.get("training_total", 0.0) is None:
        lines.append(f"Training FLOPs: unknown ({cost['training_unknown']})")
    if "answered_by" in record:  # a cascade
        lines.append("Answered by: " + ", ".join(f"{model} {n}" for model, n in record["answered_by"].items()))
    return lines
