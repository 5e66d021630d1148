"""The `finprog` command line: argument parsing only; each command is one library call."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from finprog import __version__, flops
from finprog.cascade import RULE_HELP
from finprog.errors import FinprogError
from finprog.evaluation import METRICS
from finprog.models import DTYPES
from finprog.prompts import PROMPT_STYLES
from finprog.report import DEFAULT_METRIC, DEFAULT_QUESTIONS
from finprog.retrieval import CONTEXTS, DEFAULT_CONTEXT, DEFAULT_RANKER, DEFAULT_TOP_K, RANKERS
from finprog.solve import DEFAULT_MODEL, DEFAULT_SHOTS, EXEMPLAR_CHOICES, MODES, PROMPTED_MODEL
from finprog.study import EXECUTORS
from finprog.training import LR_SCHEDULES


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("finprog: interrupted", file=sys.stderr)
        return 130
    except FinprogError as error:  # bad input or an impossible request; anything else is a bug and keeps its traceback
        print(f"finprog: error: {error}", file=sys.stderr)
        return 2


class UsageError(FinprogError, ValueError):
    """Options that no command can run with."""


DESCRIPTION = ("Which model and technique reach a target exact-match accuracy on FinQA for the fewest FLOPs: "
               "solve, train, count and report.")


class _Parser(argparse.ArgumentParser):
    """argparse, reading a value such as `-1e-4` as a number, as Python 3.13's argparse does (3.11's takes it for
    an option, so `--lr -1e-4` was refused with "expected one argument"); subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"-\.?\d")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finprog", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"finprog {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_evaluate, _add_data, _add_solve, _add_compare, _add_train, _add_export_adapter, _add_retrieve,
                _add_models, _add_flops, _add_report, _add_cascade_sweep, _add_study):
        add(commands)
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="execution and program accuracy of predicted programs (FinQA's official rules)"
    )
    evaluate.add_argument("predictions", help="official format (JSON list of {id, predicted: tokens}) or predictions.jsonl")
    evaluate.add_argument("gold", nargs="?", help="FinQA file or split name (default: official test split, else the demo sample)")
    _add_json(evaluate)
    evaluate.set_defaults(run=_evaluate)


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="FinQA files: inspect or download")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="counts, split, fields of FinQA files")
    info.add_argument("paths", nargs="+", help="FinQA files, folders of them, split names (dev_200) or hf:NAME")
    _add_json(info)
    info.set_defaults(run=_data_info)
    download = data_commands.add_parser(
        "download", help="fetch the official FinQA files (pinned commit, SHA-1 checked) into the cache"
    )
    download.add_argument("--split", choices=["train", "dev", "test", "all"], default="all",
                          help="which split to fetch (default: %(default)s)")
    download.add_argument("--dir", type=Path, help="target folder (default: the cache's finqa/ folder)")
    download.set_defaults(run=_data_download)


def _add_solve(commands) -> None:
    solve = commands.add_parser("solve", help="run a model over FinQA examples (program or direct mode)")
    _add_solve_options(solve)
    solve.add_argument("--mode", choices=MODES, default=MODES[0],
                       help="write a DSL program that finprog executes, or answer with a number (default: %(default)s)")
    solve.add_argument("--out", type=Path, help="run folder (default: runs/MODEL_MODE_DATA)")
    solve.add_argument("--cascade", nargs="+", metavar="MODEL",
                       help="a cascade instead of --model: each model answers the questions the ones before it "
                            "did not get accepted; the last model's answers are always accepted")
    solve.add_argument("--accept", metavar="RULE",
                       help=f"with --cascade, when an answer is accepted (default: executes): {RULE_HELP}; "
                            "e.g. executes+logprob:-0.3")
    solve.set_defaults(run=_solve)


def _add_compare(commands) -> None:
    compare = commands.add_parser(
        "compare", help="run several modes on the same examples, or compare finished runs, side by side"
    )
    compare.add_argument("run_dirs", nargs="*", type=Path, help="finished run folders to compare (nothing is rerun)")
    _add_solve_options(compare)
    compare.add_argument("--mode", action="append", choices=MODES, dest="modes",
                         help="a mode to run (repeat; default: direct and program)")
    compare.add_argument("--out", type=Path, help="folder for one run per mode and comparison.json")
    compare.set_defaults(run=_compare)


