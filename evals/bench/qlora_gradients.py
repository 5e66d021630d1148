"""QLoRA's adapter gradients against LoRA's on the same 4-bit weights dequantized into an ordinary fp32 model.

The QLoRA model is smollm2-135m as `training.trainable_model` builds it for the train-2077 study's QLoRA cell
(4-bit NF4 base, LoRA rank 8 on q_proj and v_proj), in fp32 and with lora_dropout 0; the reference is
smollm2-135m in fp32 with each 4-bit layer's weight replaced by its dequantization (bitsandbytes'
`dequantize_4bit`) and the same adapters, whose B matrices are filled with small random values in both, so
that every LoRA matrix has a gradient. The batches are train_2077's first as the loop encodes and orders it:
a single token (its next-token loss), a micro-batch of 1 example and the batch of 4 (`training.reply_loss`).
Each is measured on the fresh model with the 4-bit layers computing in fp32 (so that both models round
alike), again after an evaluation (one dev_200 question, as the loop evaluates), and then with the 4-bit
layers computing in bf16, as finprog configures them. Per case: the largest absolute difference over all
LoRA gradients, the same over the largest gradient (relative to each element or each parameter it would be
noise over noise: a lone token's attention weights are constant, so its q_proj gradients are 0 but for
rounding) and both gradient norms.

    python evals/bench/qlora_gradients.py      # writes evals/bench/qlora_gradients.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa and HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from finprog import models, prompts, training
from finprog.provenance import header
from finprog.training import TrainOptions

HERE = Path(__file__).resolve().parent
OPTIONS = {"model": "smollm2-135m", "train": "train_2077", "eval": "dev_200", "method": "qlora", "dtype": "fp32",
           "lora_dropout": 0.0, "eval_limit": 1}


def next_token_loss(model, token: int, label: int):
    logits = model(input_ids=torch.tensor([[token]]), use_cache=False).logits[:, -1]
    return torch.nn.functional.cross_entropy(logits, torch.tensor([label]))


def adapter_gradients(model, loss_of) -> dict:
    model.zero_grad(set_to_none=True)
    loss_of(model).backward()
    return {name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for name, p in model.named_parameters() if p.requires_grad}


def norm(gradients: dict) -> float:
    return torch.cat([gradient.flatten() for gradient in gradients.values()]).norm().item()


def main() -> None:
    torch.set_num_threads(1)
    options = TrainOptions(**OPTIONS)
    data = training.validate(options)
    qlora, dequantized, four_bit = training.qlora_and_dequantized(options, data)
    configured = four_bit[0].compute_dtype
    tokenizer = models.load_tokenizer(options.model)
    retriever = prompts.ExemplarRetriever([])
    encoded = [training.encode(e, tokenizer, options, retriever) for e in data.train]
    batch = [encoded[i] for i in training.batch_indices(len(encoded), options, step=0, rank=0, world=1)]
    first = training.micro_batches(batch, replace(options, micro_batch_size=1))[0][0]
    pad = tokenizer.pad_token_id
    losses = {
        "single token": (lambda model: next_token_loss(model, first.prompt[0], first.prompt[1]), "1 x 1"),
        "micro-batch of 1": (lambda model: training.reply_loss(model, training.collate([first], pad, "cpu")),
                             f"1 x {first.length}"),
        f"batch of {len(batch)}": (lambda model: training.reply_loss(model, training.collate(batch, pad, "cpu")),
                                   f"{len(batch)} x {max(e.length for e in batch)}"),
    }
    expected = {name: adapter_gradients(dequantized, loss_of) for name, (loss_of, _) in losses.items()}

    adapters = sum(p.numel() for p in qlora.parameters() if p.requires_grad)
    lines = [
        header(), "",
        (f"{options.model} QLoRA (4-bit NF4, LoRA rank {options.lora_r} on {options.lora_targets}, fp32, no dropout) "
         f"against LoRA on its dequantized weights: {adapters:,} LoRA parameters; train_2077's first batch"),
        "max rel diff: the max abs diff over the largest gradient (a lone token's q_proj gradients are rounding)", "",
        (f"{'state':<21}{'4-bit compute':<15}{'batch':<18}{'sequences':>10}{'max abs diff':>14}{'max rel diff':>14}"
         f"{'norm QLoRA':>12}{'norm dequantized':>18}"),
    ]

    def measure(state: str, compute: torch.dtype) -> None:
        for layer in four_bit:
            layer.compute_dtype = compute
        for name, (loss_of, size) in losses.items():
            got, reference = adapter_gradients(qlora, loss_of), expected[name]
            difference = max((got[p] - reference[p]).abs().max().item() for p in reference)
            largest = max(gradient.abs().max().item() for gradient in reference.values())
            lines.append(f"{state:<21}{str(compute).removeprefix('torch.'):<15}{name:<18}{size:>10}"
                         f"{difference:>14.3e}{difference / largest:>14.3e}{norm(got):>12.4g}{norm(reference):>18.4g}")
            print(lines[-1], flush=True)

    measure("fresh", torch.float32)
    qlora.eval()
    training.evaluate_model(qlora, tokenizer, data.eval, options, retriever)
    qlora.train()
    measure("after an evaluation", torch.float32)
    measure("after an evaluation", configured)
    text = "\n".join(lines) + "\n"
    (HERE / "qlora_gradients.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
