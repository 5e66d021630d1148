"""Run a grid of zoo models x techniques with `finprog solve`, resumably, and tabulate the results.

Each cell is an ordinary run folder under evals/runs/GRID/ (predictions.jsonl + run.json),
so an interrupted grid continues where it stopped, and `finprog report evals/runs/GRID`
and `finprog compare` read the same folders. The table of every finished cell goes to
evals/GRID.md.

    python evals/grid.py direct-dev      # direct answers, the four zoo models, dev_200
    python evals/grid.py program-dev     # few-shot programs (free decoding), dev_200
    python evals/grid.py train           # LoRA fine-tuning on 122 records (learning curves on dev_200's first 50)
    python evals/grid.py train-2077      # curves on train_2077, then test_100 with each trained model
    python evals/grid.py test            # direct, program, program constrained (and LoRA) on test_100, whole page
    python evals/grid.py test-retrieved  # the same with solve's default context (retrieved facts)
    python evals/grid.py test --models smollm2-135m gemma3-270m   # a subset of the models
    python evals/grid.py test --models meta-llama/Llama-3.1-8B-Instruct   # any model solve takes (a GPU)

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa (relative, so that
the run records name no machine's folders).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from pathlib import Path
from typing import NamedTuple

from finprog.provenance import header
from finprog.runs import RUN, RunRecord
from finprog.solve import SolveOptions, solve
from finprog.training import TrainOptions, export_adapter, train

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
ADAPTERS = HERE / "adapters"
RETRIEVED_CURVE = dict(train=["train_2077"], eval="dev_200", eval_limit=100, eval_at_start=False, eval_batch_size=8,
                       dtype="bf16", lora_r=16, lora_targets="all-linear")
"""Curves on train_2077 with solve's default context (retrieved facts, zero-shot), evaluated with free
decoding on dev_200's first 100 (CPU time forces the subset), sized to about an hour each on 2 cores."""
TRAINING = {
    "train": {  # 122 records, the whole page: the run made before train_2077 and retrieval
        "smollm2-135m_lora_program": dict(
            model="smollm2-135m", method="lora", train=["train_100", "train3"], eval="dev_200", eval_limit=50,
            eval_every=10, epochs=2, lr=5e-4, lora_r=16, lora_targets="all-linear", dtype="bf16",
            eval_batch_size=8, context="page"),
    },
    "train-2077": {
        "qwen2.5-coder-0.5b_lora_program": dict(model="qwen2.5-coder-0.5b", method="lora", max_steps=120,
                                                eval_every=40, **RETRIEVED_CURVE),
        # twice as long, the rate decaying to 0; batches of 4 whole took 24 GB, so it resumed at step 160 in
        # micro-batches of 1 (the same updates)
        "qwen2.5-coder-0.5b_lora_program_cosine240": dict(
            model="qwen2.5-coder-0.5b", method="lora", max_steps=240, eval_every=80, warmup_steps=10,
            lr_schedule="cosine", micro_batch_size=1, **RETRIEVED_CURVE),
        # a third of the steps: does a shorter decay get as far for less?
        "qwen2.5-coder-0.5b_lora_program_cosine80": dict(
            model="qwen2.5-coder-0.5b", method="lora", max_steps=80, eval_every=80, warmup_steps=10,
            lr_schedule="cosine", micro_batch_size=1, **RETRIEVED_CURVE),
        # the same 80 steps one size up: what do 2.8 times the parameters buy? (rank 8: at rank 16 the adapter,
        # 37 MB in bf16, would pass the 25 MB that an adapter may take in the repository)
        "qwen2.5-coder-1.5b_lora_program_cosine80": dict(
            model="qwen2.5-coder-1.5b", method="lora", max_steps=80, eval_every=80, warmup_steps=10,
            lr_schedule="cosine", micro_batch_size=1, **{**RETRIEVED_CURVE, "lora_r": 8}),
        "smollm2-135m_lora_program": dict(model="smollm2-135m", method="lora", max_steps=180, eval_every=60, lr=5e-4,
                                          **RETRIEVED_CURVE),
        "smollm2-135m_lora_program_122": dict(model="smollm2-135m", method="lora", max_steps=60, eval_every=30,
                                              lr=5e-4, **{**RETRIEVED_CURVE, "train": ["train_100", "train3"]}),
        "smollm2-135m_qlora_program": dict(model="smollm2-135m", method="qlora", max_steps=60, eval_every=30,
                                           lr=5e-4, **RETRIEVED_CURVE),  # the LoRA run's first 60 steps, 4-bit base
        "smollm2-135m_full_program": dict(model="smollm2-135m", method="full", max_steps=48, eval_every=24, lr=1e-4,
                                          **RETRIEVED_CURVE),  # a short run: 1e-4, not the default 1e-5
    },
}
"""Training grids: run folder name -> `finprog train` options. The "train" grid also solves its eval
questions few-shot (the curve's baseline; the "test" grid solves test_100 with its trained model);
"train-2077" exports each LoRA adapter to evals/adapters/NAME and solves test_100 from there, free (as
its curve was evaluated) and constrained."""
TEST_DECODING = {"program": dict(constrained=False), "program-constrained": dict(constrained=True)}
"""How each trained model solves test_100: free (as its curve was evaluated) and constrained."""
SELF_CONSISTENCY = {"program-vote5": dict(constrained=False, samples=5, temperature=0.7)}
"""Also for the best run only (5 times the inference FLOPs): 5 sampled programs per question, the executed
values voting."""
VOTED = ("qwen2.5-coder-0.5b_lora_program_cosine240",)


