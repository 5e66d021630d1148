"""A training step in micro-batches of 1, 2 and 4 sequences (`--micro-batch-size`), side by side: time, peak
memory, FLOPs and loss.

The step is the batch that the qwen2.5-coder-0.5b cosine run (cell
`qwen2.5-coder-0.5b_lora_program_cosine240` of evals/studies/train-2077/study.toml, whose
training options it takes) was at when the kernel killed it for memory (step 185: 4
train_2077 examples, retrieved context, zero-shot), run by `training.training_step`
(forward and backward of each micro-batch, clipping, AdamW) on
the same LoRA model (rank 16, all linear layers, bf16 where the CPU computes it
natively). Each setting runs in its own process, so that its peak resident memory
(`ru_maxrss`) is its own: the model loaded, then the median of 2 steps after a warm-up.

    python evals/bench/micro_batch.py > evals/bench/micro_batch.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1, with the CPU to itself.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time

from finprog.provenance import header

MODEL = "qwen2.5-coder-0.5b"
STUDY = "evals/studies/train-2077/study.toml"
RUN = "qwen2.5-coder-0.5b_lora_program_cosine240"
STEP = 184  # 0-based: the step the run was killed in
MICRO = (1, 2, 4)


def one(micro: int) -> dict:
    """Run the step in micro-batches of `micro` in this process; seconds, peak memory, FLOPs, loss."""
    import torch
    from accelerate import Accelerator

    from finprog import flops, prompts, training
    from finprog.data import load_finqa, resolve_data
    from finprog.study import load_study

    declared = next(run.options for run in load_study(STUDY).cells[RUN].runs if run.trains)
    options = dataclasses.replace(declared, micro_batch_size=micro)
    accelerator = Accelerator(cpu=True)
    data = training.validate(options)
    loaded, model = training.trainable_model(options, data, "cpu")
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainable = [p for p in model.parameters() if p.requires_grad]
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(trainable, lr=options.lr))
    examples = load_finqa(resolve_data("train_2077")[0])
    indices = training.batch_indices(len(examples), options, STEP, 0, 1)
    retriever = prompts.ExemplarRetriever([])
    batch = [training.encode(examples[i], loaded.tokenizer, options, retriever) for i in indices]
    micros = [training.collate(m, loaded.tokenizer.pad_token_id, "cpu") for m in training.micro_batches(batch, options)]
    times, losses = [], []
    for _ in range(3):
        started = time.perf_counter()
        losses.append(training.training_step(accelerator, model, optimizer, trainable, micros, options, options.lr))
        times.append(time.perf_counter() - started)
    shape = flops.ModelShape.from_config(loaded.config)
    return {"micro": micro, "seconds": statistics.median(times[1:]), "first_loss": losses[0],
            "loaded_gb": loaded_rss / 2**20, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "flops": training.step_flops(shape, batch, options), "lengths": sorted(e.length for e in batch)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
        return
    print(header())
    print(f"{MODEL} LoRA (rank 16, all linear layers), the cosine run's step {STEP + 1} (4 train_2077 examples), "
          "forward + backward + AdamW, median of 2 steps after a warm-up, each setting in its own process\n")
    results = []
    for micro in MICRO:
        done = subprocess.run([sys.executable, __file__, "--one", str(micro)], capture_output=True, text=True)
        if done.returncode:
            print(f"micro-batch {micro}: the process failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"sequence lengths: {results[0]['lengths']} tokens\n")
    print(f"{'micro-batch':>11}{'s/step':>8}{'peak GB':>9}{'GB loaded':>10}{'GFLOPs':>9}{'first loss':>12}")
    for r in results:
        print(f"{r['micro']:>11}{r['seconds']:>8.2f}{r['peak_gb']:>9.1f}{r['loaded_gb']:>10.1f}{r['flops'] / 1e9:>9,.0f}"
              f"{r['first_loss']:>12.4f}")
    whole, single = results[-1], results[0]
    print(f"\nmicro-batches of 1 against the whole batch: {single['seconds'] / whole['seconds']:.2f}x the time, "
          f"{(single['peak_gb'] - single['loaded_gb']) / (whole['peak_gb'] - whole['loaded_gb']):.2f}x the memory "
          f"above the loaded model, {single['flops'] / whole['flops']:.2f}x the FLOPs")


if __name__ == "__main__":
    main()
