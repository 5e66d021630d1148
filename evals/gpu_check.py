"""finprog's CUDA paths in one prepared run: quantized loading, batched and constrained generation, training, FLOPs.

A random-initialised llama (about 76M parameters on a GPU) with the tests' byte-level
tokenizer (built in code, so nothing is downloaded) is saved as a checkpoint folder and
driven through finprog's own command line (`--model FOLDER`): `solve` in direct mode in
bf16 and fp32 (batch 8 and batch 1), 4-bit and 8-bit, `solve` in program mode with constrained
decoding, `train --method lora` and `--method qlora`, `flops --check`, and data-parallel
training when there are two GPUs. Each check is recorded as pass, fail (with its error)
or skipped, with its numbers; one failing check does not stop the others. The model is
untrained, so accuracies are about zero: what is checked is that the paths run.

    python evals/gpu_check.py --out evals/gpu_check                # on a GPU: a few minutes
    python evals/gpu_check.py --out /tmp/gpu_check --sizes dry     # anywhere: tiny sizes, under a minute on a CPU
    python evals/gpu_check.py --out evals/gpu_check_cpu --sizes gpu  # a rehearsal on a CPU: about 8 minutes

The sizes default to `gpu` with CUDA and to `dry` without. Writes gpu_check.md and
gpu_check.json into --out; exits 1 when a check failed. `evals/gpu_wheels.py` prepares what
a GPU machine without network access needs.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

from finprog.runs import PREDICTIONS, RUN, read_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # PEFT otherwise asks the hub when it saves an adapter

REPO = Path(__file__).resolve().parents[1]
REPORT = "gpu_check"
FLOPS_TOLERANCE = 1e-3  # largest relative error of an analytic count against FlopCounterMode


@dataclass(frozen=True)
class Plan:
    """How big the check is: the random model's shape and how much each check runs."""

    name: str
    sizes: dict  # config fields of the random llama (the rest as tests/conftest.py builds it)
    questions: int  # dev questions per `solve` run
    shots: int  # program-mode exemplars
    max_prompt_tokens: int | None  # for `solve` (None: no cut)
    max_new_tokens: int | None  # for `solve` (None: finprog's defaults)
    train_steps: int  # per training run: the loss of its first half is compared with its second
    train_prompt_tokens: int
    flops_tokens: int  # prompt and training tokens of `flops --check`
    dtype: str = "bf16"  # for training (the bf16 and quantized `solve` runs say their own)
    train_examples: int = 8  # trained on again and again, so that the loss falls within a few steps
    batch_size: int = 4


GPU = Plan("gpu", dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, max_position_embeddings=16384),
           questions=20, shots=4, max_prompt_tokens=None, max_new_tokens=None,
           train_steps=8, train_prompt_tokens=1024, flops_tokens=512)
DRY = Plan("dry", dict(max_position_embeddings=2048), questions=2, shots=0, max_prompt_tokens=384,
           max_new_tokens=8, train_steps=4, train_prompt_tokens=256, flops_tokens=64, dtype="fp32")
PLANS = (GPU, DRY)


class Skipped(Exception):
    """A check that cannot run here; the message says why."""


@dataclass
class Context:
    """What the checks share: the plan, a scratch folder, the data files and the saved checkpoint."""

    plan: Plan
    work: Path
    dev: str
    train: str
    device: str  # where finprog's "auto" device puts models: cuda or cpu

    @property
    def checkpoint(self) -> Path:
        return self.work / "checkpoint"


# ---------------------------------------------------------------- the checks