def finished(out: Path) -> dict | None:
    path = out / RUN
    record = RunRecord.load(path) if path.is_file() else None
    return record.validate().data if record and record.status == "finished" else None


class Cell(NamedTuple):
    """One run folder of a grid and its table row; a trained model's test solve also names its training run
    (a folder beside it) and its decoding's solve options (from TEST_DECODING or SELF_CONSISTENCY)."""

    model: str
    technique: str
    out: Path
    trained_run: str | None = None
    decoding: dict | None = None


def trained_cells(name: str, models: list[str]) -> list[Cell]:
    """A training grid's cells: each run, then what solves with or beside it."""
    runs = HERE / "runs" / name
    result = []
    for run, options in TRAINING[name].items():
        if options["model"] not in models:
            continue
        model, technique = options["model"], run.removeprefix(f"{options['model']}_")
        if name == "train":
            result += [Cell(model, "program few-shot", runs / f"{model}_program_few-shot"),
                       Cell(model, technique, runs / run)]
        else:
            result += [Cell(model, technique, runs / run)] + [
                Cell(model, f"{technique} test {decoding}", runs / f"{run}_test_{decoding}", run, settings)
                for decoding, settings in {**TEST_DECODING, **(SELF_CONSISTENCY if run in VOTED else {})}.items()]
    return result


def cells(name: str, models: list[str]) -> list[Cell]:
    """The cells of the grid `name`, in table order."""
    if name in TRAINING:
        return trained_cells(name, models)
    trained = {options["model"] for options in TRAINING["train"].values()}
    techniques = GRIDS[name][1] + (["program-lora"] if name == "test" else [])
    return [Cell(model, technique, HERE / "runs" / name / f"{model.replace('/', '--')}_{technique}") for model in models
            for technique in techniques if technique != "program-lora" or model in trained]


def trained_model(name: str, run: Path) -> str:
    """What `finprog solve --model` takes for a finished training run: its exported adapter, or the run folder."""
    if name == "train" or TRAINING[name][run.name]["method"] == "full":
        return os.path.relpath(run)
    adapter = ADAPTERS / run.name.replace("_program", "")
    if not adapter.is_dir():
        export_adapter(run, adapter)
    return os.path.relpath(adapter)


