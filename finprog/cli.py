"""The `finprog` command line: argument parsing only; each command is one library call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finprog import __version__
from finprog.report import DEFAULT_METRIC, DEFAULT_QUESTIONS, METRICS


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("finprog: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"finprog: error: {error}", file=sys.stderr)
        return 2


def _is_user_error(error: Exception) -> bool:
    """Errors that describe bad input (printed as one line), as opposed to bugs (shown as tracebacks)."""
    from finprog.data import DataValidationError
    from finprog.dsl import ProgramError
    from finprog.evaluation import PredictionFileError
    from finprog.report import ReportError

    return isinstance(error, (DataValidationError, ProgramError, PredictionFileError, ReportError))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finprog", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"finprog {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    evaluate = commands.add_parser(
        "evaluate", help="execution and program accuracy of predicted programs (FinQA's official rules)"
    )
    evaluate.add_argument("predictions", help="official format (JSON list of {id, predicted: tokens}) or predictions.jsonl")
    evaluate.add_argument("gold", nargs="?", help="FinQA file or split name (default: official test split, else the demo sample)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_evaluate)

    data = commands.add_parser("data", help="FinQA files: inspect or download")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="counts, split, fields of FinQA files")
    info.add_argument("paths", nargs="+", type=Path, help="FinQA files or folders of them")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_data_info)
    download = data_commands.add_parser("download", help="fetch the official FinQA files into the cache")
    download.add_argument("--split", choices=["train", "dev", "test", "all"], default="all")
    download.add_argument("--dir", type=Path, help="target folder (default: the cache's finqa/ folder)")
    download.set_defaults(run=_data_download)

    report = commands.add_parser("report", help="cost against accuracy across runs: table, FLOPs-to-target, Pareto plot")
    report.add_argument("runs", nargs="+", type=Path, help="run folders, run.json files, or folders holding runs")
    report.add_argument("--target", required=True, help="EmAcc to reach: a fraction (0.3) or percent (30, 30%%)")
    report.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS,
                        help="Q: questions answered after training (default: %(default)s, the FinQA test split)")
    report.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC)
    report.add_argument("--out", type=Path, default=Path("report"), help="folder for report.md and report.png (default: report)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_report)
    return parser


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
    print(f"program accuracy    {result.program_accuracy:.2%}")
    print("outcomes            " + ", ".join(f"{k} {v}" for k, v in result.outcomes.items()))
    for side, ids in result.missing.items():
        if ids:
            shown = ", ".join(ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")
            print(f"{side:<20}{shown}")
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
    from finprog.data import DataValidationError, describe

    files = []
    for path in args.paths:
        found = sorted(p for p in path.glob("*.json") if p.name != "manifest.json") if path.is_dir() else [path]
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
              f"{row['with_exe_ans']} with exe_ans, {row['yes_no_answers']} yes/no answers")
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
