"""The shared-prefix cache: `finprog solve` with and without it on the same questions, side by side.

Two models: the prompted default (qwen2.5-coder-0.5b: program mode, one retrieved
exemplar, retrieved facts, constrained decoding) and a trained one (the 240-step LoRA
adapter, asked as it was trained), each in fp32 and bf16, each run with the cache and
with `--no-prefix-cache` in the same process. For every pair: the prompt tokens the cache
supplied, FLOPs per question (useful and executed, the prefix's once-per-run cost
included), seconds per question (generation only), the ratios, and how many first
lines are identical. fp32 must agree on all; in bf16 the prefix computed apart may round
differently, so the pairs that differ are listed with how many leading characters they
share.

    python evals/bench/prefix_cache.py --limit 100     # writes evals/bench/prefix_cache.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa, with the CPU to itself
(about 8 solve runs of N questions each). `--prompted` and `--trained` swap the models
(a smaller pair checks the script quickly: smollm2-135m and evals/adapters/smollm2-135m_lora).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from finprog.provenance import header
from finprog.solve import SolveOptions, solve

HERE = Path(__file__).resolve().parent
PROMPTED = "qwen2.5-coder-0.5b"
TRAINED = "evals/adapters/qwen2.5-coder-0.5b_lora_cosine240"
DTYPES = ("fp32", "bf16")
COLUMNS = f"{'model':<36}{'dtype':<7}{'cache':<7}{'prompt tok/q':>13}{'cached':>8}{'GFLOPs/q':>10}" \
          f"{'executed':>10}{'s/q':>8}"


def solved(options: SolveOptions, folder: Path) -> tuple[dict, dict[str, dict]]:
    """run.json and the rows by id of one `finprog solve` run."""
    record = solve(options, folder, progress=False)
    rows = {row["id"]: row for row in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}
    return record, rows


def pair(model: str, dtype: str, data: str, limit: int | None, scratch: Path) -> list[str]:
    """Lines for one model and dtype: without and with the cache, then their ratios and agreement."""
    runs = {}
    for cache in (False, True):
        options = SolveOptions(model=model, data=data, limit=limit, dtype=dtype, prefix_cache=cache)
        runs[cache] = solved(options, scratch / f"{Path(model).name}_{dtype}_{'on' if cache else 'off'}")
    lines = []
    for cache, (record, rows) in runs.items():
        cost, n = record["flops"], record["metrics"]["n"]
        prompt = sum(r["prompt_tokens"] for r in rows.values()) / n
        cached = max(r["cached_prompt_tokens"] for r in rows.values())
        useful, executed = cost["inference_per_example"] / 1e9, cost["inference_per_example_executed"] / 1e9
        lines.append(f"{Path(model).name:<36}{dtype:<7}{'on' if cache else 'off':<7}{prompt:>13,.0f}{cached:>8,}"
                     f"{useful:>10,.1f}{executed:>10,.1f}{record['timing']['seconds_per_example']:>8.2f}")
    (off, off_rows), (on, on_rows) = runs[False], runs[True]
    flops_ratio = on["flops"]["inference_total"] / off["flops"]["inference_total"]
    executed_ratio = on["flops"]["inference_total_executed"] / off["flops"]["inference_total_executed"]
    seconds_ratio = on["timing"]["seconds_total"] / off["timing"]["seconds_total"]
    differ = [(off_rows[i]["completion"], on_rows[i]["completion"]) for i in off_rows
              if off_rows[i]["completion"] != on_rows[i]["completion"]]
    lines.append(f"  with / without the cache: FLOPs {flops_ratio:.3f}x ({1 - flops_ratio:.1%} fewer), executed "
                 f"{executed_ratio:.3f}x, seconds {seconds_ratio:.3f}x; identical first lines "
                 f"{len(off_rows) - len(differ)}/{len(off_rows)}; exact {off['metrics']['exact']:.0%} without, "
                 f"{on['metrics']['exact']:.0%} with")
    if differ:
        shared = ", ".join(f"{len(os.path.commonprefix([a, b]))} of {max(len(a), len(b))}" for a, b in differ)
        lines.append(f"  the {len(differ)} that differ share their first characters: {shared}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="the first N questions (default: all of --data)")
    parser.add_argument("--data", default="test_100", help="FinQA split or sample (default: %(default)s)")
    parser.add_argument("--prompted", default=PROMPTED, help="the prompted model (default: %(default)s)")
    parser.add_argument("--trained", default=TRAINED, help="the trained model (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "prefix_cache.txt",
                        help="the report (default: beside this script)")
    args = parser.parse_args()
    with args.out.open("w") as out, tempfile.TemporaryDirectory() as scratch:
        def emit(line: str) -> None:
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()

        emit(header())
        emit(f"finprog solve on {args.data}" + (f" (first {args.limit})" if args.limit else "")
             + " with and without the shared-prefix cache; each model's defaults; GFLOPs per question are the "
               "run's inference FLOPs over its questions (the prefix counted once per run), seconds are generation "
               "only\n")
        emit(COLUMNS)
        for model in (args.prompted, args.trained):
            for dtype in DTYPES:
                for line in pair(model, dtype, args.data, args.limit, Path(scratch)):
                    emit(line)
            emit("")


if __name__ == "__main__":
    main()