def build_checkpoint(ctx: Context) -> dict:
    """The random llama and its byte-level tokenizer, saved as an ordinary checkpoint folder."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("llama", tokenizer, **ctx.plan.sizes)
    model.save_pretrained(ctx.checkpoint)
    tokenizer.save_pretrained(ctx.checkpoint)
    return {"passed": True, "params": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "tokenizer": "byte-level BPE built in code (tests/conftest.py)"}


def batched_vs_batch_1(ctx: Context) -> dict:
    """Batch 1 against batch 8, in fp32 and in bf16: padding a batch must not change what is generated.

    fp32 must agree on every first answer line. In bf16 a padded batch rounds differently, and
    the random model's long completions drift apart after a while: those are counted, with the
    characters the two agree on before they part, and do not fail the check.
    """
    numbers = _solve(ctx, "direct-bf16-batch1", "direct", "--batch-size", 1, "--dtype", "bf16")
    for batch in (8, 1):
        _solve(ctx, f"direct-fp32-batch{batch}", "direct", "--batch-size", batch, "--dtype", "fp32")
    fp32 = _first_lines_differ(ctx, "direct-fp32-batch8", "direct-fp32-batch1")
    bf16 = _first_lines_differ(ctx, "direct-bf16", "direct-bf16-batch1")
    numbers.update({f"{dtype}_{key}": value for dtype, found in (("fp32", fp32), ("bf16", bf16))
                    for key, value in found.items()})
    numbers["passed"] = numbers["passed"] and fp32["compared"] == bf16["compared"] == ctx.plan.questions \
        and fp32["first_lines_differ"] == 0
    return numbers


def train(ctx: Context, method: str) -> dict:
    out = ctx.work / f"train-{method}"
    _finprog(*_train_args(ctx, method, out))
    return _train_numbers(ctx, json.loads((out / RUN).read_text()))


def flops_check(ctx: Context) -> dict:
    """`finprog flops --check`: analytic counts against torch's FlopCounterMode on the model as finprog loads it."""
    tokens = ctx.plan.flops_tokens
    result = json.loads(_finprog("flops", ctx.checkpoint, "--check", "--json", "--prompt-tokens", tokens,
                                 "--new-tokens", 8, "--train-tokens", tokens))["check"]
    errors = {row["what"]: row["rel_error"] for row in result["rows"]}
    return {"passed": max(map(abs, errors.values())) <= FLOPS_TOLERANCE, "tolerance": FLOPS_TOLERANCE,
            "rel_error": errors, "measured": {row["what"]: row["measured"] for row in result["rows"]}}


