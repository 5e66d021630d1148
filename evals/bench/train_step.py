"""A LoRA training step with logits over the reply only, against logits at every position, side by side.

"every position" is how `finprog train` stepped before: right-padded batches and
transformers' own loss over labels that mask the prompt, so the LM head ran over every
token. "reply window" is `training.reply_loss`: left-padded batches, the head over the
last R + 1 positions. Both run the same 4 training examples of train_2077 (retrieved
context, zero-shot, as `finprog train` encodes them) through the same LoRA model (rank
16, all linear layers, bf16 where the CPU computes it natively): forward and backward, no
optimizer step, one warm-up step, then the median of 3 steps each.

    python evals/bench/train_step.py > evals/bench/train_step.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa, with the CPU to itself.
"""

from __future__ import annotations

import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from finprog import flops, models, prompts, training
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
BATCH = 4


def every_position(model, batch, pad_id):
    """The loss as before: right padding, labels over every position (IGNORE_INDEX on prompt and padding)."""
    width = max(e.length for e in batch)
    ids = torch.tensor([e.prompt + e.target + [pad_id] * (width - e.length) for e in batch])
    mask = torch.tensor([[1] * e.length + [0] * (width - e.length) for e in batch])
    labels = torch.tensor([[training.IGNORE_INDEX] * len(e.prompt) + e.target
                           + [training.IGNORE_INDEX] * (width - e.length) for e in batch])
    return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss


def seconds(step) -> tuple[float, float]:
    """(median seconds of 3 steps after a warm-up, the last loss)."""
    times = []
    for _ in range(4):
        started = time.perf_counter()
        loss = step()
        loss.backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), loss.item()


def main() -> None:
    print(header())
    print(f"LoRA rank 16 on all linear layers, {BATCH} train_2077 examples per step (retrieved context, zero-shot), "
          "forward + backward, median of 3 steps after a warm-up\n")
    examples = load_finqa(resolve_data("train_2077")[0])[:BATCH]
    print(f"{'model':<20}{'loss over':<17}{'s/step':>8}{'loss':>8}{'GFLOPs/step':>13}")
    for name in MODELS:
        loaded = models.load_model(name)
        options = training.TrainOptions(model=name, train="train_2077", eval="dev_200", lora_r=16,
                                        lora_targets="all-linear")
        batch = [training.encode(e, loaded.tokenizer, options, prompts.ExemplarRetriever([])) for e in examples]
        shape = flops.ModelShape.from_config(loaded.model.config.to_dict())
        lora = get_peft_model(loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
        lora.train()
        pad = loaded.tokenizer.pad_token_id
        width = max(e.length for e in batch)
        results = {
            "every position": (seconds(lambda: every_position(lora, batch, pad)), None),
            "reply window": (seconds(lambda: training.reply_loss(lora, training.collate(batch, pad, "cpu"))),
                             training.reply_window(batch) + 1),
        }
        for label, ((step_seconds, loss), logits) in results.items():
            count = flops.training_step_flops(shape, width, BATCH, method="lora", lora_rank=16,
                                              targets="all-linear", logits=logits)
            print(f"{name:<20}{label:<17}{step_seconds:>8.2f}{loss:>8.3f}{count / 1e9:>13,.0f}")
        ratio = results["reply window"][0][0] / results["every position"][0][0]
        print(f"{name:<20}reply window / every position: {ratio:.2f}x the time\n")
        del lora, loaded


if __name__ == "__main__":
    main()
