"""Which context a program prompt should show: page, retrieved facts or gold facts, on dev_200.

Each variant is one `finprog solve` run (program mode, constrained, the default model
unless --model says otherwise) under evals/runs/context-dev/, resumed where it
stopped; the table of finished variants goes to evals/context-dev.md. The default
`--context`, `--top-k`, shots and exemplar pool are chosen from this table.

    python evals/context_dev.py                       # every variant, qwen2.5-coder-0.5b
    python evals/context_dev.py --variants page gold  # some of them
    python evals/context_dev.py --model qwen2.5-coder-1.5b --limit 100
    python evals/context_dev.py --model evals/adapters/qwen2.5-coder-0.5b_lora_cosine240 --limit 100 \
        --variants retrieved3-as-trained retrieved5-as-trained retrieved7-as-trained retrieved10-as-trained \
        gold-as-trained
    python evals/ranker_minilm.py --save minilm-cross && python evals/context_dev.py --minilm minilm-cross \
        --model evals/adapters/qwen2.5-coder-1.5b_lora_cosine80 --limit 100 --variants retrieved5-minilm-as-trained
    python evals/context_dev.py --minilm minilm-cross --model evals/adapters/qwen2.5-coder-1.5b_lora_cosine80 \
        --variants retrieved5-minilm-as-trained retrieved5-as-trained    # all of dev_200
    python evals/context_dev.py --model evals/adapters/qwen2.5-coder-1.5b_lora_cosine80 \
        --variants retrieved5-finqa-as-trained    # FinQA's released retriever scores, all of dev_200

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finprog import retrieval
from finprog.cross_encoders import CrossEncoderRanker, ReleasedRanker
from finprog.provenance import header
from finprog.runs import finished_run
from finprog.solve import DEFAULT_MODEL, SolveOptions, solve

HERE = Path(__file__).resolve().parent
TRAIN_100 = dict(exemplars="train_100")
GOLD_2077 = dict(exemplars="train_2077", gold_exemplars=True)
VARIANTS = {
    "page-4shot": dict(context="page", shots=4, **TRAIN_100),
    "gold-4shot": dict(context="gold", shots=4, **TRAIN_100),
    "retrieved5-4shot": dict(context="retrieved", top_k=5, shots=4, **TRAIN_100),
    "retrieved5-2shot-gold2077": dict(context="retrieved", top_k=5, shots=2, **GOLD_2077),
    "retrieved5-1shot-gold2077": dict(context="retrieved", top_k=5, shots=1, **GOLD_2077),
    "retrieved3-2shot-gold2077": dict(context="retrieved", top_k=3, shots=2, **GOLD_2077),
    "retrieved5-2shot-all2077": dict(context="retrieved", top_k=5, shots=2, exemplars="train_2077"),
    "retrieved5-1shot-all2077": dict(context="retrieved", top_k=5, shots=1, exemplars="train_2077"),
    "retrieved5-2shot-gold2077-pagenumbers": dict(context="retrieved", top_k=5, shots=2, page_numbers=True,
                                                  **GOLD_2077),
    # for a model finprog trained: its own shots (none) and exemplars, the facts varied
    **{f"retrieved{k}-as-trained": dict(context="retrieved", top_k=k) for k in (3, 5, 7, 10)},
    "gold-as-trained": dict(context="gold"),
    # the cross-encoder of evals/ranker_minilm.py (--minilm DIR) instead of the linear ranker
    "retrieved5-minilm-as-trained": dict(context="retrieved", top_k=5, ranker="minilm"),
    "retrieved5-1shot-all2077-minilm": dict(context="retrieved", top_k=5, shots=1, exemplars="train_2077",
                                            ranker="minilm"),
    # FinQA's own retriever, as the official dev file releases its scores (evals/ranker_finqa.py)
    "retrieved5-finqa-as-trained": dict(context="retrieved", top_k=5, ranker="finqa"),
}
MINILM = {variant for variant, options in VARIANTS.items() if options.get("ranker") == "minilm"}


def run_folder(model: str, variant: str, limit: int | None) -> Path:
    name = [Path(model).name, variant] + ([f"first{limit}"] if limit else [])
    return HERE / "runs" / "context-dev" / "_".join(name)


def table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| variant | model | n | exact | tolerant | outcomes | prompt tok/q | GFLOPs/q | s/q |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, r in rows:
        m = r["metrics"]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items()))
        lines.append(f"| {variant} | {r['model']['name']} | {m['n']} | {m['exact']:.1%} | {m['tolerant']:.1%} "
                     f"| {outcomes} | {m['prompt_tokens_per_example']:.0f} "
                     f"| {r['flops']['inference_per_example'] / 1e9:,.0f} | {r['timing']['seconds_per_example']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: every variant (the cross-encoder's only with --minilm)")
    parser.add_argument("--limit", type=int, help="only dev_200's first N questions")
    parser.add_argument("--minilm", metavar="DIR", help="the cross-encoder `evals/ranker_minilm.py --save DIR` saved")
    args = parser.parse_args()
    args.variants = args.variants or [v for v in VARIANTS if args.minilm or v not in MINILM]
    if not args.minilm and (need := [v for v in args.variants if v in MINILM]):
        parser.error(f"{', '.join(need)} need --minilm DIR")
    if args.minilm:
        retrieval.RANKERS["minilm"] = lambda: CrossEncoderRanker(args.minilm)
    retrieval.RANKERS["finqa"] = ReleasedRanker
    for variant in args.variants:
        out = run_folder(args.model, variant, args.limit)
        if not finished_run(out):
            print(f"== {args.model} {variant}", flush=True)
            options = SolveOptions(model=args.model, data="dev_200", limit=args.limit, mode="program",
                                   constrained=True, **VARIANTS[variant])
            solve(options, out, resume=(out / "run.json").exists(), progress=True)
    rows = [(out.name, record.data) for out in sorted((HERE / "runs" / "context-dev").glob("*"))
            if (record := finished_run(out))]
    text = (f"{header()}\n\nProgram mode, constrained, on dev_200 by prompt context, produced by "
            f"`python evals/context_dev.py` (each variant a run folder under evals/runs/context-dev/).\n\n"
            f"{table(rows)}\n")
    (HERE / "context-dev.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