def _add_train(commands) -> None:
    """The longest parser: `finprog train` has one option per field of `training.TrainOptions`."""
    train = commands.add_parser("train", help="fine-tune (LoRA, QLoRA, full) with periodic evaluation and FLOP accounting")
    train.add_argument("--model", default=PROMPTED_MODEL,
                       help=f"zoo name, hub id or checkpoint folder to train (default: {PROMPTED_MODEL})")
    _add_method_options(train)
    train.add_argument("--lora-alpha", type=int, help="LoRA scaling numerator (default: 2 x --lora-r)")
    train.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input (default: %(default)s)")
    train.add_argument("--mode", choices=MODES, default=MODES[0],
                       help="train to write the gold program, or the gold value (default: %(default)s)")
    train.add_argument("--train", required=True, nargs="+", help="FinQA file(s) or split name(s) to train on")
    train.add_argument("--eval", required=True, help="FinQA file or split name to evaluate on (no shared ids)")
    train.add_argument("--eval-every", type=int, help="steps between evaluations (default: start and end only)")
    train.add_argument("--checkpoint-every", type=int,
                       help="steps between checkpoints besides those at evaluations, so that --resume loses little")
    train.add_argument("--eval-limit", type=int, help="evaluate on the eval file's first N examples")
    train.add_argument("--no-eval-at-start", dest="eval_at_start", action="store_false",
                       help="skip the curve's step-0 evaluation of the untrained model")
    train.add_argument("--eval-batch-size", type=int, help="generation batch of evaluations (default: as solve, "
                                                           "1 on a CPU, 8 on a GPU)")
    stop = train.add_mutually_exclusive_group()
    stop.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    stop.add_argument("--epochs", type=float, help="stop after this many passes over the training data (default: 1)")
    train.add_argument("--budget-flops", type=float, help="stop before a step would exceed this many training FLOPs")
    train.add_argument("--target", help="stop when EmAcc reaches this: 0.3, 30 or 30%%")
    train.add_argument("--target-metric", choices=METRICS, default="exact",
                       help="the accuracy --target applies to (default: %(default)s)")
    train.add_argument("--keep-best", action="store_true",
                       help="the run keeps the weights of its best evaluation (by --target-metric), not its last step's")
    train.add_argument("--lr", type=float, help="AdamW learning rate (default: 2e-4 LoRA and QLoRA, 1e-5 full)")
    train.add_argument("--warmup-steps", type=int, default=0, help="steps of linear warmup (default: 0)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="after the warmup: a constant rate, or a linear or cosine decay to 0 at the step limit "
                            "(default: constant)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    train.add_argument("--batch-size", type=int, default=4, help="sequences per step and process (default: %(default)s)")
    train.add_argument("--micro-batch-size", type=int,
                       help="sequences per forward and backward, gradients summed over the batch: the same update "
                            "in less memory; a --resume may change it (default: the batch)")
    train.add_argument("--prompt", choices=PROMPT_STYLES, default="bare",
                       help="bare: the facts shown and the question only; instructed: solve's prompt with the "
                            "program language's instructions (default: %(default)s)")
    train.add_argument("--shots", type=int, default=0,
                       help="few-shot exemplars in instructed training prompts (default: 0)")
    train.add_argument("--max-prompt-tokens", type=int, default=1024,
                       help="cut the report's least relevant sentences to fit (default: %(default)s)")
    _add_context_options(train)
    train.add_argument("--max-new-tokens", type=int, help="evaluation's generation limit (default: solve's)")
    _add_model_options(train)
    train.add_argument("--seed", type=int, default=0, help="data order, LoRA initialisation and dropout (default: 0)")
    train.add_argument("--out", type=Path, help="run folder (default: runs/MODEL_METHOD_MODE)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    _add_json(train)
    train.set_defaults(run=_train)


def _add_export_adapter(commands) -> None:
    export = commands.add_parser("export-adapter",
                                 help="a finished LoRA or QLoRA run's adapter as bf16 safetensors, with its run.json")
    export.add_argument("run_dir", metavar="RUN", type=Path, help="the `finprog train` run folder")
    export.add_argument("dest", metavar="DEST", type=Path, help="a new folder for adapter_model.safetensors, adapter_config.json and "
                                                "run.json (then: finprog solve --model DEST)")
    _add_json(export)
    export.set_defaults(run=_export_adapter)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """--method, --lora-r, --lora-targets and --gradient-checkpointing: the same in train and flops."""
    parser.add_argument("--method", choices=flops.METHODS, default="lora",
                        help="full fine-tuning, LoRA, or QLoRA (LoRA on a 4-bit NF4 base) (default: %(default)s)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--lora-targets", default="q_proj,v_proj",
                        help="comma-separated projections, or all-linear (default: %(default)s)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (counted in the FLOPs)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--dtype and --no-chat-template: how a model is loaded and prompted, the same in solve, compare and train."""
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="auto: bf16 where the CPU (AVX512-BF16, AMX) or GPU computes it natively, else fp32")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                        help="plain prompts, even for a model with a chat template")


def _add_retrieve(commands) -> None:
    retrieve = commands.add_parser(
        "retrieve", help="recall of the gold supporting facts and of the gold program's operands at k, and the "
                         "context kept, for a ranker")
    retrieve.add_argument("data", help="FinQA file, split or sample name (records with gold_inds are measured)")
    retrieve.add_argument("--top-k", type=int, help="one k (default: the table for k = 1..10; with --json, "
                                                    f"{DEFAULT_TOP_K})")
    retrieve.add_argument("--ranker", choices=RANKERS, default=DEFAULT_RANKER, help="default: %(default)s")
    retrieve.add_argument("--json", action="store_true", help="print one JSON object for one k")
    retrieve.set_defaults(run=_retrieve)


def _add_models(commands) -> None:
    models = commands.add_parser("models", help="the offline model zoo: list or fetch")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="zoo models: parameters, size, licence, cached or not")
    _add_json(listing)
    listing.set_defaults(run=_models_list)
    fetch = model_commands.add_parser("fetch", help="download, check and convert zoo models into the cache")
    fetch.add_argument("names", nargs="+", help="zoo names, or all")
    fetch.set_defaults(run=_models_fetch)


