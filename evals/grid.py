"""Run a grid of zoo models x techniques with `finprog solve`, resumably, and tabulate the results.

Each cell is an ordinary run folder under evals/runs/GRID/ (predictions.jsonl + run.json),
so an interrupted grid continues where it stopped, and `finprog report evals/runs/GRID`
and `finprog compare` read the same folders. The table of every finished cell goes to
evals/GRID.md.

    python evals/grid.py direct-dev      # direct answers, the four zoo models, dev_200
    python evals/grid.py program-dev     # few-shot programs (free decoding), dev_200
    python evals/grid.py train           # LoRA fine-tuning (learning curves on dev_200's first 50)
    python evals/grid.py test            # direct, program, program constrained (and LoRA) on test_100, whole page
    python evals/grid.py test-retrieved  # the same with solve's default context (retrieved facts)
    python evals/grid.py test --models smollm2-135m gemma3-270m   # a subset of the models
    python evals/grid.py test --models meta-llama/Llama-3.1-8B-Instruct   # any model solve takes (a GPU)

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa (relative, so that
the run records name no machine's folders).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from finprog.provenance import header
from finprog.runs import RUN, RunRecord
from finprog.solve import SolveOptions, solve
from finprog.training import TrainOptions, train

TRAINED = ("lora", "qlora", "full")
ZOO = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TECHNIQUES = {
    "direct": dict(mode="direct"),
    "program": dict(mode="program", constrained=False),
    "program-constrained": dict(mode="program", constrained=True),
}
PAGE = dict(context="page", shots=4, exemplars="train_100")
"""The prompts before retrieval: the whole page, 4 similar exemplars from train_100."""
RETRIEVED = dict(exemplars="train_2077", gold_exemplars=True)
"""solve's defaults (retrieved facts), exemplars from train_2077's records with gold facts."""
RETRIEVED_ALL = dict(exemplars="train_2077")
"""solve's defaults, exemplars from all of train_2077 (those without gold facts shown with retrieved ones)."""
GRIDS = {
    "direct-dev": ("dev_200", ["direct"], PAGE),
    "program-dev": ("dev_200", ["program"], PAGE),
    "test": ("test_100", ["direct", "program", "program-constrained"], PAGE),
    "test-retrieved": ("test_100", ["direct", "program", "program-constrained"], RETRIEVED),
    "test-retrieved-all2077": ("test_100", ["program-constrained"], RETRIEVED_ALL),
}
HERE = Path(__file__).resolve().parent
TRAINING = {
    "smollm2-135m": dict(method="lora", mode="program", train=["train_100", "train3"], eval="dev_200", eval_limit=50,
                         eval_every=10, epochs=2, lr=5e-4, lora_r=16, lora_targets="all-linear", dtype="bf16",
                         eval_batch_size=8, context="page"),  # as the recorded run was made
}
"""LoRA runs (2 epochs over train_100 + train3, 122 records) that fit a 2-core CPU; the test
grid then solves test_100 with each trained model (technique "program-lora")."""


def trained_model(model: str) -> Path:
    return HERE / "runs" / "train" / f"{model}_lora_program"


def finished(out: Path) -> dict | None:
    path = out / RUN
    record = RunRecord.load(path) if path.is_file() else None
    return record.validate().data if record and record.status == "finished" else None


def cells(name: str, models: list[str]) -> list[tuple[str, str, Path]]:
    """(model, technique, run folder) of the grid `name`, in table order."""
    if name == "train":  # each training run, and the same model few-shot on the same questions (the baseline)
        return [cell for model in models if model in TRAINING for cell in (
            (model, "program few-shot", trained_model(model).with_name(f"{model}_program_few-shot")),
            (model, "lora", trained_model(model)))]
    techniques = GRIDS[name][1] + (["program-lora"] if name == "test" else [])
    return [(model, technique, HERE / "runs" / name / f"{model.replace('/', '--')}_{technique}") for model in models
            for technique in techniques if technique != "program-lora" or model in TRAINING]


def run_grid(name: str, models: list[str], limit: int | None, techniques: list[str] | None) -> None:
    for model, technique, out in cells(name, models):
        if finished(out) or (techniques and technique not in techniques):
            continue
        print(f"== {model} {technique}", flush=True)
        resume = (out / "run.json").exists()
        if technique == "lora":
            train(TrainOptions(model=model, **TRAINING[model]), out, resume=resume, progress=True)
        elif name == "train":
            settings = TRAINING[model]
            solve(SolveOptions(model=model, data=settings["eval"], limit=settings["eval_limit"], constrained=False,
                               **PAGE), out, resume=resume, progress=True)
        elif technique == "program-lora":
            solve(SolveOptions.for_model(os.path.relpath(trained_model(model)), data=GRIDS[name][0]), out,
                  resume=resume, progress=True)
        else:
            data, _, prompts = GRIDS[name]
            options = SolveOptions(model=model, data=data, limit=limit, **prompts, **TECHNIQUES[technique])
            solve(options, out, resume=resume, progress=True)


def table(records: list[dict]) -> str:
    """One row per run: EmAcc, outcomes, tokens, time and FLOPs per example (a training run: its last evaluation)."""
    lines = [
        "| model | technique | n | exact | tolerant | program acc. | outcomes | prompt tok/ex | new tok/ex | s/ex | GFLOPs/ex |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, config = r["metrics"], r["config"]
        technique = config["mode"] + (" constrained" if config.get("constrained") else "")
        technique += f" {config['technique']}" if config["technique"] in TRAINED else ""
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items()))
        program = "-" if m["program_accuracy"] is None else f"{m['program_accuracy']:.1%}"
        lines.append(
            f"| {Path(r['model']['name']).name} | {technique} | {m['n']} | {m['exact']:.1%} | {m['tolerant']:.1%} | {program} "
            f"| {outcomes} | {m['prompt_tokens_per_example']:.0f} | {m['new_tokens_per_example']:.1f} "
            f"| {r['timing']['seconds_per_example']:.2f} | {r['flops']['inference_per_example'] / 1e9:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=[*GRIDS, "train"])
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--limit", type=int, help="only the data's first N questions")
    parser.add_argument("--techniques", nargs="+", help="run only these cells (e.g. program direct)")
    args = parser.parse_args()
    run_grid(args.grid, args.models, args.limit, args.techniques)
    records = [record for _, _, out in cells(args.grid, list(dict.fromkeys([*ZOO, *args.models])))
               if (record := finished(out))]
    data = "dev_200's first 50" if args.grid == "train" else GRIDS[args.grid][0]
    data += f"'s first {args.limit}" if args.limit else ""
    command = f"python evals/grid.py {args.grid}" + (f" --limit {args.limit}" if args.limit else "")
    text = f"{header()}\n\nGrid `{args.grid}` ({data}), produced by `{command}` "
    text += "(resumed cell by cell; every run folder is under evals/runs/).\n\n" + table(records) + "\n"
    (HERE / f"{args.grid}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