def run_cell(name: str, cell: Cell, limit: int | None) -> None:
    model, technique, out = cell.model, cell.technique, cell.out
    resume = (out / RUN).exists()
    if name in TRAINING and out.name in TRAINING[name]:
        train(TrainOptions(**TRAINING[name][out.name]), out, resume=resume, progress=True)
    elif technique == "program few-shot":
        settings = TRAINING[name][f"{model}_lora_program"]
        options = SolveOptions(model=model, data=settings["eval"], limit=settings["eval_limit"],
                               constrained=False, **PAGE)
        solve(options, out, resume=resume, progress=True)
    elif technique == "program-lora":
        run = HERE / "runs" / "train" / f"{model}_lora_program"
        solve(SolveOptions(trained_model("train", run), data="test_100"), out, resume=resume, progress=True)
    elif cell.trained_run:
        model = trained_model(name, out.parent / cell.trained_run)
        options = SolveOptions(model, data="test_100", limit=limit, **cell.decoding)
        solve(options, out, resume=resume, progress=True)
    else:
        data, _, prompts = GRIDS[name]
        options = SolveOptions(model=model, data=data, limit=limit, **prompts, **TECHNIQUES[technique])
        solve(options, out, resume=resume, progress=True)


def run_grid(name: str, models: list[str], limit: int | None, techniques: list[str] | None) -> None:
    """Each unfinished cell in a process of its own, so that one cell's memory (a trained model, an optimizer)
    is given back before the next cell loads its model."""
    spawn = multiprocessing.get_context("spawn")
    for cell in cells(name, models):
        if finished(cell.out) or (techniques and cell.technique not in techniques):
            continue
        print(f"== {cell.model} {cell.technique}", flush=True)
        process = spawn.Process(target=run_cell, args=(name, cell, limit))
        process.start()
        process.join()
        if process.exitcode:
            raise SystemExit(f"grid {name}: the cell {cell.out} stopped with exit status {process.exitcode}; "
                             "run the grid again to resume it")


def table(records: list[dict]) -> str:
    """One row per run: EmAcc, outcomes, tokens, time and FLOPs per example (a training run: its last evaluation)."""
    lines = [
        "| model | technique | data | n | exact | tolerant | program acc. | outcomes | prompt tok/ex | new tok/ex | s/ex | GFLOPs/ex |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, config = r["metrics"], r["config"]
        technique = config["mode"] + (" constrained" if config.get("constrained") else "")
        technique += f" {config['technique']}" if config["technique"] in TRAINED else ""
        technique += f", vote of {config['samples']}" if config.get("samples", 1) > 1 else ""
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items()))
        program = "-" if m["program_accuracy"] is None else f"{m['program_accuracy']:.1%}"
        lines.append(
            f"| {Path(r['model']['name']).name} | {technique} | {Path(config.get('data') or config['eval']).stem} "
            f"| {m['n']} | {m['exact']:.1%} | {m['tolerant']:.1%} | {program} "
            f"| {outcomes} | {m['prompt_tokens_per_example']:.0f} | {m['new_tokens_per_example']:.1f} "
            f"| {r['timing']['seconds_per_example']:.2f} | {r['flops']['inference_per_example'] / 1e9:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=[*GRIDS, *TRAINING])
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--limit", type=int, help="only the data's first N questions")
    parser.add_argument("--techniques", nargs="+", help="run only these cells (e.g. program direct)")
    args = parser.parse_args()
    run_grid(args.grid, args.models, args.limit, args.techniques)
    records = [record for cell in cells(args.grid, list(dict.fromkeys([*ZOO, *args.models])))
               if (record := finished(cell.out))]
    data = {"train": "dev_200's first 50", "train-2077": "dev_200's first 100 while training, then test_100"}.get(
        args.grid) or GRIDS[args.grid][0]
    data += f"'s first {args.limit}" if args.limit else ""
    command = f"python evals/grid.py {args.grid}" + (f" --limit {args.limit}" if args.limit else "")
    text = f"{header()}\n\nGrid `{args.grid}` ({data}), produced by `{command}` "
    text += "(resumed cell by cell; every run folder is under evals/runs/).\n\n" + table(records) + "\n"
    (HERE / f"{args.grid}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