def _add_flops(commands) -> None:
    count = commands.add_parser("flops", help="parameter counts and FLOPs of a model; --check measures them")
    count.add_argument("model", help="zoo name, checkpoint folder or hub id")
    count.add_argument("--prompt-tokens", type=int, default=512, help="prompt length counted (default: %(default)s)")
    count.add_argument("--new-tokens", type=int, default=16, help="generated tokens counted (default: %(default)s)")
    _add_method_options(count)
    count.add_argument("--train-tokens", type=int, default=128,
                       help="sequence length of the measured training steps (default: %(default)s)")
    count.add_argument("--check", action="store_true", help="also measure with torch's FlopCounterMode and compare")
    _add_json(count)
    count.set_defaults(run=_flops)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="cost against accuracy across runs: table, FLOPs-to-target, Pareto plot")
    report.add_argument("runs", nargs="+", type=Path, help="run folders, run.json files, or folders holding runs")
    report.add_argument("--target", required=True, nargs="+",
                        help="EmAcc to reach, one or several (0.1 0.2 0.3): fractions or percents (30, 30%%)")
    report.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS,
                        help="Q: questions answered after training (default: %(default)s, the FinQA test split)")
    report.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                        help="the accuracy compared (default: %(default)s)")
    report.add_argument("--out", type=Path, default=Path("report"), help="folder for report.md and report.png (default: report)")
    _add_json(report)
    report.set_defaults(run=_report)


def _add_study(commands) -> None:
    study = commands.add_parser(
        "study", help="run a declared model x technique study (STUDY.toml): every unfinished cell, then its report")
    study.add_argument("studies", nargs="+", type=Path, metavar="STUDY.toml", help="study files, run in turn")
    action = study.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true",
                        help="list every cell, done or not, with its predicted FLOPs and time left; run nothing")
    action.add_argument("--report-only", action="store_true", help="write the report of the finished runs only")
    study.add_argument("--rerun", nargs="+", default=[], metavar="CELL",
                       help="delete these cells' run folders and run them again (after a changed declaration)")
    study.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local processes, Slurm jobs through submitit, or submitit's local executor "
                            "(default: %(default)s)")
    study.add_argument("--jobs", type=int, default=1, help="cells run at once (default: %(default)s)")
    study.add_argument("--gpus-per-cell", type=int, help="with --executor slurm: GPUs each cell's job asks for")
    study.add_argument("--partition", help="with --executor slurm: the Slurm partition")
    study.add_argument("--time-limit", type=int, help="with --executor slurm: minutes a cell's job may run")
    _add_json(study)
    study.set_defaults(run=_study)


