"""QLoRA's adapter gradients equal LoRA's on the same 4-bit weights dequantized into an ordinary fp32 model.

Checked on a fresh model and after an evaluation: on a CPU with AVX512-BF16, bitsandbytes repacked the 4-bit
weights at an evaluation for an inference kernel without a backward, and every later step lost the gradient
through the base (what `training.trainable_model` now prevents; other CPUs never repacked).
"""

import pytest

from finprog import models, prompts, training
from finprog.training import TrainOptions

BATCHES = {  # (prompt ids, reply ids) of each sequence
    "single token": [([], [40])],  # its loss: the next-token loss of NEXT_TOKEN
    "micro-batch of 1": [([2, 30, 40, 50, 60], [70, 80, 1])],
    "batch of 3, padded": [([2, 30, 40, 50, 60], [70, 80, 1]), ([2, 31, 41], [71, 1]),
                           ([2, 32, 42, 52, 62, 72, 82], [73, 83, 93, 1])],
}
NEXT_TOKEN = 50  # the single token's label
FIRST_LORA_A = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight"  # behind every 4-bit layer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def four_bit_runs():
    import torch

    try:
        models.check_bitsandbytes("4bit", torch.device("cpu"), torch.bfloat16)
    except models.QuantizationUnavailableError as error:
        pytest.skip(f"QLoRA needs 4-bit bitsandbytes: {error}")


def qlora_and_dequantized(checkpoint, files) -> tuple:
    """(options, data, the QLoRA model, its dequantized LoRA twin), both computing in fp32 to round alike.

    (finprog's 4-bit layers compute in bf16.)
    """
    import torch

    options = TrainOptions(model=checkpoint, train=str(files / "train.json"), eval=str(files / "eval.json"),
                           mode="direct", method="qlora", dtype="fp32", lora_dropout=0.0, lora_targets="all-linear",
                           eval_limit=1, eval_batch_size=1, max_new_tokens=2)
    data = training.validate(options)
    qlora, dequantized, four_bit = training.qlora_and_dequantized(options, data)
    for layer in four_bit:
        layer.compute_dtype = torch.float32
    return options, data, qlora, dequantized


def adapter_gradients(model, batch: list[training.Encoded]) -> dict:
    """The LoRA gradients of one batch's loss (the reply loss; a lone token's: its next-token loss)."""
    import torch

    model.zero_grad(set_to_none=True)
    if batch[0].length == 1:
        logits = model(input_ids=torch.tensor([batch[0].target]), use_cache=False).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([NEXT_TOKEN]))
    else:
        loss = training.reply_loss(model, training.collate(batch, pad_id=0, device="cpu"))
    loss.backward()
    return {name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("evaluated", [False, True], ids=["fresh", "after an evaluation"])
@pytest.mark.parametrize("shape", BATCHES)
def test_qlora_gradients_equal_those_of_the_dequantized_model(tiny_checkpoint_dir, demo_split, shape, evaluated):
    import torch

    options, data, qlora, dequantized = qlora_and_dequantized(tiny_checkpoint_dir, demo_split)
    if evaluated:  # as the training loop evaluates
        qlora.eval()
        training.evaluate_model(qlora, models.load_tokenizer(tiny_checkpoint_dir), data.eval, options,
                                prompts.ExemplarRetriever([]))
        qlora.train()
    batch = [training.Encoded(prompt, reply) for prompt, reply in BATCHES[shape]]
    expected = adapter_gradients(dequantized, batch)
    got = adapter_gradients(qlora, batch)

    largest = max(gradient.abs().max().item() for gradient in expected.values())
    assert expected[FIRST_LORA_A].abs().max() > 1e-3 * largest  # not q_proj's: 0 for a lone token (attends to itself)
    for name, gradient in expected.items():
        torch.testing.assert_close(got[name], gradient, rtol=1e-4, atol=1e-5 * largest,
                                   msg=lambda message, name=name: f"{name}: {message}")