def data_parallel(ctx: Context) -> dict:
    """LoRA training over 2 processes with torchrun, when this machine has 2 GPUs."""
    import torch

    if torch.cuda.device_count() < 2:
        raise Skipped(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    out = ctx.work / "train-lora-2gpu"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "finprog",
               *map(str, _train_args(ctx, "lora", out))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"torchrun exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return _train_numbers(ctx, json.loads((out / RUN).read_text()))


CHECKS = {
    "checkpoint": build_checkpoint,
    "solve direct bf16": lambda ctx: _solve(ctx, "direct-bf16", "direct", "--batch-size", 8, "--dtype", "bf16"),
    "batched vs batch-1": batched_vs_batch_1,
    "solve direct 4bit": lambda ctx: _solve(ctx, "direct-4bit", "direct", "--batch-size", 8, "--quant", "4bit"),
    "solve direct 8bit": lambda ctx: _solve(ctx, "direct-8bit", "direct", "--batch-size", 8, "--quant", "8bit"),
    "solve program constrained": lambda ctx: _solve(ctx, "program-constrained", "program", "--constrained",
                                                    "--shots", ctx.plan.shots, "--batch-size", 8),
    "train lora": lambda ctx: train(ctx, "lora"),
    "train qlora": lambda ctx: train(ctx, "qlora"),
    "flops check": flops_check,
    "data parallel": data_parallel,
}
"""Each check returns its numbers with `passed`, or raises (fail) or raises Skipped; they run in this order."""


# ---------------------------------------------------------------- finprog's command line, as the checks use it


class _Echo(io.StringIO):
    """Keeps what is written to it and passes it on to `stream` at once."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


def _finprog(*args) -> str:
    """Run the `finprog` command line in this process; returns its stdout (its stderr shows as it comes)."""
    from finprog.cli import main

    stdout, stderr = io.StringIO(), _Echo(sys.stderr)
    with redirect_stdout(stdout), redirect_stderr(stderr):
        status = main([str(arg) for arg in args])
    if status:
        last = stderr.getvalue().strip().splitlines()[-1:]
        raise RuntimeError(f"finprog {args[0]} exited with {status}: {' '.join(last)}")
    return stdout.getvalue()


def _solve(ctx: Context, name: str, mode: str, *options) -> dict:
    """`finprog solve` on the dev questions into folder `name`; seconds per question, tokens per second, device."""
    plan, out = ctx.plan, ctx.work / name
    args = ["solve", "--model", ctx.checkpoint, "--mode", mode, "--data", ctx.dev, "--exemplars", ctx.train,
            "--limit", plan.questions, "--out", out, "--json", *options]
    args += ["--max-prompt-tokens", plan.max_prompt_tokens] if plan.max_prompt_tokens else []
    args += ["--max-new-tokens", plan.max_new_tokens] if plan.max_new_tokens else []
    _finprog(*args)
    record = json.loads((out / RUN).read_text())
    metrics, timing = record["metrics"], record["timing"]
    return {
        "passed": metrics["n"] == plan.questions and record["model"]["device"].startswith(ctx.device),
        "device": record["model"]["device"], "dtype": record["model"]["dtype"], "questions": metrics["n"],
        "exact": metrics["exact"], "outcomes": metrics["outcomes"],
        "prompt_tokens_per_question": metrics["prompt_tokens_per_example"],
        "seconds_per_question": timing["seconds_per_example"],
        "new_tokens_per_second": metrics["new_tokens_per_example"] * metrics["n"] / timing["seconds_total"],
        "model_load_seconds": timing["model_load_seconds"],
    }


def _train_args(ctx: Context, method: str, out: Path) -> list:
    """`finprog train` for `plan.train_steps` steps on a few training examples, evaluated after each half."""
    plan = ctx.plan
    return ["train", "--model", ctx.checkpoint, "--method", method, "--train", _train_subset(ctx), "--eval", ctx.dev,
            "--max-steps", plan.train_steps, "--eval-every", plan.train_steps // 2, "--no-eval-at-start",
            "--eval-limit", 2, "--max-new-tokens", 16, "--batch-size", plan.batch_size, "--lr", 1e-3,
            "--max-prompt-tokens", plan.train_prompt_tokens, "--dtype", plan.dtype, "--out", out, "--json"]


def _train_subset(ctx: Context) -> Path:
    """The training file's first records that have a program, as a FinQA file of their own."""
    from finprog.data import load_finqa, resolve_data

    path = ctx.work / "train_subset.json"
    if not path.is_file():
        source = resolve_data(ctx.train)[0]
        keep = {e.id for e in load_finqa(source) if e.program}
        records = [r for r in json.loads(source.read_text()) if r["id"] in keep][: ctx.plan.train_examples]
        path.write_text(json.dumps(records))
    return path


def _train_numbers(ctx: Context, record: dict) -> dict:
    """A training run's losses (mean of each half), FLOPs and speed; it passes when the loss fell and FLOPs were counted."""
    losses = [point["train_loss"] for point in record["curve"]]
    training_flops = record["flops"]["training_total"]
    return {
        "passed": (record["steps"] == ctx.plan.train_steps and len(losses) == 2 and losses[1] < losses[0]
                   and training_flops > 0 and record["model"]["device"].startswith(ctx.device)),
        "device": record["model"]["device"], "steps": record["steps"], "loss_first_half": losses[0],
        "loss_second_half": losses[-1], "training_flops": training_flops,
        "flops_per_token": training_flops / record["tokens"], "seconds_per_step": record["timing"]["seconds_per_step"],
        "trainable_params": record["model"]["trainable"],
    }


def _first_lines_differ(ctx: Context, batched: str, single: str) -> dict:
    """How many first answer lines of two `solve` runs differ, and how far they agree where they do."""
    first = [{row["id"]: _first_line(row["completion"]) for row in read_rows(ctx.work / name / PREDICTIONS)}
             for name in (batched, single)]
    differ = [key for key in first[1] if first[1][key] != first[0].get(key)]
    agreed = [len(os.path.commonprefix([first[0].get(key, ""), first[1][key]])) for key in differ]
    return {"compared": len(first[0].keys() & first[1].keys()), "first_lines_differ": len(differ),
            "differing_ids": differ[:5], "agreed_chars_before_parting": agreed[:5]}


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


# ---------------------------------------------------------------- running and reporting


def run_check(name: str, check, ctx: Context) -> dict:
    """One check, timed, its peak GPU memory measured; an error is recorded, never raised."""
    import torch

    cuda = torch.cuda.is_available()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = {"check": name}
    try:
        numbers = check(ctx)
        result["status"] = "pass" if numbers.pop("passed") else "fail"
        result["numbers"] = numbers
    except Skipped as reason:
        result.update(status="skipped", reason=str(reason))
    except Exception as error:  # a failing check is recorded and the next one runs
        result.update(status="fail", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-4000:])
    result["seconds"] = time.perf_counter() - started
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"[gpu_check] {name}: {result['status']} ({result['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return result