def _study(args) -> int:
    from finprog import study

    slurm = {key: value for key, value in (("gpus_per_node", args.gpus_per_cell), ("slurm_partition", args.partition),
                                           ("timeout_min", args.time_limit)) if value is not None}
    results = []
    for path in args.studies:
        if args.dry_run:
            loaded = study.load_study(path)
            study.check_rerun(loaded, args.rerun)
            planned = study.plan(loaded)
            results.append(study.plan_summary(planned))
            if not args.json:
                print(study.format_plan(loaded, planned))
            continue
        result = study.run_study(path, executor=args.executor, jobs=args.jobs, rerun=tuple(args.rerun),
                                 report_only=args.report_only, slurm=slurm)
        results.append(result)
        if not args.json:
            print(f"study {path}: ran {len(result['ran'])} cell(s), {len(result['failed'])} failed"
                  + (f" ({', '.join(result['failed'])})" if result["failed"] else "")
                  + (f"; wrote {', '.join(result['report'])}" if result.get("report") else ""))
    if args.json:
        print(json.dumps(results))
    return 1 if any(result.get("failed") for result in results) else 0


def _add_cascade_sweep(commands) -> None:
    sweep = commands.add_parser("cascade-sweep",
                                help="a cascade's accuracy and FLOPs for every acceptance threshold, from finished runs")
    sweep.add_argument("runs", nargs="+", type=Path,
                       help="finished single-model run folders on the same questions, in cascade order (cheapest first)")
    sweep.add_argument("--rule", required=True,
                       help="an acceptance rule with one term left without a value, which is swept "
                            "(logprob, minlogprob, agree; e.g. executes+logprob)")
    sweep.add_argument("--target", required=True, help="EmAcc to reach: a fraction (0.3) or percent (30, 30%%)")
    sweep.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                       help="the accuracy compared (default: %(default)s)")
    sweep.add_argument("--out", type=Path, default=Path("sweep"),
                       help="folder for sweep.json, sweep.txt and sweep.png (default: sweep)")
    _add_json(sweep)
    sweep.set_defaults(run=_cascade_sweep)


def _evaluate(args) -> int:
    from finprog.data import load_finqa, resolve_data
    from finprog.evaluation import evaluate_programs, load_predictions

    gold_path, described = resolve_data(args.gold, default_split="test")
    if not args.json:
        print(f"gold: {described}", file=sys.stderr)
    result = evaluate_programs(load_predictions(args.predictions), load_finqa(gold_path))
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"n                   {result.n}")
    print(f"execution accuracy  {result.execution_accuracy:.2%}")
    print("program accuracy    " + ("-" if result.program_accuracy is None else f"{result.program_accuracy:.2%}"))
    print("outcomes            " + ", ".join(f"{k} {v}" for k, v in result.outcomes.items()))
    for side, ids in result.missing.items():
        if ids:
            shown = ", ".join(ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")
            print(f"{side:<20}{shown}")
    return 0


def _add_solve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"zoo or trained-adapter name, hub id or folder (default: {DEFAULT_MODEL} "
                                        f"in program mode, {PROMPTED_MODEL} in direct mode and for compare)")
    parser.add_argument("--data", help="FinQA file, dataset folder, split or sample name, hf:NAME, or demo "
                                       "(default: official dev, else demo)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--batch-size", type=int, help="default: 1 on a CPU, 8 on a GPU")
    parser.add_argument("--max-new-tokens", type=int, help="default: 24 direct, 96 program")
    parser.add_argument("--prompt", choices=PROMPT_STYLES,
                        help="instructed: the task's instructions, exemplars, facts and question; bare: the facts "
                             "and the question only (default: instructed, or as a finprog-trained model was trained)")
    parser.add_argument("--shots", type=int,
                        help=f"few-shot exemplars in program mode (default: {DEFAULT_SHOTS}, 0 with --prompt bare, "
                             "or as a finprog-trained model was trained)")
    parser.add_argument("--exemplars", help="FinQA file the exemplars come from (default: official train, else demo)")
    parser.add_argument("--gold-exemplars", action="store_true",
                        help="exemplars only from training records with annotated facts (the others are "
                             "shown with retrieved facts)")
    parser.add_argument("--exemplar-choice", choices=EXEMPLAR_CHOICES, default="similar",
                        help="most similar question (TF-IDF) or the first k")
    parser.add_argument("--constrained", action=argparse.BooleanOptionalAction,
                        help="grammar-constrained decoding of programs (default: on in program mode, "
                             "off for a model finprog trained)")
    parser.add_argument("--any-numbers", dest="restrict_numbers", action="store_false",
                        help="with --constrained: allow any number, not only those in the example")
    parser.add_argument("--page-numbers", action="store_true",
                        help="with --constrained: numbers from the whole page, not only from the facts shown")
    parser.add_argument("--samples", type=int, default=1, help="self-consistency: N sampled programs, majority vote")
    parser.add_argument("--temperature", type=float, default=0.7, help="with --samples > 1")
    parser.add_argument("--top-p", type=float, default=0.95, help="with --samples > 1")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed, with --samples > 1 (default: 0)")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="compute every prompt whole, not the prompts' shared prefix once (the same answers, "
                             "more FLOPs)")
    _add_model_options(parser)
    parser.add_argument("--quant", choices=["none", "4bit", "8bit"], default="none",
                        help="load the weights quantized by bitsandbytes (default: %(default)s)")
    parser.add_argument("--max-prompt-tokens", type=int,
                        help="cut the report's least relevant sentences to fit (default: no cut, or as a "
                             "finprog-trained model was trained)")
    _add_context_options(parser, inherited=True)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_json(parser)


