"""Fine-tuning: LoRA, QLoRA and full fine-tuning on FinQA, evaluated as it trains, with its FLOPs counted per step.

`train` is one explicit loop (`_loop`, no HF Trainer) over an explicit state (`TrainState`,
what a checkpoint saves). A training example is the prompt `finprog solve` would give it
followed by the gold program (program mode) or the gold value (direct mode), with the loss
on the target tokens only. Every step's FLOPs come from
`flops.training_step_flops` for the batch as it ran (each micro-batch's padded length and
size), summed over processes. Every `eval_every` steps the model in memory is evaluated the way
`finprog solve` evaluates one (same prompts, generation and scoring), and a row is added
to the learning curve. Training stops at the target accuracy, at the FLOPs budget, or at
the step/epoch limit; the last step is always evaluated.

The run folder (`out`):
- `run.json`: kind "train": config, model, eval_set, curve, final metrics, FLOPs, target, timing, versions
- `predictions.jsonl`: the final evaluation, one line per example, as `finprog solve` writes it
- the trained model: `adapter_config.json` + adapter weights (lora, qlora) or `config.json` + weights (full),
  and the tokenizer, so `finprog.models.load_model(out)` and `finprog solve --model out` load it
- `evals/step-NNNNNN.jsonl`: each evaluation's predictions
- `checkpoint.pt` while training: trainable weights, optimizer, step, FLOPs, curve (what `resume` continues from)
- `best.pt` while training with `keep_best`: the trainable weights of the best evaluation so far

Data parallel through Accelerate: started by `accelerate launch --multi_gpu --num_processes N`
or `torchrun --nproc_per_node N` (on a machine without CUDA the processes train on CPU and
talk over gloo), each process trains on its shard of every batch, and the main process
evaluates and writes; a step's FLOPs are the sum over processes.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from finprog import flops, models, prompts, retrieval
from finprog.data import Example, first_without_page, load_finqa, resolve_data
from finprog.errors import FinprogError, check_types
from finprog.evaluation import METRICS, gold_value, metrics
from finprog.models import DTYPES
from finprog.runs import (PREDICTIONS, RunError, RunRecord, RunRecorder, eval_set, evaluation_file, open_run,
                          read_rows, write_rows)
from finprog.solve import SolveOptions, flop_totals, scored_rows

METHODS = flops.METHODS
DEFAULT_LR = {"full": 1e-5, "lora": 2e-4, "qlora": 2e-4}
LR_SCHEDULES = ("constant", "linear", "cosine")
DEFAULT_MAX_PROMPT_TOKENS = 1024
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
IGNORE_INDEX = -100  # label of a token that has no loss (prompt and padding)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RUNTIME_OPTIONS = ("micro_batch_size", "gradient_checkpointing", "checkpoint_every")
"""Options that change how a step runs (memory, time, FLOPs) or when it is saved, but not the update: a resumed run
(and a study's cell) may change them."""


class TrainingError(FinprogError, ValueError):
    """A training run was asked for with options or data that cannot work; raised before any model is loaded."""


@dataclass
class TrainOptions(prompts.PromptOptions):
    """Everything that shapes a training run; saved as `config` in run.json (a resumed run must match it but
    for RUNTIME_OPTIONS). The prompt options (`prompts.PromptOptions`) are what `finprog solve` builds, the same
    at training and evaluation; here bare prompts, no exemplars and a cut at 1,024 tokens by default."""

    model: str  # zoo name, hub id or folder (a str or a Path, as every path here)
    train: str | list[str]  # FinQA file(s) or split name(s), concatenated in order
    eval: str  # FinQA file or split name, no id shared with `train`
    method: str = "lora"  # lora | qlora (4-bit NF4 base + LoRA) | full
    prompt: str | None = field(default="bare", kw_only=True)  # instructed: solve's prompt for untrained models
    shots: int | None = field(default=0, kw_only=True)  # instructed: exemplars from the training file
    max_prompt_tokens: int | None = field(default=DEFAULT_MAX_PROMPT_TOKENS, kw_only=True)  # None: no cut
    # when to stop (the first that happens); without max_steps and epochs, one epoch
    max_steps: int | None = None
    epochs: float | None = None
    budget_flops: float | None = None  # training FLOPs; a step that would exceed it is not run
    target: float | None = None  # EmAcc fraction on the eval set
    target_metric: str = "exact"
    keep_best: bool = False  # the run keeps the weights of its best evaluation (by target_metric), not the last
    # evaluation
    eval_every: int | None = None  # steps; None: only at the start and the end
    eval_at_start: bool = True  # a curve point at step 0: the untrained model with the same prompts
    eval_limit: int | None = None  # only the eval file's first N examples
    checkpoint_every: int | None = None  # steps between checkpoints besides those at evaluations
    eval_batch_size: int | None = None  # None: as solve (8 on a GPU, 1 on a CPU)
    max_new_tokens: int | None = None  # default: solve's (96 program, 24 direct)
    # optimisation: AdamW, linear warmup, then a constant rate (a curve that does not depend on the step limit)
    # or one that decays to 0 at the step limit
    lr: float | None = None  # default: DEFAULT_LR[method]
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant, linear or cosine
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4  # sequences per step and process
    # how a step runs, not what it computes: a resumed run may change these (to fit memory)
    micro_batch_size: int | None = None  # sequences per forward and backward, gradients summed; None: the batch
    gradient_checkpointing: bool = False
    # LoRA and QLoRA adapters
    lora_r: int = 8
    lora_alpha: int | None = None  # default: 2 x lora_r
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"  # comma-separated projections, or all-linear
    seed: int = 0
    dtype: str = "auto"  # bf16 where the hardware computes it natively, else fp32 (models.resolve_dtype)
    technique: str = field(init=False)  # the method: the name the report groups runs by
    quant: str = field(init=False)  # 4bit for qlora, else none

    def __post_init__(self):
        def fail(message: str) -> None:
            raise TrainingError(message)

        check_types(self, TrainingError, paths=("model", "train", "eval"))
        self.train = [self.train] if isinstance(self.train, str) else self.train

        if self.method not in METHODS:
            fail(f"unknown training method {self.method!r}; choose one of {', '.join(METHODS)}")
        self.check_prompt(TrainingError)
        if self.shots and self.mode == "direct":
            fail("--shots applies to program mode only (the direct prompt has no exemplars)")
        if self.dtype not in ("auto", *DTYPES):
            fail(f"unknown dtype {self.dtype!r}; use auto, {', '.join(DTYPES)}")
        if self.method == "full" and self.dtype == "fp16":
            fail("--method full with --dtype fp16 would round most weight updates away; use bf16 (which trains fp32 "
                 "weights in mixed precision) or fp32")
        if self.lr_schedule not in LR_SCHEDULES:
            fail(f"unknown learning-rate schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.target_metric not in METRICS:
            fail(f"unknown target metric {self.target_metric!r}; choose {' or '.join(METRICS)}")
        if self.max_steps is not None and self.epochs is not None:
            fail("give --max-steps or --epochs, not both")
        if self.target is not None and not 0 < self.target <= 1:
            fail(f"--target is an accuracy fraction in (0, 1], got {self.target}")
        for name in ("max_steps", "eval_every", "checkpoint_every", "eval_limit", "eval_batch_size", "max_new_tokens",
                     "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("batch_size", "lora_r"):
            if getattr(self, name) < 1:
                fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "budget_flops", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                fail(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            fail(f"--micro-batch-size ({self.micro_batch_size}) cannot exceed --batch-size ({self.batch_size})")
        if not 0 <= self.lora_dropout < 1:
            fail(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            fail("--warmup-steps and --weight-decay cannot be negative, --max-grad-norm must be positive")
        try:
            flops.lora_targets(self.lora_targets)
        except ValueError as error:
            fail(f"--lora-targets: {error}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        self.technique = self.method
        self.quant = "4bit" if self.method == "qlora" else "none"


@dataclass
class TrainData:
    """The checked inputs of a run: what it trains and is evaluated on, its model (resolved once) and the model's shape."""

    train_paths: list[Path]
    eval_path: Path
    train: list[Example]
    eval: list[Example]
    source: models.ModelSource | None = None
    shape: flops.ModelShape | None = None


# ---------------------------------------------------------------- checks before any model loads


def validate(options: TrainOptions) -> TrainData:
    """Check the data, the model name and the budget; loads no model (with a budget: its config and tokenizer).

    Raises TrainingError (or the data and model modules' typed errors) with what to change.
    """
    train_paths = [resolve_data(name, default_split="train")[0] for name in options.train]
    eval_path, _ = resolve_data(options.eval)
    eval_file = load_finqa(eval_path)
    data = TrainData(train_paths, eval_path, [e for path in train_paths for e in load_finqa(path)],
                     eval_file[: options.eval_limit])
    _check_examples(options, data, {e.id for e in eval_file})
    data.source, data.shape = _check_model(options)
    if options.budget_flops is not None:
        _check_budget(options, data)
    return data


def _check_examples(options: TrainOptions, data: TrainData, eval_ids: set[str]) -> None:
    """Every training record is trainable in this mode, once; no id is shared with the whole eval file."""
    train_name = " + ".join(map(str, data.train_paths))
    if not data.train or not data.eval:
        raise TrainingError(f"{train_name if not data.train else data.eval_path} holds no examples")
    repeated = sorted(i for i, n in Counter(e.id for e in data.train).items() if n > 1)
    if repeated:
        raise TrainingError(f"{train_name}: {len(repeated)} id(s) occur more than once (first: "
                            f"{', '.join(repeated[:3])}); give each training file once")
    untrainable = [e.id for e in data.train if target_text(e, options.mode) is None]
    if untrainable:
        what = "gold program" if options.mode == "program" else "gold answer (exe_ans, program or answer)"
        advice = ("use a FinQA file with programs, or --mode direct" if options.mode == "program"
                  else "remove those records")
        raise TrainingError(
            f"{train_name}: {len(untrainable)} of {len(data.train)} training records have no {what} "
            f"(first: {', '.join(untrainable[:3])}); {options.mode} mode trains on it: {advice}"
        )
    pageless = first_without_page(data.train)
    if pageless and options.mode == "program":
        raise TrainingError(f"{train_name}: record {pageless!r} has no page (no text, no table), so a program "
                            "prompt has no numbers to use; train on a FinQA file with pages (such as train_2077)")
    if options.context == "gold":
        try:
            retrieval.check_gold(data.train, train_name)
            retrieval.check_gold(data.eval, str(data.eval_path))
        except retrieval.RetrievalError as error:
            raise TrainingError(str(error)) from None
    shared = sorted({e.id for e in data.train} & eval_ids)
    if shared:
        raise TrainingError(
            f"the eval file {data.eval_path} shares {len(shared)} id(s) with the training data {train_name} "
            f"(first: {', '.join(shared[:3])}); evaluate on questions the model is not trained on"
        )


def _check_model(options: TrainOptions) -> tuple[models.ModelSource, flops.ModelShape]:
    """The model resolved, its dtype and quantization possible here, its FLOPs countable, its LoRA targets present."""
    source = models.resolve_model(options.model)
    if source.kind == "adapter" and options.method != "full":
        raise TrainingError(
            f"{options.model} is a PEFT adapter; a new {options.method} adapter needs a base model or checkpoint "
            "to name as its base: merge the adapter into a checkpoint first, or use --method full"
        )
    device = models.resolve_device("auto")
    models.resolve_dtype(options.dtype, device)
    if options.method == "qlora":
        import torch

        models.check_bitsandbytes("4bit", device, torch.bfloat16)
    shape = flops.ModelShape.from_config(models.model_config(source))  # FLOPs that cannot be counted fail here
    if options.method != "full":
        try:
            flops.lora_targets(options.lora_targets, shape)
        except ValueError as error:
            raise TrainingError(f"--lora-targets: {error}") from None
    return source, shape


def _check_budget(options: TrainOptions, data: TrainData) -> None:
    """The budget must pay for the first step (on one process; more processes only make it dearer)."""
    tokenizer = models.load_tokenizer(data.source)
    retriever = prompts.ExemplarRetriever(data.train if options.shots else [])
    first = [encode(data.train[i], tokenizer, options, retriever)
             for i in batch_indices(len(data.train), options, step=0, rank=0, world=1)]
    need = step_flops(data.shape, first, options)
    if options.budget_flops < need:
        raise TrainingError(
            f"--budget-flops {options.budget_flops:.3g} does not pay for one training step: the first one "
            f"({len(first)} sequences of {max(e.length for e in first)} tokens, {options.method}) takes {need:.3g} "
            "FLOPs; raise the budget, or lower --batch-size or --max-prompt-tokens"
        )


# ---------------------------------------------------------------- prompts and targets

def target_text(example: Example, mode: str) -> str | None:
    """What the model learns to reply: the gold program, or (direct) the gold value as exact match reads it.

    Direct mode trains on the executed value (`exe_ans` written out, 0.13636 rather than the
    answer string "13.6%"), because exact match scores against it; the answer string is the
    fallback for a record with neither exe_ans nor program. None when there is nothing to learn.
    """
    if mode == "program":
        return example.program or None
    value = gold_value(example)
    if isinstance(value, float):
        return f"{value:.5f}".rstrip("0").rstrip(".")
    return value or example.answer or None


@dataclass(frozen=True)
class Encoded:
    """One training example as token ids: the prompt (no loss) and the reply (loss)."""

    prompt: list[int]
    target: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.target)


def encode(example: Example, tokenizer, options, retriever: prompts.ExemplarRetriever) -> Encoded:
    """The prompt's ids exactly as generation tokenizes it, and the reply's ids.

    With a chat template the reply is what the template renders for an assistant turn
    (its end-of-turn token included); without one it is the target (after a space in
    program mode, since the prompt ends with "Program:") and the EOS token.
    """
    user, _ = prompts.user_turn(example, tokenizer, options, retriever)
    prompt = prompts.chat_prompt(tokenizer, user, options)
    target = target_text(example, options.mode)
    special = prompts.adds_special_tokens(tokenizer, options)
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    if not special:
        full = prompts.apply_chat_template(tokenizer, user, bare=options.prompt == "bare", reply=target)
        if full.startswith(prompt):
            return Encoded(prompt_ids, tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])
    elif options.mode == "program":
        target = " " + target
    return Encoded(prompt_ids, tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])


# ---------------------------------------------------------------- batches and FLOPs


def steps_per_epoch(n: int, options: TrainOptions, world: int = 1) -> int:
    return math.ceil(math.ceil(n / world) / options.batch_size)


def planned_steps(n: int, options: TrainOptions, world: int = 1) -> int:
    """The step limit: max_steps, or epochs (default 1) of the training set."""
    if options.max_steps is not None:
        return options.max_steps
    return max(1, math.ceil((options.epochs or 1) * steps_per_epoch(n, options, world)))


def batch_indices(n: int, options: TrainOptions, step: int, rank: int, world: int) -> list[int]:
    """Which of `n` training examples process `rank` of `world` trains on at `step` (0-based).

    Each epoch is a shuffle seeded by (seed, epoch), so a step's batch never depends on
    what ran before it; the order is padded by wrapping around to a multiple of `world`,
    and process `rank` takes every world-th example of it.
    """
    per_process = math.ceil(n / world)
    epoch, index = divmod(step, steps_per_epoch(n, options, world))
    order = list(range(n))
    random.Random(f"{options.seed}-{epoch}").shuffle(order)
    order += order[: per_process * world - n]
    shard = order[rank::world]
    return shard[index * options.batch_size : (index + 1) * options.batch_size]


def micro_batches(batch: Sequence[Encoded], options: TrainOptions) -> list[list[Encoded]]:
    """The batch as its forward and backward passes run: sorted by length (less padding) and cut into
    `micro_batch_size` sequences (the whole batch without it)."""
    ordered = sorted(batch, key=lambda e: e.length)
    size = options.micro_batch_size or len(ordered)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def step_flops(shape: flops.ModelShape, batch: Sequence[Encoded], options: TrainOptions) -> int:
    """One process's step as it runs: each micro-batch padded to its longest sequence, logits over its reply
    window."""
    return sum(flops.training_step_flops(
        shape, max(e.length for e in micro), len(micro), method=options.method, lora_rank=options.lora_r,
        targets=options.lora_targets, gradient_checkpointing=options.gradient_checkpointing,
        logits=reply_window(micro) + 1,
    ) for micro in micro_batches(batch, options))


def reply_window(batch: Sequence[Encoded]) -> int:
    """The longest reply of the batch: the last positions that carry a loss once the batch is left-padded."""
    return max(len(e.target) for e in batch)


def collate(batch: Sequence[Encoded], pad_id: int, device) -> dict:
    """Left-padded input ids, attention mask and position ids, and the labels of the reply window (the last
    `reply_window` tokens: each example's reply ids, IGNORE_INDEX over the prompt tokens a shorter reply leaves)."""
    import torch

    width, window = max(e.length for e in batch), reply_window(batch)
    ids, mask, positions, labels = [], [], [], []
    for e in batch:
        padding = width - e.length
        ids.append([pad_id] * padding + e.prompt + e.target)
        mask.append([0] * padding + [1] * e.length)
        positions.append([0] * padding + list(range(e.length)))
        labels.append([IGNORE_INDEX] * (window - len(e.target)) + e.target)
    return {name: torch.tensor(rows, device=device) for name, rows in
            (("input_ids", ids), ("attention_mask", mask), ("position_ids", positions), ("labels", labels))}


def reply_loss(model, inputs: dict, reduction: str = "mean"):
    """Cross-entropy of the reply tokens (their mean, or with "sum" their sum), with the LM head run only where
    a reply token is predicted.

    The batch is left-padded, so every reply ends at the last position and the logits of the
    last `window + 1` positions (`logits_to_keep`) predict all of them; the prompt's
    positions, most of every sequence, never reach the LM head, a large share of a small
    model's FLOPs and memory (151,936 x 896 multiply-adds per token for qwen2.5-coder-0.5b).
    """
    import torch

    labels = inputs["labels"]
    model_inputs = {name: value for name, value in inputs.items() if name != "labels"}
    logits = model(**model_inputs, logits_to_keep=labels.shape[1] + 1, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                             reduction=reduction)


# ---------------------------------------------------------------- evaluation


def evaluate_model(model, tokenizer, examples: Sequence[Example], options: TrainOptions,
                   retriever: prompts.ExemplarRetriever, progress: bool = False,
                   shape: flops.ModelShape | None = None) -> tuple[list[dict], dict, dict]:
    """`finprog solve` on the model in memory, with the prompts training used: (rows, metrics, FLOP totals)."""
    solving = solve_options(options)
    rows = list(scored_rows(model, tokenizer, list(examples), solving, retriever, progress, shape))
    order = {e.id: i for i, e in enumerate(examples)}
    rows.sort(key=lambda row: order[row["id"]])
    return rows, metrics(rows, options.mode), flop_totals(rows, training_flops=0.0)


def solve_options(options: TrainOptions) -> SolveOptions:
    """The `finprog solve` settings that evaluate a model as this training run prompts it (greedy, one sample)."""
    return SolveOptions(
        model=options.model, mode=options.mode, prompt=options.prompt, shots=options.shots,
        exemplar_choice=options.exemplar_choice,
        chat_template=options.chat_template, max_prompt_tokens=options.max_prompt_tokens,
        context=options.context, top_k=options.top_k, ranker=options.ranker, batch_size=options.eval_batch_size,
        max_new_tokens=options.max_new_tokens, dtype=options.dtype,
        technique=options.method, constrained=False,  # the curve measures the programs the model writes itself
    )


# ---------------------------------------------------------------- the run


@dataclass
class TrainState:
    """Where the loop stands: what a checkpoint saves and a resumed run continues from."""

    step: int = 0
    train_flops: int = 0  # summed over processes
    tokens: int = 0  # real (unpadded) tokens trained on, summed over processes
    curve: list[dict] = field(default_factory=list)
    target: dict | None = None  # the first curve point at the target: step, tokens, train_flops, the metric
    losses: list[float] = field(default_factory=list)  # the training losses since the last evaluation
    training_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    final: dict | None = None  # the last evaluation: metrics, FLOP totals, generation seconds
    best: dict | None = None  # with keep_best, the best evaluation so far: its step and its `final`


@dataclass
class Setup:
    """What the loop works with, built once per run."""

    options: TrainOptions
    out: Path
    accelerator: Any
    model: Any  # prepared by the accelerator
    optimizer: Any
    trainable: list  # the parameters AdamW updates
    tokenizer: Any
    shape: flops.ModelShape
    encoded: list[Encoded]  # the training examples, in file order
    eval: list[Example]
    retriever: prompts.ExemplarRetriever  # exemplars for training and evaluation prompts
    recorder: RunRecorder | None  # the main process's; None on the others
    say: Callable[[str], None]
    compute_dtype: Any = None  # full fine-tuning in mixed precision: the dtype it computes and answers in (bf16)


def train(options: TrainOptions, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train, evaluate as it goes, save the model and the run record in `out`; returns run.json.

    With `resume`, continues from `out/checkpoint.pt` (steps after it are run again, and
    their FLOPs counted once); a finished run is returned as it is.
    """
    out = Path(out)
    data = validate(options)
    config = {**asdict(options), "train": list(map(str, data.train_paths)), "eval": str(data.eval_path)}

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=models.resolve_device("auto").type == "cpu")  # cpu: processes talk over gloo
    saved = open_run(out, "train", config, resume, RUNTIME_OPTIONS)
    finished = saved.data if saved and saved.status == "finished" else None
    accelerator.wait_for_everyone()  # every process has read the folder before the main one writes to it
    if finished:
        return finished
    progress_so_far = {k: saved.data[k] for k in ("curve", "checkpoint_step") if saved and k in saved.data}
    record = {"kind": "train", "config": config, **_config_changes(saved, config), **progress_so_far,
              "eval_set": eval_set(data.eval_path.stem, [e.id for e in data.eval])}
    recorder = RunRecorder(out, record, resume, RUNTIME_OPTIONS) if accelerator.is_main_process else None
    with recorder or nullcontext():
        setup, state = _set_up(options, data, out, accelerator, recorder, progress, resume)
        stop = _loop(setup, state, progress)
        setup.say(f"stopped: {_STOP_REASONS[stop]}")
        if recorder:
            kept = _keep_best(setup, state) if options.keep_best else state.step
            _save_model(out, _as_trained(setup, accelerator.unwrap_model(setup.model)), setup.tokenizer)
            write_rows(out / PREDICTIONS, read_rows(evaluation_file(out, kept)))
            recorder.finish(**_final_record(record, state, options, stop, kept))
            for name in (CHECKPOINT, BEST):
                (out / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return RunRecord.load(out).data


def _config_changes(saved: RunRecord | None, config: dict) -> dict:
    """`config_changes` for run.json: the earlier resumes' and this one's changes of RUNTIME_OPTIONS, each
    with the step it resumes from (the last checkpoint's)."""
    if saved is None:
        return {}
    changes = list(saved.data.get("config_changes", []))
    changed = {k: [saved.data["config"].get(k), config[k]] for k in RUNTIME_OPTIONS
               if saved.data["config"].get(k) != config[k]}
    if changed:
        curve = saved.data.get("curve") or [{"step": 0}]
        changes.append({"from_step": saved.data.get("checkpoint_step", curve[-1]["step"]), **changed})
    return {"config_changes": changes} if changes else {}


def _set_up(options: TrainOptions, data: TrainData, out: Path, accelerator, recorder: RunRecorder | None,
            progress: bool, resume: bool) -> tuple[Setup, TrainState]:
    """Load the model and make it trainable, restore a checkpoint, record the model, encode the training examples."""
    import torch

    started = time.perf_counter()
    saved = _read_saved(out / CHECKPOINT, ("trainable", "optimizer", "state")) if resume else None
    loaded, model = trainable_model(options, data, str(accelerator.device))
    mixed = mixed_precision(options, accelerator.device)
    compute = mixed or loaded.dtype
    if saved:
        _load_trainable(model, saved["trainable"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    # one kernel per tensor: full fine-tuning's update of 0.63B fp32 weights takes about a sixth of the default
    # loop's time on a CPU (evals/bench/optimizer_step.txt)
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay, fused=True)
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
    model, optimizer = accelerator.prepare(model, optimizer)
    counts = flops.parameter_counts(data.shape, options.method, options.lora_r, options.lora_targets)
    if recorder:
        recorder.update(
            model={"name": options.model, "source": data.source.kind, "dtype": str(loaded.dtype),
                   "compute_dtype": str(compute),
                   "device": str(loaded.device), "params": counts["total"], "trainable": counts["trainable"]},
            timing={"model_load_seconds": time.perf_counter() - started},
        )
    retriever = prompts.ExemplarRetriever(data.train if options.shots else [])
    say = _printer(progress and accelerator.is_main_process)
    note = prompts.bare_without_template_note(loaded.tokenizer, options)
    if note:
        say(note)
    setup = Setup(options, out, accelerator, model, optimizer, trainable, loaded.tokenizer, data.shape,
                  [encode(e, loaded.tokenizer, options, retriever) for e in data.train], data.eval, retriever,
                  recorder, say, mixed)
    world = accelerator.num_processes
    setup.say(f"{options.method} on {options.model}: {len(setup.encoded)} training examples, {len(data.eval)} eval "
              f"examples, {planned_steps(len(setup.encoded), options, world)} steps of {options.batch_size} x "
              f"{world} sequences, {counts['trainable'] / 1e6:.3g}M of {counts['total'] / 1e6:.3g}M parameters trained")
    state = TrainState(**saved["state"]) if saved else TrainState()
    if recorder and resume:  # the curve it goes on from: none where no checkpoint survived
        recorder.update(curve=state.curve, checkpoint_step=state.step if saved else None)
    return setup, state


def _loop(setup: Setup, state: TrainState, progress: bool) -> str:
    """Step until the target, the budget or the step limit (the stop reason), evaluating every eval_every steps
    and after the last step."""
    from tqdm.auto import tqdm

    options, accelerator = setup.options, setup.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    total_steps = planned_steps(len(setup.encoded), options, world)
    _reseed(options.seed, state.step, rank)
    stop = "target" if state.target else None
    if not state.curve and options.eval_at_start:
        stop = _evaluate(setup, state)
    setup.model.train()
    with tqdm(total=total_steps, initial=state.step, disable=not (progress and accelerator.is_main_process),
              unit="step", desc="training") as bar:
        while stop is None:
            if state.step >= total_steps:
                stop = "steps"
                break
            batch = [setup.encoded[i] for i in batch_indices(len(setup.encoded), options, state.step, rank, world)]
            cost = _sum_over_processes(accelerator, step_flops(setup.shape, batch, options))
            if options.budget_flops is not None and state.train_flops + cost > options.budget_flops:
                stop = "budget"
                break
            clock = time.perf_counter()
            loss = training_step(accelerator, setup.model, setup.optimizer, setup.trainable,
                                  [collate(micro, setup.tokenizer.pad_token_id, accelerator.device)
                                   for micro in micro_batches(batch, options)],
                                  options, learning_rate(options, state.step, total_steps), setup.compute_dtype)
            state.training_seconds += time.perf_counter() - clock
            state.losses.append(loss)
            state.step += 1
            state.train_flops += cost
            state.tokens += _sum_over_processes(accelerator, sum(e.length for e in batch))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if options.eval_every and state.step % options.eval_every == 0:
                stop = _evaluate(setup, state)
            elif options.checkpoint_every and state.step % options.checkpoint_every == 0:
                _checkpoint(setup, state)
    if not state.curve or state.curve[-1]["step"] != state.step:
        _evaluate(setup, state)
    return stop


_STOP_REASONS = {
    "target": "the target accuracy was reached",
    "budget": "the next step would exceed the FLOPs budget",
    "steps": "the step limit was reached",
}


def _evaluate(setup: Setup, state: TrainState) -> str | None:
    """A curve row and a checkpoint on the main process; every process gets the curve and "target" or None."""
    from accelerate.utils import broadcast_object_list

    reason = _add_curve_point(setup, state) if setup.recorder else None
    reason, state.curve, state.target = broadcast_object_list([reason, state.curve, state.target])
    state.losses = []
    _checkpoint(setup, state)
    return reason


def _checkpoint(setup: Setup, state: TrainState) -> None:
    """The checkpoint (on the main process), at an evaluation or every checkpoint_every steps between them."""
    if setup.recorder:
        _save_checkpoint(setup.out, setup.accelerator.unwrap_model(setup.model), setup.optimizer, state)
        setup.recorder.update(checkpoint_step=state.step)
    setup.accelerator.wait_for_everyone()
    _reseed(setup.options.seed, state.step, setup.accelerator.process_index)


def _add_curve_point(setup: Setup, state: TrainState) -> str | None:
    """Evaluate the model in memory and add its curve row; "target" when the row reaches it."""
    options, out = setup.options, setup.out
    loss = sum(state.losses) / len(state.losses) if state.losses else None
    clock = time.perf_counter()
    model = setup.accelerator.unwrap_model(setup.model)
    model.eval()
    rows, result, cost = evaluate_model(_as_trained(setup, model), setup.tokenizer, setup.eval, options,
                                        setup.retriever, shape=setup.shape)
    model.train()
    state.evaluation_seconds += time.perf_counter() - clock
    epoch_steps = steps_per_epoch(len(setup.encoded), options, setup.accelerator.num_processes)
    point = {"step": state.step, "epoch": state.step / epoch_steps, "tokens": state.tokens,
             "train_flops": state.train_flops, "train_loss": loss,
             "exact": result["exact"], "tolerant": result["tolerant"],
             "program_accuracy": result["program_accuracy"], "outcomes": result["outcomes"],
             "eval_flops": cost["inference_total"], "eval_flops_executed": cost["inference_total_executed"],
             "training_seconds": state.training_seconds}
    state.curve.append(point)
    state.final = {"metrics": result, "flops": cost, "seconds": sum(r["seconds"] for r in rows)}
    write_rows(evaluation_file(out, state.step), rows)
    setup.say(format_point(point))
    reason = None
    metric = options.target_metric
    if options.keep_best and (state.best is None or point[metric] > state.best["final"]["metrics"][metric]):
        state.best = {"step": state.step, "final": state.final}
        _save_atomically(_trainable_weights(model), out / BEST)
    if options.target is not None and state.target is None and point[metric] >= options.target:
        state.target = {key: point[key] for key in ("step", "tokens", "train_flops", metric)}
        reason = "target"
    setup.recorder.update(curve=state.curve)
    return reason


def learning_rate(options: TrainOptions, step: int, total_steps: int) -> float:
    """The rate of 0-based `step`: linear warmup over warmup_steps, then constant, or decaying linearly or along
    a half cosine to 0 after the last of `total_steps`."""
    if options.lr_schedule == "constant" or step < options.warmup_steps:
        return options.lr * min(1.0, (step + 1) / (options.warmup_steps + 1))
    done = (step - options.warmup_steps) / max(1, total_steps - options.warmup_steps)
    left = 1 - done if options.lr_schedule == "linear" else (1 + math.cos(math.pi * done)) / 2
    return options.lr * max(0.0, left)


def training_step(accelerator, model, optimizer, trainable, micros: list[dict], options: TrainOptions,
                  rate: float, autocast=None) -> float:
    """Forward and backward of each micro-batch (under autocast to the dtype `autocast`, if any), clip, AdamW
    update at learning rate `rate`; returns the mean loss over processes.

    Each micro-batch's summed loss is divided by the reply tokens of the whole batch, so the
    summed gradients are those of the batch's mean loss, however it is cut.
    """
    import torch

    for group in optimizer.param_groups:
        group["lr"] = rate
    replies = sum(int((inputs["labels"] != IGNORE_INDEX).sum()) for inputs in micros)
    loss = torch.zeros((), device=accelerator.device)
    for index, inputs in enumerate(micros):
        syncing = index == len(micros) - 1  # processes average gradients once, after the last micro-batch
        with nullcontext() if syncing else accelerator.no_sync(model):
            with torch.autocast(accelerator.device.type, dtype=autocast, enabled=autocast is not None):
                part = reply_loss(model, inputs, reduction="sum") / replies
            accelerator.backward(part)
        loss += part.detach().float()
    accelerator.clip_grad_norm_(trainable, options.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(loss.reshape(1), reduction="mean").item()


def mixed_precision(options: TrainOptions, device):
    """torch.bfloat16 for full fine-tuning in bf16, which then keeps fp32 weights and computes under autocast;
    else None.

    AdamW moves a weight by about the learning rate, far below bf16's resolution (1 part in 256) for
    most weights: kept in bf16, 85% of them had not moved after 10 steps at 1e-5. LoRA's and QLoRA's
    adapters are fp32 already (PEFT), beside a base in the run's dtype.
    """
    import torch

    if options.method == "full" and models.resolve_dtype(options.dtype, torch.device(device)) == torch.bfloat16:
        return torch.bfloat16
    return None


def _as_trained(setup: Setup, model):
    """The model as it answers and is saved: a copy in the compute dtype when it trains in mixed precision."""
    if setup.compute_dtype is None:
        return model
    import copy

    return copy.deepcopy(model).to(setup.compute_dtype)


def trainable_model(options: TrainOptions, data: TrainData, device: str):
    """Load the base (4-bit for qlora) and make it trainable: LoRA adapters, or every weight for full (in fp32
    for mixed precision, see `mixed_precision`)."""
    import torch

    mixed = mixed_precision(options, device)
    loaded = models.load_model(data.source, dtype="fp32" if mixed else options.dtype, quant=options.quant,
                               device=device)
    model = loaded.model
    if options.method == "qlora":
        import bitsandbytes
        from peft import prepare_model_for_kbit_training

        # non-reentrant, as flops.training_step_flops counts (reentrant also recomputes each layer's last matmul)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=options.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        # On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer's weight in place for its inference
        # kernel (gemv_4bit) at the first forward in eval mode without gradients, as in an evaluation; that kernel
        # has no backward, so every step after the first evaluation got no gradient through the 4-bit base
        # (tests/test_qlora_gradients.py)
        for layer in model.modules():
            if isinstance(layer, bitsandbytes.nn.Linear4bit):
                layer.support_avx512bf16_for_cpu = False
    elif options.gradient_checkpointing:  # HF's switch, which flops.training_step_flops counts
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    if options.method == "full":
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(options.seed)  # the adapters' initial A matrices
        model = get_peft_model(model, LoraConfig(
            r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
            target_modules=list(flops.lora_targets(options.lora_targets, data.shape)), task_type="CAUSAL_LM",
        ))
    model.train()
    return loaded, model


def qlora_and_dequantized(options: TrainOptions, data: TrainData) -> tuple:
    """A QLoRA model, its twin with LoRA on the dequantized 4-bit weights, and the QLoRA model's 4-bit layers.

    The adapters are equal in both, with B filled with small random values, so that every LoRA matrix has a
    gradient: the two must then have equal adapter gradients within rounding (QLoRA's gradient check).
    """
    import bitsandbytes
    import torch

    _, qlora = trainable_model(replace(options, method="qlora"), data, "cpu")
    _, dequantized = trainable_model(replace(options, method="lora"), data, "cpu")
    four_bit = {name: layer for name, layer in qlora.named_modules() if isinstance(layer, bitsandbytes.nn.Linear4bit)}
    for name, layer in four_bit.items():
        weight = bitsandbytes.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        dequantized.get_submodule(name).weight.data.copy_(weight)
    torch.manual_seed(0)
    adapters = dict(dequantized.named_parameters())
    for name, parameter in qlora.named_parameters():
        if parameter.requires_grad:
            if "lora_B" in name:
                parameter.data.normal_(std=0.02)
            adapters[name].data.copy_(parameter.data)
    return qlora, dequantized, list(four_bit.values())


def _sum_over_processes(accelerator, value: int) -> int:
    import torch

    if accelerator.num_processes == 1:
        return value
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).sum().item())


def _reseed(seed: int, step: int, rank: int) -> None:
    """Dropout's random stream restarts at every checkpoint, so a resumed run repeats an uninterrupted one."""
    import torch

    torch.manual_seed(hash((seed, step, rank)) % 2**63)


# ---------------------------------------------------------------- files


def _save_checkpoint(out: Path, model, optimizer, state: TrainState) -> None:
    """Trainable weights, optimizer and loop state in one file, replaced atomically."""
    _save_atomically({"trainable": _trainable_weights(model), "optimizer": optimizer.state_dict(),
                      "state": asdict(state)}, out / CHECKPOINT)


def _keep_best(setup: Setup, state: TrainState) -> int:
    """Put the best evaluation's weights back into the model (its metrics become the run's); returns its step."""
    if state.best["step"] != state.step:
        model = setup.accelerator.unwrap_model(setup.model)
        _load_trainable(model, _read_saved(setup.out / BEST))
        state.final = state.best["final"]
    return state.best["step"]


def _trainable_weights(model) -> dict:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def _save_atomically(content: dict, path: Path) -> None:
    import torch

    partial = path.with_name(path.name + ".partial")
    torch.save(content, partial)
    os.replace(partial, path)


def _read_saved(path: Path, keys: tuple[str, ...] = ()) -> dict | None:
    """The checkpoint (holding `keys`) or best weights saved in `path`, None where there is none; a file that
    cannot be read is one line (RunError)."""
    import torch

    if not path.is_file():
        return None
    remedy = "move it aside to train this run again from step 0, or restore it"
    try:
        saved = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:  # as torch raises them
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0].rstrip(": ")
        raise RunError(f"{path} cannot be read ({reason[:200]}); {remedy}") from None
    if not isinstance(saved, dict) or not set(keys) <= set(saved):
        raise RunError(f"{path} is not a finprog checkpoint; {remedy}")
    return saved


def _load_trainable(model, trainable: dict) -> None:
    expected = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    if {name: tuple(tensor.shape) for name, tensor in trainable.items()} != expected:
        raise RunError(f"the checkpoint's trainable weights do not match this model ({len(trainable)} saved, "
                       f"{len(expected)} expected, or of other shapes); it was written by another finprog version, "
                       "model or configuration")
    model.load_state_dict(trainable, strict=False)


def _save_model(out: Path, model, tokenizer) -> None:
    """The adapter (PEFT) or the whole model, and the tokenizer, where `models.load_model(out)` finds them."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(out, save_embedding_layers=False)
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _final_record(record: dict, state: TrainState, options: TrainOptions, stop: str, kept: int) -> dict:
    final = state.final
    n = final["metrics"]["n"]
    evaluations = sum(point["eval_flops"] for point in state.curve)
    target = None if options.target is None else {
        "metric": options.target_metric, "value": options.target, "reached": state.target is not None,
        **(state.target or {}),
    }
    return {
        **record,
        "metrics": final["metrics"],
        "flops": {**final["flops"], "training_total": state.train_flops, "evaluation_total": evaluations},
        "curve": state.curve,
        "target": target,
        "stopped": stop,
        "steps": state.step,
        "model_step": kept,  # the step whose weights the run's model holds (keep_best: its best evaluation's)
        "tokens": state.tokens,
        "timing": {
            **record["timing"],
            "seconds_total": final["seconds"],
            "seconds_per_example": final["seconds"] / n if n else 0.0,
            "training_seconds": state.training_seconds,
            "seconds_per_step": state.training_seconds / state.step if state.step else 0.0,
            "evaluation_seconds": state.evaluation_seconds,
        },
    }


# ---------------------------------------------------------------- output


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    return say


def format_point(point: dict) -> str:
    """One learning-curve row as a line: step, tokens, cumulative training FLOPs, loss, accuracies."""
    loss = "-" if point["train_loss"] is None else f"{point['train_loss']:.4f}"
    program = "-" if point["program_accuracy"] is None else f"{point['program_accuracy']:.1%}"
    return (f"step {point['step']:>6}  tokens {point['tokens']:>9}  train FLOPs {point['train_flops']:9.3g}  "
            f"loss {loss:>7}  exact {point['exact']:6.1%}  tolerant {point['tolerant']:6.1%}  program {program:>6}")


def summary_lines(record: dict) -> list[str]:
    """The human summary of a finished training run: the curve, why it stopped, the target, the final FLOPs."""
    lines = [format_point(point) for point in record["curve"]]
    lines.append(f"stopped after {record['steps']} steps: {_STOP_REASONS[record['stopped']]}")
    if record.get("model_step", record["steps"]) != record["steps"]:
        lines.append(f"kept the weights of step {record['model_step']}, its best evaluation")
    target = record["target"]
    if target:
        reached = (f"reached at step {target['step']} after {target['train_flops']:.3g} training FLOPs"
                   if target["reached"] else "not reached")
        lines.append(f"target {target['metric']} {target['value']:.1%}: {reached}")
    cost, timing = record["flops"], record["timing"]
    lines.append(f"FLOPs: {cost['training_total']:.3g} training, {cost['inference_per_example']:.3g} per evaluated "
                 f"example; {timing['seconds_per_step']:.2f} s per step")
    return lines


def summary(record: dict) -> dict:
    """The machine-readable summary of a finished training run (what `--json` prints)."""
    return {"steps": record["steps"], "model_step": record.get("model_step", record["steps"]),
            "stopped": record["stopped"], "target": record["target"], "training_flops": record["flops"]["training_total"], **record["metrics"], "curve": record["curve"]}