def environment(plan: Plan) -> dict:
    """Date, machine, package versions and the CUDA that torch sees."""
    import torch

    from finprog.provenance import PACKAGES, machine, now, versions

    return {"date": now(), "plan": asdict(plan), "machine": machine(),
            "versions": versions((*PACKAGES, "llguidance", "tokenizers", "huggingface-hub")),
            "torch_cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# finprog GPU check ({env['plan']['name']} sizes, on {'CUDA' if env['gpus'] else 'a CPU'})",
        "",
        f"{env['date']} | {env['machine']} | CUDA {env['torch_cuda']}, {env['gpus']} GPU(s)",
        "",
        ", ".join(f"{name} {version}" for name, version in env["versions"].items()),
        "",
        f"{len(report['checks'])} of {len(CHECKS)} checks run: "
        f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped in "
        f"{report['seconds']:.0f} s. The model is random: accuracies near zero are expected.",
        "",
        "| check | status | seconds | peak GPU MiB | numbers |",
        "|---|---|---:|---:|---|",
    ]
    for result in report["checks"]:
        detail = result.get("error") or result.get("reason") or _numbers_text(result["numbers"])
        peak = f"{result['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in result else "-"
        lines.append(f"| {result['check']} | {result['status']} | {result['seconds']:.1f} | {peak} | "
                     f"{detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _numbers_text(numbers: dict) -> str:
    def shown(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
        return str(value)

    return "; ".join(f"{key} {shown(value)}" for key, value in numbers.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--sizes", choices=[plan.name for plan in PLANS],
                        help="gpu: the full check; dry: tiny sizes (default: gpu with CUDA, else dry)")
    parser.add_argument("--dev", default="dev_200", help="FinQA file or name of the questions (default: dev_200)")
    parser.add_argument("--train", default="train_100", help="FinQA file or name to train on and take exemplars from")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    plan = next(plan for plan in PLANS if plan.name == (args.sizes or ("gpu" if cuda else "dry")))
    started, env, results = time.perf_counter(), environment(plan), []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Context(plan, Path(work), args.dev, args.train, "cuda" if cuda else "cpu")
        for name, check in CHECKS.items():
            results.append(run_check(name, check, ctx))
            report = write_report(args.out, env, results, time.perf_counter() - started)  # a cut-off run keeps its checks
    print(markdown(report))
    return 1 if report["failed"] else 0


def write_report(out: Path, env: dict, results: list[dict], seconds: float) -> dict:
    """gpu_check.json and gpu_check.md for the checks done so far."""
    statuses = [result["status"] for result in results]
    report = {"environment": env, "seconds": seconds, "passed": statuses.count("pass"),
              "failed": statuses.count("fail"), "skipped": statuses.count("skipped"), "checks": results}
    (out / f"{REPORT}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{REPORT}.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    sys.exit(main())