def _add_context_options(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    """--context, --top-k and --ranker: what of the report page a prompt shows."""
    trained = ", or as a finprog-trained model was trained" if inherited else ""
    parser.add_argument("--context", choices=CONTEXTS, default=None if inherited else DEFAULT_CONTEXT,
                        help=f"the whole page, the ranker's top-k facts, or the annotated gold facts (an oracle) "
                             f"(default: {DEFAULT_CONTEXT}{trained})")
    parser.add_argument("--top-k", type=int, default=None if inherited else DEFAULT_TOP_K,
                        help=f"facts kept with --context retrieved (default: {DEFAULT_TOP_K}{trained})")
    parser.add_argument("--ranker", choices=RANKERS, default=None if inherited else DEFAULT_RANKER,
                        help=f"how facts are ranked: lexical BM25, or a linear model over BM25 and overlap features "
                             f"(default: {DEFAULT_RANKER}{trained})")


def _solve_options(args, mode: str, constrained: bool | None = None, model: str | None = None):
    from finprog.solve import SolveOptions

    return SolveOptions(
        model=model or args.model, mode=mode, prompt=args.prompt, data=args.data, limit=args.limit,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, shots=args.shots,
        exemplar_choice=args.exemplar_choice, exemplars=args.exemplars, gold_exemplars=args.gold_exemplars,
        constrained=constrained, restrict_numbers=args.restrict_numbers, page_numbers=args.page_numbers,
        samples=args.samples, temperature=args.temperature, top_p=args.top_p, seed=args.seed, dtype=args.dtype,
        quant=args.quant, chat_template=args.chat_template, max_prompt_tokens=args.max_prompt_tokens,
        context=args.context, top_k=args.top_k, ranker=args.ranker, prefix_cache=args.prefix_cache,
    )


def _default_out(model: str | None, label: str, data: str | None = None) -> Path:
    """runs/MODEL_LABEL[_DATA]: the same options give the same folder, so --resume finds it."""
    return Path("runs") / "_".join([_model_label(model), label] + ([Path(data).stem] if data else []))


def _model_label(model: str) -> str:
    return Path(model).name if Path(model).exists() else model.replace("/", "--")


def _solve(args) -> int:
    from finprog.solve import solve, summary, summary_lines

    if args.cascade or args.accept is not None:
        record = _cascade(args)
    else:
        out = args.out or _default_out(args.model or (DEFAULT_MODEL if args.mode == "program" else PROMPTED_MODEL),
                                       args.mode, args.data)
        record = solve(_solve_options(args, args.mode, args.constrained), out, resume=args.resume,
                       progress=not args.json)
    if args.json:
        print(json.dumps(summary(record)))
    else:
        print("\n".join(summary_lines(record)))
    return 0


def _cascade(args) -> dict:
    from finprog.cascade import CascadeError, CascadeOptions, cascade

    if not args.cascade:
        raise CascadeError("--accept goes with --cascade MODEL_1 MODEL_2 ...")
    if args.model:
        raise CascadeError("give the models with --cascade or with --model, not both")
    stages = [_solve_options(args, args.mode, args.constrained, model=model) for model in args.cascade]
    options = CascadeOptions(stages, accept="executes" if args.accept is None else args.accept)
    out = args.out or _default_out("+".join(map(_model_label, args.cascade)), f"cascade_{args.mode}", args.data)
    return cascade(options, out, resume=args.resume, progress=not args.json)


def _cascade_sweep(args) -> int:
    from finprog.sweep import format_sweep, sweep

    result, files = sweep(args.runs, rule=args.rule, target=args.target, metric=args.metric, out=args.out)
    if args.json:
        print(json.dumps(result))
        return 0
    print(format_sweep(result))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _train(args) -> int:
    from finprog.report import parse_target
    from finprog.training import TrainOptions, summary, summary_lines, train

    options = TrainOptions(
        model=args.model, train=args.train, eval=args.eval, method=args.method, mode=args.mode, prompt=args.prompt,
        shots=args.shots,
        chat_template=args.chat_template, max_prompt_tokens=args.max_prompt_tokens, max_steps=args.max_steps,
        epochs=args.epochs, budget_flops=args.budget_flops,
        target=parse_target(args.target) if args.target else None, target_metric=args.target_metric,
        keep_best=args.keep_best, eval_every=args.eval_every, eval_at_start=args.eval_at_start, eval_limit=args.eval_limit,
        checkpoint_every=args.checkpoint_every,
        eval_batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, lr=args.lr,
        warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule, weight_decay=args.weight_decay,
        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        gradient_checkpointing=args.gradient_checkpointing, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=args.lora_targets, seed=args.seed, dtype=args.dtype,
        context=args.context, top_k=args.top_k, ranker=args.ranker,
    )
    out = args.out or _default_out(args.model, f"{args.method}_{args.mode}")
    record = train(options, out, resume=args.resume, progress=not args.json)
    print(json.dumps(summary(record)) if args.json else "\n".join(summary_lines(record)))
    return 0


def _export_adapter(args) -> int:
    from finprog.export import export_adapter

    result = export_adapter(args.run_dir, args.dest)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"wrote {', '.join(result['files'])}: {result['tensors']} tensors in bf16, {result['bytes'] / 1e6:.2f} MB, "
          f"{result['training_flops']:.3g} training FLOPs; use it with finprog solve --model {result['dest']}")
    return 0


