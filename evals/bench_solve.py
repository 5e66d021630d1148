"""The prototype's direct-answer loop against `finprog solve --mode direct`, same machine, model and records.

The prototype generated one example at a time in fp32 with `model.generate(**inputs,
max_new_tokens=20)` (greedy) and read the answer from the decoded text. finprog batches
prompts of similar length (left padding), stops each sequence at the end of its answer
line, and uses bf16 where the CPU supports it. Both completions are scored by the same
finprog rules, so any accuracy difference comes from generation alone.

    python evals/bench_solve.py [--model qwen2.5-coder-0.5b] [--data train3]
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
    proto_completions, proto_seconds = prototype_loop(args.model, examples)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        record = solve(SolveOptions(model=args.model, mode="direct", data=str(path)), Path(folder), progress=False)
        finprog_seconds = time.perf_counter() - start - record["timing"]["model_load_seconds"]
        rows = {r["id"]: r for r in map(json.loads, (Path(folder) / "predictions.jsonl").read_text().splitlines())}
    finprog_completions = [rows[e.id]["completion"] for e in examples]

    proto, ours = accuracy(examples, proto_completions), accuracy(examples, finprog_completions)
    print(f"{'':<34}{'prototype loop':>16}{'finprog solve':>16}")
    print(f"{'exact EmAcc':<34}{proto['exact']:>16.2%}{ours['exact']:>16.2%}")
    print(f"{'tolerant EmAcc':<34}{proto['tolerant']:>16.2%}{ours['tolerant']:>16.2%}")
    print(f"{'wall seconds (model loaded)':<34}{proto_seconds:>16.1f}{finprog_seconds:>16.1f}")
    print(f"{'seconds per example':<34}{proto_seconds / len(examples):>16.2f}{finprog_seconds / len(examples):>16.2f}")
    print(f"speed-up: {proto_seconds / finprog_seconds:.2f}x "
          f"(finprog: batch {record['config']['batch_size']}, {record['model']['dtype']}, "
          f"max_new_tokens {record['config']['max_new_tokens'] or 'default'}, stop at end of answer line)")
    same = sum(p.strip().split("\n")[0] == f.strip() for p, f in zip(proto_completions, finprog_completions))
    print(f"identical first answer line: {same} of {len(examples)}")


if __name__ == "__main__":
    main()
