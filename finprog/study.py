"""Studies: a declared model x technique comparison (one TOML file), its FLOPs predicted, its cells run
resumably in processes of their own (locally or through submitit), and its report.

A study file declares a name, targets, and cells. A cell is a model and a technique: a prompted
cell is one `finprog solve` run; a trained cell is one `finprog train` run, then one solve of the
test set per declared decoding with the model it trained. Options keep the names and checks of
`SolveOptions` and `TrainOptions`:

    name = "test-retrieved"
    targets = [0.1, 0.2]
    models = ["smollm2-135m", "qwen2.5-coder-0.5b"]    # crossed with every [techniques.NAME]
    [solve]                                            # every solve's options (the test set among them)
    data = "test_100"
    [train]                                            # every training run's options
    train = ["train_2077"]
    eval = "dev_200"
    [techniques.direct]                                # cell MODEL_direct
    mode = "direct"
    [techniques.lora]                                  # cell MODEL_lora: trained, then solves the test set
    train = { method = "lora", max_steps = 240 }
    test.program = { constrained = false }             # run MODEL_lora_test_program
    [cells.my-adapter]                                 # one cell of its own
    model = "../../adapters/my-adapter"                # paths are relative to the study file

and, before the tables, `compare = [["smollm2-135m_direct", "smollm2-135m_lora_test_program"]]`: runs
(by name, or run folders relative to the file) put side by side, with paired tests, in paired.txt once
they have finished.

The study's folder holds `runs/` (a folder per run), `study.json` (what each cell was declared
as when it ran, its predicted and its measured FLOPs), the report (report.md, .png, .json) and
paired.txt.
A finished run is never run again; an interrupted one resumes from its folder; a cell whose
declaration changed since it ran is refused until `--rerun` names it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import runpy
import shutil
import statistics
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path

from finprog import flops, prompts
from finprog.data import DataValidationError, resolve_data
from finprog.errors import FinprogError
from finprog.model_card import write_model_card
from finprog.models import model_folder
from finprog.paths import shown
from finprog.provenance import header, machine, same_machine
from finprog.report import DEFAULT_METRIC, DEFAULT_QUESTIONS, parse_targets
from finprog.runs import RUN, RunRecord, finished_run, replace_file
from finprog.solve import SolveOptions

RUNS = "runs"
RECORD = "study.json"
PAIRED = "paired.txt"  # the declared comparisons, as `finprog compare` prints them
EXECUTORS = ("local", "slurm", "submitit-local")
TOP_KEYS = {"name": str, "description": str, "targets": list, "questions": int, "metric": str, "models": list,
            "plugins": list, "compare": list, "solve": dict, "train": dict, "techniques": dict, "cells": dict}
TRAINED_KEYS = {"train", "test", "export"}
CASCADE_KEYS = {"cascade", "accept"}
DATA_OPTIONS = {"data": "dev", "exemplars": "train", "eval": "dev", "train": "train"}  # option -> default split
PATH_OPTIONS = ("model", *DATA_OPTIONS)
"""Options that name files or folders: relative paths in a study file are relative to it, and a run's recorded
value is compared by its last name (so a study's folder can move)."""


class StudyError(FinprogError, ValueError):
    """A study file that cannot be run as declared; the message names the file and the key."""


@dataclass
class Run:
    """One run folder of a cell: a training run or a solve, with the options that make it."""

    out: Path
    options: object  # SolveOptions or TrainOptions
    export: Path | None = None  # a trained LoRA run's adapter is exported here (and solved from)
    base: str = ""  # a test solve's: the model its trained model was trained from (what its FLOPs count)

    @property
    def trains(self) -> bool:
        return hasattr(self.options, "method")

    @property
    def cascades(self) -> bool:
        return hasattr(self.options, "stages")

    def finished(self) -> RunRecord | None:
        return finished_run(self.out)

    def done(self) -> bool:
        """Finished, and its adapter exported where declared."""
        return bool(self.finished()) and (self.export is None or self.export.exists())

    def complete(self) -> None:
        """Run it, or resume it from its folder, unless it finished; export a trained adapter where declared."""
        from finprog import cascade, export, solve, training

        resume = (self.out / RUN).exists()
        if self.finished():
            pass
        elif self.trains:
            training.train(self.options, self.out, resume=resume)
        elif self.cascades:
            cascade.cascade(self.options, self.out, resume=resume)
        else:
            solve.solve(self.options, self.out, resume=resume)
        if self.export and not self.export.exists():
            export.export_adapter(self.out, self.export)


@dataclass
class Cell:
    """A model and a technique: its runs (a prompted cell: one solve; a trained cell: training, then test solves),
    and the declaration they came from."""

    name: str
    model: str  # what the cell's time is estimated by (a cascade's models joined by +)
    declaration: dict
    runs: list[Run] = field(default_factory=list)

    def status(self) -> str:
        """done, partial (some run folder exists) or pending."""
        if all(run.done() for run in self.runs):
            return "done"
        return "partial" if any(run.out.exists() for run in self.runs) else "pending"


@dataclass
class Study:
    path: Path
    name: str
    description: str
    targets: tuple[float, ...]
    questions: int
    metric: str
    cells: dict[str, Cell]
    comparisons: tuple[tuple[Path, ...], ...] = ()  # run folders compared side by side, each group in paired.txt
    text: str = ""  # the file as read: a study's cells run from it, so editing the file meanwhile changes none of them

    @property
    def folder(self) -> Path:
        return self.path.parent

    def record(self) -> dict:
        """study.json: per cell, its declaration when it ran, predicted and measured FLOPs."""
        path = self.folder / RECORD
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"cells": {}}

    def save_record(self, record: dict) -> None:
        replace_file(self.folder / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- reading a study file


def load_study(path: str | Path, text: str | None = None) -> Study:
    """Read and check a study file (or `text`, the file as read before): every key known and of the right type,
    every option valid, every model and data file found; loads no model. StudyError names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
        declared = tomllib.loads(text)
    except OSError as error:
        raise StudyError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: not valid TOML: {error}") from None
    where = _Where(path)
    for key, value in declared.items():
        if key not in TOP_KEYS:
            where.fail(key, f"is not a study key; use {', '.join(TOP_KEYS)}")
        if not isinstance(value, TOP_KEYS[key]):
            where.fail(key, f"must be {TOP_KEYS[key].__name__}, got {type(value).__name__}")
    if "name" not in declared:
        where.fail("name", 'is missing: a study names itself (name = "...")')
    for plugin in declared.get("plugins", []):
        _run_plugin(path, plugin, where)
    try:
        targets = parse_targets(declared.get("targets", [0.3]))
    except ValueError as error:
        where.fail("targets", str(error))
    cells = {}
    for key, name, model, spec in _declared_cells(declared, where):
        if name in cells:
            where.fail(key, f"declares cell {name!r} a second time")
        cells[name] = _cell(path, key, name, model, spec, declared, where)
    if not cells:
        where.fail("cells", "no cell declared: add [cells.NAME] with a model, or models = [...] and [techniques.NAME]")
    return Study(path, declared["name"], declared.get("description", ""), targets,
                 declared.get("questions", DEFAULT_QUESTIONS), declared.get("metric", DEFAULT_METRIC), cells,
                 _comparisons(path, declared.get("compare", []), cells, where), text)


def _comparisons(path: Path, declared: list, cells: dict[str, Cell], where: _Where) -> tuple[tuple[Path, ...], ...]:
    """`compare`: lists of two or more runs, each a run of this study by name or a run folder relative to the file."""
    runs = {run.out.name: run.out for cell in cells.values() for run in cell.runs}
    comparisons = []
    for index, names in enumerate(declared):
        key = f"compare[{index}]"
        if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) and n for n in names)):
            where.fail(key, f"must list two or more runs, got {names!r}")
        folders = tuple(runs.get(name) or path.parent / name for name in names)
        for name, folder in zip(names, folders):
            if not (folder.is_dir() or folder in runs.values()):
                where.fail(key, f"{name!r} is neither a run of this study nor a run folder")
        comparisons.append(folders)
    return tuple(comparisons)


@dataclass
class _Where:
    """Says where in a study file something is wrong."""

    path: Path

    def fail(self, key: str, problem: str):
        raise StudyError(f"{self.path}: {key}: {problem}")


def _run_plugin(path: Path, plugin: str, where: _Where) -> None:
    """Run a Python file that registers what cells name (a ranker in `finprog.retrieval.RANKERS`, say)."""
    file = path.parent / plugin
    if not file.is_file():
        where.fail("plugins", f"{file} is not a file")
    runpy.run_path(str(file))


def _declared_cells(declared: dict, where: _Where) -> Iterator[tuple[str, str, str, dict]]:
    """(key, cell name, model, spec) for each model x technique, then each [cells.NAME]."""
    techniques, models = declared.get("techniques", {}), declared.get("models", [])
    if techniques and not models:
        where.fail("models", "is missing: [techniques.NAME] are crossed with models = [...]")
    for technique, spec in techniques.items():
        for model in models:
            yield f"techniques.{technique}", f"{Path(model).name}_{technique}", model, spec
    for name, spec in declared.get("cells", {}).items():
        if isinstance(spec, dict) and "cascade" in spec:
            yield f"cells.{name}", name, "", spec
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
            where.fail(f"cells.{name}", "needs model = \"...\" (a zoo name, hub id or folder), or cascade = [...]")
        yield f"cells.{name}", name, spec["model"], {k: v for k, v in spec.items() if k != "model"}


def _cell(path: Path, key: str, name: str, model: str, spec: dict, declared: dict, where: _Where) -> Cell:
    if not isinstance(spec, dict):
        where.fail(key, f"must be a table of options, got {type(spec).__name__}")
    runs_dir = Path(os.path.relpath(path.parent / RUNS))
    if "cascade" in spec:
        return _cascade_cell(path, key, name, spec, declared, runs_dir, where)
    if "train" not in spec:
        unknown = set(spec) & TRAINED_KEYS
        if unknown:
            where.fail(key, f"{', '.join(sorted(unknown))} belong to a trained cell, which needs train = {{...}}")
        solve = {**declared.get("solve", {}), **spec, "model": model}
        options = _options(SolveOptions, _relative_paths(path, solve), f"{key} (with [solve])", where)
        return _checked(Cell(name, model, {"solve": solve}, [Run(runs_dir / name, options)]), key, where)
    from finprog.training import TrainOptions

    unknown = set(spec) - TRAINED_KEYS
    if unknown:
        where.fail(key, f"{', '.join(sorted(unknown))}: a trained cell takes only train, test and export "
                        "(solve options go in test.DECODING)")
    if not isinstance(spec["train"], dict) or not isinstance(spec.get("test", {}), dict):
        where.fail(key, "train and test must be tables")
    train = {**declared.get("train", {}), **spec["train"], "model": model}
    options = _options(TrainOptions, _relative_paths(path, train), f"{key}.train (with [train])", where)
    export = spec.get("export")
    trained = Run(runs_dir / name, options, Path(_relative(path, "export", export)) if export else None)
    runs, tests = [trained], {}
    for decoding, settings in spec.get("test", {}).items():
        if not isinstance(settings, dict):
            where.fail(f"{key}.test.{decoding}", "must be a table of solve options")
        tests[decoding] = {**declared.get("solve", {}), **settings}
        runs.append(Run(runs_dir / f"{name}_test_{decoding}",
                        _test_options(trained, _relative_paths(path, tests[decoding]), f"{key}.test.{decoding}", where),
                        base=options.model))
    return _checked(Cell(name, model, {"train": train, "test": tests, "export": export}, runs), key, where)


def _cascade_cell(path: Path, key: str, name: str, spec: dict, declared: dict, runs_dir: Path,
                  where: _Where) -> Cell:
    """A cascade: `cascade = [models, cheapest first]`, `accept = "rule"`, and the stages' solve options."""
    from finprog.cascade import CascadeError, CascadeOptions

    models = spec["cascade"]
    if not isinstance(models, list) or not all(isinstance(model, str) for model in models):
        where.fail(f"{key}.cascade", "must be a list of models, cheapest first")
    settings = {**declared.get("solve", {}), **{k: v for k, v in spec.items() if k not in CASCADE_KEYS}}
    stages = [_options(SolveOptions, _relative_paths(path, {**settings, "model": model}), key, where)
              for model in models]
    try:
        options = CascadeOptions(stages, accept=spec.get("accept", ""))
    except CascadeError as error:
        where.fail(key, str(error))
    declaration = {"solve": {**settings, **{k: spec[k] for k in CASCADE_KEYS if k in spec}}}
    return _checked(Cell(name, "+".join(models), declaration,
                         runs=[Run(runs_dir / name, options)]), key, where)


def _test_options(trained: Run, settings: dict, key: str, where: _Where) -> SolveOptions:
    """How a trained model solves the test set: as its training evaluated it, with the decoding's settings.

    Until its training has finished (and its adapter is exported) its prompts come from the training options;
    then solve reads them from its run.json, as `finprog solve --model` does."""
    from finprog.training import solve_options

    model = str(trained.export or trained.out)
    if trained.done():
        return _options(SolveOptions, {**settings, "model": model}, key, where)
    inherited = {name: getattr(solve_options(trained.options), name) for name in
                 ("mode", "prompt", "shots", "max_prompt_tokens", "context", "top_k", "ranker", "technique")}
    # checked on the base model: the folder the training writes holds an unfinished run (or none) until then
    options = _options(SolveOptions, {"constrained": False, **inherited, **settings, "model": trained.options.model},
                       key, where)
    options.model = model
    return options


def _options(kind: type, values: dict, key: str, where: _Where):
    """`kind(**values)`, its data found; its own check names the option."""
    names = {f.name for f in fields(kind) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        where.fail(key, f"unknown option {unknown[0]!r}; {kind.__name__} takes {', '.join(sorted(names))}")
    try:
        options = kind(**values)
    except (ValueError, TypeError) as error:
        where.fail(key, str(error))
    for name, split in DATA_OPTIONS.items():
        named = getattr(options, name, None)
        for value in named if isinstance(named, list) else [named] if named else []:
            try:
                resolve_data(value, default_split=split)
            except DataValidationError as error:
                where.fail(f"{key}: {name}", str(error))
    return options


def _relative_paths(path: Path, values: dict) -> dict:
    return {name: _relative(path, name, value) for name, value in values.items()}


def _relative(path: Path, name: str, value):
    """A path option as the study file means it, given relative to the current folder: a value that starts with
    "." or names something beside the study file is relative to the file's folder; any other value (a zoo name,
    hub id, split name, absolute path) stays as it is. `export` is always a path."""
    if isinstance(value, list):
        return [_relative(path, name, item) for item in value]
    if name not in (*PATH_OPTIONS, "export") or not isinstance(value, str) or Path(value).is_absolute():
        return value
    beside = path.parent / value
    if name == "export" or value.startswith(".") or beside.exists():
        return os.path.relpath(beside)
    return value


def _checked(cell: Cell, key: str, where: _Where) -> Cell:
    """`cell`, its model found unless every run of it is finished (a finished run needs no model: a trained
    model's weights stay out of the repository)."""
    from finprog.models import ModelError, resolve_model

    if not all(run.finished() for run in cell.runs):
        first = cell.runs[0].options
        for options in getattr(first, "stages", [first]):
            try:
                resolve_model(options.model)
            except ModelError as error:
                where.fail(key, str(error))
    return cell


# ---------------------------------------------------------------- changed declarations


def comparable(name: str, value):
    """A declared or recorded option value as changes are judged: paths (an export folder too) by their last name."""
    paths = (*PATH_OPTIONS, "export")
    if name in paths and isinstance(value, str):
        return Path(value).name.removesuffix(".json")
    if name in paths and isinstance(value, list):
        return [comparable(name, item) for item in value]
    return value


def changed_options(cell: Cell, recorded: dict | None) -> list[str]:
    """The options whose declared value differs from what the cell ran with: its recorded declaration, or, for
    runs made before the study recorded one, each run's own config (only the declared options are compared).
    A training run's RUNTIME_OPTIONS may change in both cases: its run.json records when. A test decoding added
    to a trained cell is a new run of it, and an export added or moved writes the trained adapter there: no
    change."""
    from finprog.training import RUNTIME_OPTIONS

    if recorded is not None:
        free = {f"train.{name}" for name in RUNTIME_OPTIONS} | {"export"}
        added = {f"test.{decoding}" for decoding in cell.declaration.get("test", {})} - {
            f"test.{decoding}" for decoding in recorded.get("test", {})}  # a new solve of the model: no change
        return sorted(name for name in set(_differences(recorded, cell.declaration)) - free - added
                      if not _ran_with(cell, name))
    changed = set()
    for run in cell.runs:
        saved = RunRecord.load(run.out / RUN).data.get("config", {}) if (run.out / RUN).is_file() else None
        if saved is None:
            continue
        if run.cascades:  # the stages' options are recorded with each stage
            saved = {**saved["stages"][0], **saved}
        declared = _run_declaration(cell, run)
        free = ("model", *RUNTIME_OPTIONS) if run.trains else ("model",)
        changed |= {name for name, value in declared.items()
                    if name not in free and comparable(name, value) != comparable(name, saved.get(name))}
    return sorted(changed)


def _ran_with(cell: Cell, name: str) -> bool:
    """Whether a solve option whose declaration changed (`solve.top_k`, `test.program.top_k`) is declared as its
    finished run ran anyway: declaring a value the run had inherited asks for no new run."""
    section, _, option = name.rpartition(".")
    if section == "solve":
        run = cell.runs[0]
    elif section.startswith("test."):
        run = next((run for run in cell.runs if run.out.name == f"{cell.name}_test_{section[5:]}"), None)
    else:
        return False
    record = run.finished() if run and not run.cascades else None
    declared = _run_declaration(cell, run) if record else {}
    return option in declared and comparable(option, declared[option]) == comparable(option,
                                                                                      record.data["config"].get(option))


def _run_declaration(cell: Cell, run: Run) -> dict:
    if "solve" in cell.declaration:
        return cell.declaration["solve"]
    if run.trains:
        return cell.declaration["train"]
    decoding = run.out.name.removeprefix(f"{cell.name}_test_")
    return cell.declaration["test"][decoding]


def _differences(before: dict, after: dict, prefix: str = "") -> Iterator[str]:
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif comparable(key, a) != comparable(key, b):
            yield f"{prefix}{key}"


# ---------------------------------------------------------------- predicted FLOPs


def predict(cell: Cell) -> dict:
    """The cell's FLOPs from the analytic counter and the data's token counts, loading no model: training (every
    planned step as it will run), evaluation while training, and inference (every solve, with the gold
    programs' or answers' lengths as the new tokens)."""
    predicted = {"training": 0.0, "inference": 0.0}
    for run in cell.runs:
        saved = RunRecord.load(run.out / RUN).data if (run.out / RUN).is_file() else {}
        config = saved.get("config", {})
        ran_with = config["stages"][0] if "stages" in config else config  # a cascade records each stage's options
        cache = ran_with.get("prefix_cache", True)  # runs made before the cache ran without it
        if run.trains:
            steps, evaluations = _predict_training(run.options, saved.get("config_changes", []), cache)
            predicted["training"] += steps
            predicted["inference"] += evaluations
        else:  # a cascade's stages as if each answered every question: an upper bound
            for options in getattr(run.options, "stages", [run.options]):
                shape, tokenizer = _shape_and_tokenizer(run.base or options.model)
                predicted["inference"] += _predict_solve(options, cache, shape, tokenizer)
    return predicted


@functools.cache
def _shape_and_tokenizer(model: str):
    from finprog import models

    source = models.resolve_model(model)
    return flops.ModelShape.from_config(models.model_config(source)), models.load_tokenizer(source)


def _predict_solve(options: SolveOptions, prefix_cache: bool, shape: flops.ModelShape, tokenizer,
                   examples=None) -> float:
    """Inference FLOPs of solving `options.data` (or `examples`): each prompt as solve builds it (after the shared
    prefix, counted once, with the prefix cache), the gold reply's tokens, and the ranker's FLOPs."""
    from finprog.generation import shared_prefix_length
    from finprog.solve import exemplar_retriever, load_examples

    examples = load_examples(options)[2] if examples is None else examples
    retriever = exemplar_retriever(options, examples, progress=False)
    special = prompts.adds_special_tokens(tokenizer, options)
    prompt_ids = [tokenizer(prompts.build_prompt(example, tokenizer, options, retriever),
                            add_special_tokens=special)["input_ids"] for example in examples]
    cached = shared_prefix_length(prompt_ids) if prefix_cache else 0
    total = float(flops.prefix_flops(shape, cached)) if cached else 0.0
    for example, ids in zip(examples, prompt_ids):
        reply = _reply_tokens(example, options.mode, tokenizer, options.new_token_limit)
        total += options.samples * flops.generation_flops(shape, len(ids), reply, cached=cached)
        total += prompts.ranker_flops(example, options, retriever)
    return total


def _reply_tokens(example, mode: str, tokenizer, limit: int) -> int:
    """The gold reply's tokens and the one that stops it, at most the new-token limit."""
    from finprog.training import target_text

    text = target_text(example, mode) or ""
    return min(limit, len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1)


def _predict_training(options, changes: list[dict], prefix_cache: bool) -> tuple[float, float]:
    """(training FLOPs of every planned step, FLOPs of the evaluations while training).

    `changes` are the run's `config_changes`: options of how a step runs (micro-batches) that a
    resumed run changed from a step on; the steps before it are counted as they ran."""
    from finprog import training

    data = training.validate(options)
    tokenizer = _shape_and_tokenizer(options.model)[1]
    encoded = _encoded(options, data.train, tokenizer)
    steps = training.planned_steps(len(encoded), options)
    train_flops = sum(training.step_flops(data.shape, [encoded[i] for i in training.batch_indices(
        len(encoded), options, step, rank=0, world=1)], _as_run_at(options, changes, step)) for step in range(steps))
    points = (1 if options.eval_at_start else 0) + (steps // options.eval_every if options.eval_every else 0)
    points += 0 if options.eval_every and steps % options.eval_every == 0 else 1
    evaluation = _predict_solve(training.solve_options(options), prefix_cache, data.shape, tokenizer, data.eval)
    return float(train_flops), points * evaluation


_ENCODED: dict[str, list] = {}


def _encoded(options, examples: list, tokenizer) -> list:
    """The training examples as the run encodes them. The cells of a sweep differ only in how they train, so they
    share one encoding, kept by training files and prompt settings (the solve options of the run's curve)."""
    from finprog import training

    prompting = {name: value for name, value in vars(training.solve_options(options)).items()
                 if name not in ("technique", "batch_size", "dtype")}
    key = repr((tuple(str(path) for path in options.train), sorted(prompting.items())))
    if key not in _ENCODED:
        retriever = prompts.ExemplarRetriever(examples if options.shots else [])
        _ENCODED[key] = [training.encode(example, tokenizer, options, retriever) for example in examples]
    return _ENCODED[key]


def _as_run_at(options, changes: list[dict], step: int):
    """`options` as step `step` ran: the values a later resume changed, as they were before it."""
    for change in changes:
        if step < change["from_step"]:
            return replace(options, **{key: values[0] for key, values in change.items() if key != "from_step"})
    return options


def measured(cell: Cell) -> dict | None:
    """The FLOPs the cell's finished runs recorded, split as `predict` splits them; None until all finished."""
    records = [run.finished() for run in cell.runs]
    if not all(records):
        return None
    result = {"training": 0.0, "inference": 0.0}
    for record in records:
        cost = record.data["flops"]
        if record.data["kind"] == "train":  # its final evaluation is among its evaluations
            result["training"] += cost["training_total"]
            result["inference"] += cost["evaluation_total"]
        else:
            result["inference"] += cost["inference_total"]
    return result


# ---------------------------------------------------------------- the plan


@dataclass
class Planned:
    """One cell as `--dry-run` shows it."""

    cell: Cell
    status: str  # done, partial, pending, changed
    changed: list[str]
    predicted: dict | None
    measured: dict | None
    seconds: float | None  # estimated wall time of what is left


def plan(study: Study, predict_flops: bool = True) -> list[Planned]:
    """Every cell: done or not, what changed since it ran, predicted (pending cells, and done ones the record
    lacks) and measured FLOPs, and the wall time what is left should take at this machine's measured rate."""
    record = study.record()["cells"]
    rates = measured_rates(study)
    result = []
    for cell in study.cells.values():
        status = cell.status()
        saved = record.get(cell.name, {})
        changed = changed_options(cell, saved.get("declaration")) if status != "pending" else []
        predicted = saved.get("predicted")
        if predict_flops and (predicted is None or status != "done" or changed):
            predicted = predict(cell)
        seconds = None
        if status != "done" and predicted is not None:
            seconds = estimate_seconds(cell, predicted, rates)
        result.append(Planned(cell, "changed" if changed else status, changed, predicted, measured(cell), seconds))
    return result


def measured_rates(study: Study) -> dict[tuple[str, str], float]:
    """Seconds per FLOP of the study's finished runs on this machine, by (model, "training"|"inference") and by
    ("", kind) over all models: the median of its runs."""
    here, found = machine(), {}
    for cell in study.cells.values():
        for run in cell.runs:
            record = run.finished()
            if not record or not same_machine(str(record.data.get("machine")), here):
                continue
            cost, timing = record.data["flops"], record.data["timing"]
            pairs = [("inference", timing.get("seconds_total"), cost.get("inference_total"))]
            if record.data["kind"] == "train":
                pairs.append(("training", timing.get("training_seconds"), cost.get("training_total")))
            for kind, seconds, total in pairs:
                if seconds and total:
                    for key in ((cell.model, kind), ("", kind)):
                        found.setdefault(key, []).append(seconds / total)
    return {key: statistics.median(values) for key, values in found.items()}


def estimate_seconds(cell: Cell, predicted: dict, rates: dict) -> float | None:
    total = 0.0
    for kind, cost in predicted.items():
        rate = rates.get((cell.model, kind)) or rates.get(("", kind))
        if cost and rate is None:
            return None
        total += cost * (rate or 0.0)
    return total


def plan_summary(planned: list[Planned]) -> dict:
    """The plan for machines (what `--dry-run --json` prints)."""
    return {"cells": [{"cell": item.cell.name, "status": item.status, "changed": item.changed,
                       "predicted": item.predicted, "measured": item.measured, "seconds_left": item.seconds}
                      for item in planned]}


def format_plan(study: Study, planned: list[Planned]) -> str:
    """The --dry-run table: each cell, its status, its FLOPs predicted and measured, the time left."""
    from finprog.report import aligned_table, format_flops

    rows = []
    for item in planned:
        predicted = sum(item.predicted.values()) if item.predicted else None
        done = sum(item.measured.values()) if item.measured else None
        rows.append([
            item.cell.name, item.status + (f" ({', '.join(item.changed)})" if item.changed else ""),
            format_flops(predicted) if predicted is not None else "-", format_flops(done) if done else "-",
            f"{done / predicted:.4f}" if done and predicted else "-",
            "-" if item.status == "done" else _duration(item.seconds),
        ])
    lines = [f"study {study.name} ({study.path}): {len(planned)} cells", aligned_table(
        ["cell", "status", "predicted FLOPs", "measured FLOPs", "measured/predicted", "time left"], rows)]
    left = [item.seconds for item in planned if item.status != "done"]
    if left:
        known = sum(s for s in left if s is not None)
        unknown = sum(s is None for s in left)
        timed = f", about {_duration(known)} at this machine's measured rate" if unknown < len(left) else ""
        untimed = f"; {unknown} with no measured rate here yet" if unknown else ""
        lines.append(f"left: {len(left)} cell(s){timed}{untimed}")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no rate measured here)"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{math.ceil(seconds / 60)} min"


# ---------------------------------------------------------------- running


def run_cell(study_path: str, name: str, text: str | None = None) -> None:
    """Run one cell's unfinished runs in order (in the process this is called in), as declared in `text` (the study
    file as its study read it; by default, as the file is now); the entry point of a job."""
    study = load_study(study_path, text)
    for run in study.cells[name].runs:
        run.complete()


def check_rerun(study: Study, rerun: Sequence[str]) -> None:
    """Every name `--rerun` gives is a cell of `study` (StudyError, before anything runs or is removed)."""
    unknown = sorted(set(rerun) - set(study.cells))
    if unknown:
        raise StudyError(f"{study.path}: --rerun {unknown[0]!r} is not a cell of this study; cells: "
                         f"{', '.join(study.cells)}")


def run_study(path: str | Path, executor: str = "local", jobs: int = 1, rerun: tuple[str, ...] = (),
              report_only: bool = False, slurm: dict | None = None,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict:
    """`finprog study`: run every unfinished cell, then write the report; returns what was done and the report."""
    study = load_study(path)
    if executor not in EXECUTORS:
        raise StudyError(f"--executor {executor!r}: choose {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise StudyError(f"--jobs must be at least 1, got {jobs}")
    check_rerun(study, rerun)
    record = study.record()
    for name in rerun:
        for run in study.cells[name].runs:
            shutil.rmtree(run.out, ignore_errors=True)
        record["cells"].pop(name, None)
    planned = plan(study, predict_flops=not report_only)
    changed = [item for item in planned if item.changed]
    if changed:
        first = changed[0]
        raise StudyError(f"{study.path}: cell {first.cell.name!r} was run with other options "
                         f"({', '.join(first.changed)}); restore them, or --rerun {first.cell.name}")
    todo = [] if report_only else [item.cell for item in planned if item.status != "done"]
    for item in planned:  # what each cell was declared as, and its prediction, before it runs
        entry = record["cells"].setdefault(item.cell.name, {})
        entry["declaration"] = item.cell.declaration
        if item.predicted is not None:
            entry["predicted"] = item.predicted
    study.save_record(record)
    failed = _execute(study, todo, executor, jobs, slurm or {}, say)
    for cell in study.cells.values():
        done = measured(cell)
        if done:
            record["cells"][cell.name]["measured"] = done
    study.save_record(record)
    result = {"ran": [cell.name for cell in todo], "failed": failed}
    if any(cell.status() == "done" for cell in study.cells.values()):
        result["report"] = [str(file) for file in write_study_report(study)]
        result["cards"] = [str(file) for file in write_model_cards(study)]
    return result


def _execute(study: Study, todo: list[Cell], executor: str, jobs: int, slurm: dict,
             say: Callable[[str], None]) -> list[str]:
    """Each cell in a process of its own; returns the cells that failed (the others still run)."""
    if not todo:
        return []
    if executor == "local":
        return _run_locally(study, todo, jobs, say)
    import submitit

    folder = study.folder / "jobs"
    if executor == "slurm":
        engine = submitit.AutoExecutor(folder=folder, cluster="slurm")
        engine.update_parameters(**{"slurm_array_parallelism": jobs, **slurm})
    else:
        engine = submitit.LocalExecutor(folder=folder)
        engine.update_parameters(timeout_min=slurm.get("timeout_min", 24 * 60))
    submitted = {}
    for cell in todo:
        submitted[cell.name] = engine.submit(run_cell, str(study.path), cell.name, study.text)
        say(f"{cell.name}: job {submitted[cell.name].job_id}")
    return [name for name, job in submitted.items() if _ended(name, job, say) != "done"]


def _run_locally(study: Study, todo: list[Cell], jobs: int, say: Callable[[str], None]) -> list[str]:
    """At most `jobs` cells at a time, each in a new process. A cell starts only when another has ended, so after
    a Ctrl-C or a cell whose process was killed, no further cell starts."""
    waiting, running, failed = list(todo), {}, []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        while waiting or running:
            while waiting and len(running) < jobs:
                cell = waiting.pop(0)
                running[pool.submit(run_cell, str(study.path), cell.name, study.text)] = cell.name
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                ended = _ended(name, future, say)
                if ended != "done":
                    failed.append(name)
                if ended == "killed":
                    for cell in waiting:
                        say(f"{cell.name}: not started")
                    failed += [cell.name for cell in waiting]
                    waiting = []
    return failed


def _ended(name: str, job, say: Callable[[str], None]) -> str:
    """How a cell's job ended, said in one line: "done", "failed" (its own error) or "killed" (its process)."""
    try:
        job.result()
    except BrokenProcessPool:
        say(f"{name}: not finished: its process was killed (a signal, or out of memory); no further cell starts, "
            "and running the study again resumes it")
        return "killed"
    except Exception as error:  # the cell's own error, reported; the other cells go on
        say(f"{name}: failed: {str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}")
        return "failed"
    say(f"{name}: done")
    return "done"


def write_model_cards(study: Study) -> list[Path]:
    """The model card of each adapter the study exported, with its cell's test runs and every other finished solve
    of it in the study."""
    solves = [record for cell in study.cells.values() for run in cell.runs
              if not run.trains and not run.cascades and (record := run.finished())]
    cards = []
    for cell in study.cells.values():
        trained = cell.runs[0]
        if not (trained.export and trained.done()):
            continue
        own = {run.out.name for run in cell.runs}
        tests = [run.finished() for run in cell.runs[1:]] + [
            record for record in solves
            if record.folder.name not in own and model_folder(record.data["config"]["model"]).resolve()
            == trained.export.resolve()]
        cards.append(write_model_card(trained.export, f"finprog study {shown(study.path)}  # cell {cell.name}",
                                      [record.data for record in tests if record]))
    return cards


def write_study_report(study: Study) -> list[Path]:
    """report.md, report.png and report.json of the study's finished runs, and paired.txt of its declared
    comparisons, in its folder."""
    from finprog.report import report

    result, files = report([study.folder / RUNS], study.targets, study.questions, study.metric, out=study.folder)
    path = study.folder / "report.json"
    replace_file(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return [*files, path, *write_comparisons(study)]


def write_comparisons(study: Study) -> list[Path]:
    """paired.txt: each declared comparison whose runs have all finished, as `finprog compare` prints it (training
    runs step by step too); the others wait, named, with training runs' curves as far as they have come."""
    from finprog.compare import compare_curves, compare_runs, format_comparison, format_steps

    if not study.comparisons:
        return []
    parts = [header()]
    for folders in study.comparisons:
        parts += ["", "finprog compare " + " ".join(str(shown(folder)) for folder in folders)]
        waiting = [folder.name for folder in folders if not finished_run(folder)]
        if not waiting:
            parts.append(format_comparison(compare_runs(list(folders))))
            continue
        parts.append(f"  waiting for {', '.join(waiting)} to finish")
        started = [RunRecord.load(folder) for folder in folders if (folder / RUN).is_file()]
        if len(started) == len(folders) and all(record.get("kind") == "train" for record in started):
            curves = compare_curves(list(folders))
            parts += format_steps(curves) if curves["steps"] else []
    path = study.folder / PAIRED
    replace_file(path, "\n".join(parts) + "\n")
    return [path]