def _compare(args) -> int:
    from finprog.compare import compare_modes, compare_runs, format_comparison
    from finprog.runs import RunError

    if args.run_dirs and args.modes:
        raise RunError("give finished run folders or --mode options, not both")
    if args.run_dirs:
        result = compare_runs(args.run_dirs)
    else:
        modes = args.modes or ["direct", "program"]
        out = args.out or _default_out(args.model or PROMPTED_MODEL, "compare", args.data)
        # --constrained and --no-constrained apply to the program run
        runs = [_solve_options(args, mode, args.constrained if mode == "program" else None,
                               model=args.model or PROMPTED_MODEL)
                for mode in dict.fromkeys(modes)]
        result = compare_modes(runs, out, resume=args.resume, progress=not args.json)
    print(json.dumps(result) if args.json else format_comparison(result))
    return 0


def _retrieve(args) -> int:
    from finprog import retrieval
    from finprog.data import load_finqa, resolve_data

    k = args.top_k if args.top_k is not None else DEFAULT_TOP_K if args.json else None
    retrieval.check_options(DEFAULT_CONTEXT, 1 if k is None else k, args.ranker)
    path, described = resolve_data(args.data)
    ks = range(1, 11) if k is None else [k]
    results = retrieval.recall_at_k(load_finqa(path), retrieval.ranker(args.ranker), ks, where=str(path))
    if args.json:
        print(json.dumps({"data": str(path), "ranker": args.ranker, **results[0].as_dict()}))
        return 0
    print(f"{described}: {results[0].n} records with gold facts, ranker {args.ranker}, "
          f"{results[0].chars_page:.0f} characters of page per record")
    print(f"{'k':>3}  {'full_recall':>11}  {'mean_recall':>11}  {'operand_recall':>14}  {'chars_retrieved':>15}  "
          f"{'of page':>7}")
    for r in results:
        operands = "-" if r.operand_recall is None else f"{r.operand_recall:.3f}"
        print(f"{r.k:>3}  {r.full_recall:>11.3f}  {r.mean_recall:>11.3f}  {operands:>14}  {r.chars_retrieved:>15.0f}  "
              f"{r.chars_retrieved / r.chars_page:>7.1%}")
    return 0


