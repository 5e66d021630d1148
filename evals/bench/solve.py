"""The prototype's direct-answer loop against `finprog solve --mode direct`, same machine, model and records.

The prototype generated one example at a time in fp32 with `model.generate(**inputs,
max_new_tokens=20)` (greedy) and read the answer from the decoded text. finprog stops
each sequence at the end of its answer line, uses bf16 where the CPU supports it (with
fp32 logits), and batches prompts of similar length (left padding) on a GPU; it is timed with its
defaults and with each default changed alone. All completions are scored by the same
finprog rules, so any accuracy difference comes from generation alone.

    python evals/bench/solve.py [--model qwen2.5-coder-0.5b] [--data train3] > evals/bench/solve.txt
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from finprog import answers, evaluation, prompts
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header
from finprog.solve import SolveOptions, solve


def prototype_loop(model_name: str, examples) -> tuple[list[str], float]:
    """One example at a time, fp32, the prototype's generate call; returns completions and seconds."""
    import torch

    from finprog.models import load_model

    loaded = load_model(model_name, dtype="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    completions = []
    start = time.perf_counter()
    for example in examples:
        text = prompts.apply_chat_template(tokenizer, prompts.direct_prompt(example))
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=20, pad_token_id=tokenizer.pad_token_id)
        completions.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return completions, time.perf_counter() - start


FINPROG_SETTINGS = {
    "finprog default": {},
    "finprog batch 8": {"batch_size": 8},
    "finprog fp32": {"dtype": "fp32"},
}
"""finprog's defaults (bf16 where the CPU has it, batch 1 on a CPU), and each default changed alone."""


def finprog_run(model: str, path: Path, examples, changes: dict) -> tuple[list[str], float]:
    """`finprog solve --mode direct` with its defaults plus `changes`; completions and generation seconds."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        record = solve(SolveOptions(model=model, mode="direct", data=str(path), **changes), Path(folder), progress=False)
        seconds = time.perf_counter() - start - record["timing"]["model_load_seconds"]
        rows = {r["id"]: r for r in map(json.loads, (Path(folder) / "predictions.jsonl").read_text().splitlines())}
    return [rows[e.id]["completion"] for e in examples], seconds


def accuracy(examples, completions) -> dict:
    gold = [evaluation.gold_value(e) for e in examples]
    values = [answers.read_answer(c) for c in completions]
    n = len(examples)
    return {
        "exact": sum(answers.exact_match(v, g) for v, g in zip(values, gold)) / n,
        "tolerant": sum(answers.tolerant_match(v, e.answer, g) for v, e, g in zip(values, examples, gold)) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="train3")
    args = parser.parse_args()
    path, _ = resolve_data(args.data)
    examples = load_finqa(path)

    print(header())
    print(f"model {args.model}, {len(examples)} records of {path.name}")
    columns = {"prototype loop": prototype_loop(args.model, examples)}
    for label, changes in FINPROG_SETTINGS.items():
        columns[label] = finprog_run(args.model, path, examples, changes)

    width = 20
    print(f"{'':<30}" + "".join(f"{label:>{width}}" for label in columns))
    scores = {label: accuracy(examples, completions) for label, (completions, _) in columns.items()}
    for metric in ("exact", "tolerant"):
        print(f"{metric + ' EmAcc':<30}" + "".join(f"{scores[label][metric]:>{width}.2%}" for label in columns))
    print(f"{'wall seconds (model loaded)':<30}" + "".join(f"{seconds:>{width}.1f}" for _, seconds in columns.values()))
    proto_completions, proto_seconds = columns["prototype loop"]
    print(f"{'speed-up over the prototype':<30}" + "".join(f"{proto_seconds / seconds:>{width - 1}.2f}x"
                                                            for _, seconds in columns.values()))
    print(f"{'same first line as prototype':<30}" + "".join(
        f"{sum(p.strip().split(chr(10))[0] == c.strip() for p, c in zip(proto_completions, completions)):>{width}}"
        for completions, _ in columns.values()))


if __name__ == "__main__":
    main()