def _models_list(args) -> int:
    from finprog.models import list_adapters, list_models

    rows, adapters = list_models(), list_adapters()
    if args.json:
        print(json.dumps({"zoo": rows, "adapters": adapters}, indent=2))
        return 0
    print(f"{'name':<22}{'params':>8}{'download':>10}  {'cached':<8}licence")
    for row in rows:
        print(f"{row['name']:<22}{row['params'] / 1e9:>7.2f}B{row['size'] / 1e9:>7.2f} GB  "
              f"{'yes' if row['cached'] else 'no':<8}{row['licence']}")
    print(f"\ntrained adapters (solve's default: {DEFAULT_MODEL})")
    for row in adapters:
        results = "; ".join(f"{r['value']:g}% on {r['dataset']} ({r['label']})" for r in row["results"])
        asked = "".join(f", asked with {name} {value}" for name, value in row["solve_defaults"].items())
        print(f"{row['name']}: {row['technique']} on {row['base']}, {row['training_flops']:.3g} training FLOPs"
              f"{asked}; {results}")
    return 0


def _models_fetch(args) -> int:
    from finprog.models import ZOO, fetch

    for name in list(ZOO) if args.names == ["all"] else args.names:
        print(f"{name}: {fetch(name)}")
    return 0


def _flops(args) -> int:
    from finprog import flops
    from finprog.models import model_config

    for name in ("prompt_tokens", "new_tokens", "train_tokens", "lora_r"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    shape = flops.ModelShape.from_config(model_config(args.model))
    result = flops.summary(shape, args.prompt_tokens, args.new_tokens, args.method, args.lora_r,
                           targets=args.lora_targets, gradient_checkpointing=args.gradient_checkpointing)
    if args.check:
        from finprog import flopcheck

        result["check"] = flopcheck.check(args.model, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                                          train_tokens=args.train_tokens, lora_rank=args.lora_r,
                                          targets=args.lora_targets, gradient_checkpointing=args.gradient_checkpointing)
    print(json.dumps(result, indent=2) if args.json else flops.format_summary(result))
    if args.check and not args.json:
        print(flopcheck.format_check(result["check"]))
    return 0


def _report(args) -> int:
    from finprog.report import format_table, report

    result, files = report(args.runs, target=args.target, questions=args.questions, metric=args.metric, out=args.out)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(format_table(result))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _data_info(args) -> int:
    from finprog.data import HUB, DataValidationError, describe, is_dataset_folder, resolve_data

    files = []
    for spec in args.paths:
        path = Path(spec)
        if not path.exists() and (spec.startswith(HUB) or spec == path.name and not path.suffix):  # as --data takes
            path = resolve_data(spec)[0]
        if path.is_dir() and not is_dataset_folder(path):
            found = sorted(p for p in path.glob("*.json") if p.name != "manifest.json")
        else:
            found = [path]
        if path.is_dir() and not found:
            raise DataValidationError(f"{path}: no FinQA .json files in this folder")
        files += found
    rows = describe(files)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['file']}")
        print(f"  split {row['split']}, {row['records']} records, {row['with_program']} with a program, "
              f"{row['with_exe_ans']} with exe_ans, {row['with_page']} with a page, "
              f"{row['yes_no_answers']} yes/no answers")
        print(f"  fields: {', '.join(row['fields'])}")
        print(f"  qa fields: {', '.join(row['qa_fields'])}")
    return 0


def _data_download(args) -> int:
    from finprog.data import SPLITS, download_finqa
    from finprog.paths import cache_dir

    splits = list(SPLITS) if args.split == "all" else [args.split]
    manifest = download_finqa(splits, args.dir or cache_dir() / "finqa")
    print(f"downloaded {', '.join(splits)}; manifest: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
