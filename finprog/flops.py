"""FLOP counts: the matmul FLOPs of a decoder-only LM for prefill, decoding and each training method.

Everything here is arithmetic on a `ModelShape` built from a config.json dict, so it
imports no torch; `flopcheck` compares the counts with `torch.utils.flop_counter.FlopCounterMode`
on a real model.

What is counted: every matrix multiply the Hugging Face implementation executes
(2 FLOPs per multiply-accumulate): the q/k/v/o and MLP projections, the attention
scores (Q K^T) and values (P V), and the LM head for the positions whose logits are
computed. Norms, activations, softmax, RoPE, residual adds and the loss are
elementwise and not counted (a few percent of the total at most; torch's counter
ignores them too). A 4-bit (QLoRA) weight is dequantized and then multiplied
densely, so it counts as the dense matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

from finprog.errors import FinprogError

METHODS = ("full", "lora", "qlora")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # phi3: q, k, v and gate, up in one matmul
LORA_TARGETS = ("q_proj", "v_proj")
MODEL_TYPES = ("llama", "qwen2", "gemma3_text", "phi3")


class UnsupportedModelError(FinprogError, ValueError):
    """The config describes an architecture whose FLOPs finprog cannot count."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a decoder-only transformer's matmul FLOPs and parameter count."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int  # intermediate size
    gated_mlp: bool  # gate_proj next to up_proj (SwiGLU / GeGLU)
    vocab: int
    tied_embeddings: bool  # the LM head reuses the input embedding matrix
    layer_types: tuple[str, ...]  # "full_attention" or "sliding_attention", one per layer
    sliding_window: int | None
    biases: tuple[str, ...]  # projections with a bias: parameters, but no matmul FLOPs
    post_norms: bool  # RMSNorms after attention and after the MLP too, not only before (gemma3)
    qk_norm: bool  # a head_dim RMSNorm on queries and keys (gemma3)

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """Read a transformers config.json dict (llama, qwen2, gemma3_text or phi3), with transformers' defaults.

        One branch per architecture, kept side by side in one function so their differences read at a glance.
        """
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise UnsupportedModelError(
                f"cannot count FLOPs for model_type {model_type!r}: supported are {', '.join(MODEL_TYPES)}"
            )
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size") if config.get(k) is None]
        if missing:
            raise UnsupportedModelError(f"{model_type} config lacks {', '.join(missing)}")
        layers, hidden, heads = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
        window, layer_types = None, config.get("layer_types")
        if model_type == "llama":
            tied, post_norms, qk_norm = config.get("tie_word_embeddings", False), False, False
            biases = ("q_proj", "k_proj", "v_proj", "o_proj") if config.get("attention_bias") else ()
            biases += ("gate_proj", "up_proj", "down_proj") if config.get("mlp_bias") else ()
            layer_types = ["full_attention"] * layers
        elif model_type == "phi3":  # llama's shapes with fused projections; a sliding window applies to every layer
            tied, post_norms, qk_norm, biases = config.get("tie_word_embeddings", False), False, False, ()
            window = config.get("sliding_window")
            layer_types = ["sliding_attention" if window else "full_attention"] * layers
        elif model_type == "qwen2":
            tied, post_norms, qk_norm = config.get("tie_word_embeddings", False), False, False
            biases = ("q_proj", "k_proj", "v_proj")  # always on in Qwen2Attention
            if config.get("use_sliding_window", False):
                window = config.get("sliding_window", 4096)
            if layer_types is None:
                first = config.get("max_window_layers", 28)
                layer_types = ["sliding_attention" if window and i >= first else "full_attention"
                               for i in range(layers)]
        else:  # gemma3_text
            if config.get("use_bidirectional_attention"):
                raise UnsupportedModelError("gemma3_text with use_bidirectional_attention is not a causal LM")
            tied, post_norms, qk_norm = config.get("tie_word_embeddings", True), True, True
            biases = ("q_proj", "k_proj", "v_proj", "o_proj") if config.get("attention_bias") else ()
            window = config.get("sliding_window", 4096)
            if layer_types is None:
                pattern = config.get("sliding_window_pattern", 6)
                layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
        if "sliding_attention" not in layer_types:
            window = None
        elif not window:
            raise UnsupportedModelError(f"{model_type} config has sliding_attention layers but no sliding_window")
        if len(layer_types) != layers:
            raise UnsupportedModelError(f"{model_type} config: {len(layer_types)} layer_types for {layers} layers")
        default_head_dim = 256 if model_type == "gemma3_text" else hidden // heads
        return cls(
            model_type=model_type,
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or default_head_dim,
            mlp=config["intermediate_size"],
            gated_mlp=True,
            vocab=config["vocab_size"],
            tied_embeddings=bool(tied),
            layer_types=tuple(layer_types),
            sliding_window=window,
            biases=biases,
            post_norms=post_norms,
            qk_norm=qk_norm,
        )

    @property
    def fused(self) -> bool:
        """qkv_proj and gate_up_proj instead of separate projections (phi3)."""
        return self.model_type == "phi3"

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear layers: name -> (in_features, out_features)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.fused:
            return {"qkv_proj": (self.hidden, q + 2 * kv), "o_proj": (q, self.hidden),
                    "gate_up_proj": (self.hidden, 2 * self.mlp), "down_proj": (self.mlp, self.hidden)}
        shapes = {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.mlp),
            "up_proj": (self.hidden, self.mlp),
            "down_proj": (self.mlp, self.hidden),
        }
        if not self.gated_mlp:
            del shapes["gate_proj"]
        return shapes

    def keys(self, past: int, queries: int) -> int:
        """Keys each query is scored against, summed over the layers, when `queries` tokens follow `past` cached ones.

        Eager attention scores every query against every key it is handed and masks
        afterwards, so a prefill or training forward costs queries x queries in every
        layer, sliding or not. A sliding-window layer's DynamicCache keeps only the last
        window-1 tokens, so a decode step there sees at most `sliding_window` keys.
        """
        sliding = self.layer_types.count("sliding_attention")
        windowed = min(past, self.sliding_window - 1) + queries if sliding else 0
        return (self.layers - sliding) * (past + queries) + sliding * windowed


# ---------------------------------------------------------------- parameters

def lora_targets(targets: str | tuple[str, ...] | list[str] = LORA_TARGETS,
                 shape: ModelShape | None = None) -> tuple[str, ...]:
    """LoRA target modules as a tuple of projection names; accepts "q_proj,v_proj" and "all-linear".

    With `shape`, the names must be that model's projections; without, any model's.
    """
    known = tuple(shape.projections()) if shape else PROJECTIONS + FUSED_PROJECTIONS
    if isinstance(targets, str):
        all_linear = known if shape else PROJECTIONS
        targets = all_linear if targets == "all-linear" else tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        model = f"{shape.model_type} " if shape else "decoder "
        raise ValueError(f"LoRA targets {unknown or targets} are not {model}projections: choose from "
                         f"{', '.join(dict.fromkeys(known))} or all-linear")
    return tuple(targets)


def parameter_counts(shape: ModelShape, method: str = "full", lora_rank: int = 8,
                     targets: str | tuple[str, ...] = LORA_TARGETS) -> dict[str, int]:
    """Parameters of the base model (total, embedding, untied LM head, the rest) and those `method` trains.

    For LoRA and QLoRA the trainable count is the adapters' (not part of total).
    """
    _check_method(method)
    proj = shape.projections()
    per_layer = sum(i * o + (o if name in shape.biases else 0) for name, (i, o) in proj.items())
    per_layer += (4 if shape.post_norms else 2) * shape.hidden + (2 * shape.head_dim if shape.qk_norm else 0)
    embedding = shape.vocab * shape.hidden
    lm_head = 0 if shape.tied_embeddings else embedding
    total = embedding + lm_head + shape.layers * per_layer + shape.hidden  # + final norm
    if method == "full":
        trainable = total
    else:
        trainable = shape.layers * lora_rank * sum(sum(proj[t]) for t in lora_targets(targets, shape))
    return {"total": total, "embedding": embedding, "lm_head": lm_head,
            "non_embedding": total - embedding - lm_head, "trainable": trainable}


# ---------------------------------------------------------------- inference

def forward_flops(shape: ModelShape, tokens: int, past: int = 0, logits: int | None = None,
                  batch: int = 1) -> int:
    """One forward of `tokens` new positions per row after `past` cached ones, logits for `logits` (default all)."""
    logits = tokens if logits is None else logits
    linear = sum(i * o for i, o in shape.projections().values())
    attention = 2 * shape.heads * shape.head_dim * tokens * shape.keys(past, tokens)  # Q K^T and P V
    macs = shape.layers * tokens * linear + attention + logits * shape.hidden * shape.vocab
    return 2 * batch * macs


def encoder_shape(config) -> ModelShape:
    """A BERT encoder's sizes (a transformers BertConfig, or any object with its attribute names) as a `ModelShape`:
    an ungated MLP, every layer full attention, no LM head."""
    return ModelShape(
        model_type=config.model_type, layers=config.num_hidden_layers, hidden=config.hidden_size,
        heads=config.num_attention_heads, kv_heads=config.num_attention_heads,
        head_dim=config.hidden_size // config.num_attention_heads, mlp=config.intermediate_size, gated_mlp=False,
        vocab=config.vocab_size, tied_embeddings=False, layer_types=("full_attention",) * config.num_hidden_layers,
        sliding_window=None, biases=(), post_norms=False, qk_norm=False)


def classifier_flops(shape: ModelShape, tokens: int, rows: int = 1) -> int:
    """A BERT classifier's forward over `rows` sequences of `tokens` (a cross-encoder scoring question-fact pairs):
    the encoder (`encoder_shape`), its pooler and a one-logit head."""
    return forward_flops(shape, tokens, logits=0, batch=rows) + 2 * rows * (shape.hidden ** 2 + shape.hidden)


def prefix_flops(shape: ModelShape, tokens: int) -> int:
    """Prefilling a shared prefix once: its keys and values for every layer, no logits (`generation.SharedPrefix`)."""
    return forward_flops(shape, tokens, logits=0)


def prefill_flops(shape: ModelShape, prompt_len: int, batch: int = 1, cached: int = 0) -> int:
    """The prompt's forward as `generate` runs it: every position, logits for the last one only.

    With `cached` > 0 the prompt's first `cached` tokens come from a shared-prefix cache: only
    the rest runs, its queries scored against the cached keys too.
    """
    return forward_flops(shape, prompt_len - cached, past=cached, logits=1, batch=batch)


def decode_step_flops(shape: ModelShape, context: int, batch: int = 1) -> int:
    """One incremental step with a KV cache: one new token whose context (itself included) is `context` tokens."""
    return forward_flops(shape, 1, past=context - 1, logits=1, batch=batch)


def generation_flops(shape: ModelShape, prompt_len: int, new_tokens: int, batch: int = 1, cached: int = 0) -> int:
    """Generating `new_tokens` after a prompt: the prefill yields the first token, then new_tokens-1 decode steps.

    For a padded batch, pass the padded prompt length and the tokens the batch ran for:
    that is what was executed, padding and steps after a row stopped included. `cached`:
    the prompt's first tokens taken from a shared-prefix cache (see `prefill_flops`); the
    prefix's own cost is `prefix_flops`, paid once for all the prompts that share it.
    """
    if new_tokens < 1:
        raise ValueError(f"generation needs new_tokens >= 1, got {new_tokens}")
    decode = sum(decode_step_flops(shape, prompt_len + i, batch) for i in range(1, new_tokens))
    return prefill_flops(shape, prompt_len, batch, cached) + decode


def inference_flops(shape: ModelShape, completions) -> dict[str, int]:
    """Useful and executed generation FLOPs of `generation.Completion`s (or anything with their token counts).

    useful: each example alone, its own prompt and the tokens it needed.
    executed: its share of what its batch ran, padding and the steps after it stopped
    included (a batch's rows all compute the same, so the shares add up to the batch).
    Both start at the end of a cached shared prefix (`cached_prompt_tokens`), whose own
    cost, `prefix_flops`, is not included: it is paid once for all the completions.
    """
    useful = executed = 0
    for c in completions:
        useful += generation_flops(shape, c.prompt_tokens, c.new_tokens, cached=c.cached_prompt_tokens)
        executed += generation_flops(shape, c.batch_prompt_tokens, c.batch_new_tokens, cached=c.cached_prompt_tokens)
    return {"useful": useful, "executed": executed}


# ---------------------------------------------------------------- training

def training_step_flops(shape: ModelShape, seq_len: int, batch: int = 1, method: str = "full",
                        lora_rank: int = 8, targets: str | tuple[str, ...] = LORA_TARGETS,
                        gradient_checkpointing: bool = False, inputs_require_grad: bool | None = None,
                        logits: int | None = None) -> int:
    """A training step's forward and backward over `batch` sequences of `seq_len` tokens, with the LM head
    over each sequence's last `logits` positions (None: everywhere).

    The optimizer update is elementwise and not counted. Attention is the dense
    seq_len x seq_len score matrix in every layer, as eager attention computes it.

    full: every matmul y = x W has a backward for dx and one for dW: backward = 2 x forward.
    lora/qlora: the base is frozen, so its matmuls only pass dx back (no dW), and only
    where x requires grad; each adapter (A: in->r, B: r->out) runs its own forward and
    full backward. Unless the embedding output requires grad (HF sets that when
    gradient checkpointing is on, `inputs_require_grad` overrides), the first layer
    skips dx wherever nothing trainable lies upstream.
    gradient_checkpointing: each decoder layer's forward runs once more in the backward
    (HF's default non-reentrant checkpoint, which skips the layer's last matmul where
    it can, see `_not_recomputed`).
    """
    _check_method(method)
    full = method == "full"
    adapted = () if full else lora_targets(targets, shape)
    if inputs_require_grad is None:
        inputs_require_grad = full or gradient_checkpointing
    tokens = batch * seq_len
    attention = 2 * shape.heads * shape.head_dim * tokens * seq_len  # MACs of Q K^T plus P V, one layer
    head = batch * (seq_len if logits is None else min(logits, seq_len)) * shape.hidden * shape.vocab
    adapter = tokens * lora_rank * sum(sum(shape.projections()[t]) for t in adapted)

    layer_forward = tokens * sum(i * o for i, o in shape.projections().values()) + attention + adapter
    backward = head * (2 if full else 1)  # dx of the LM head (+ dW when trained)
    for layer in range(shape.layers):
        needs_dx = inputs_require_grad or layer > 0
        backward += _layer_backward(shape, tokens, attention, adapted, lora_rank, full, needs_dx)
    recompute = shape.layers * (layer_forward - _not_recomputed(shape, tokens, adapted, lora_rank)) \
        if gradient_checkpointing else 0
    return 2 * (shape.layers * layer_forward + head + backward + recompute)


def _layer_backward(shape, tokens, attention, adapted, rank, full, x_grad) -> int:
    """Backward MACs of one decoder layer; `x_grad`: whether the layer's input requires grad.

    Follows requires_grad through the layer: a matmul computes the gradient of an
    operand only if that operand requires it.
    """
    proj = shape.projections()
    macs = 0

    def linear(name, input_grad):  # backward of x W (+ adapter); returns whether the output requires grad
        nonlocal macs
        i, o = proj[name]
        macs += tokens * i * o * (input_grad + full)  # dx, dW
        if name in adapted:  # A: i->r, B: r->o; dW_A, dW_B, d(xA) always, dx if needed
            macs += tokens * rank * (i + 2 * o + (i if input_grad else 0))
        return input_grad or full or name in adapted

    if shape.fused:
        q = k = v = linear("qkv_proj", x_grad)
    else:
        q, k, v = (linear(n, x_grad) for n in ("q_proj", "k_proj", "v_proj"))
    half = attention // 2  # one attention matmul; each operand's gradient costs as much
    macs += half * (q + k)  # scores = Q K^T: dQ, dK
    p = q or k
    macs += half * (p + v)  # out = P V: dP, dV
    h = linear("o_proj", p or v) or x_grad
    mlp_in = [linear(n, h) for n in proj if n in ("gate_proj", "up_proj", "gate_up_proj")]
    linear("down_proj", any(mlp_in))
    return macs


def _not_recomputed(shape, tokens, adapted, rank) -> int:
    """MACs at the end of a checkpointed layer that the recompute skips.

    HF checkpoints with torch's non-reentrant checkpoint, which stops recomputing as
    soon as the last tensor saved for backward has been re-saved. An op saves its
    inputs before it runs, so the layer's last matmul is skipped when nothing after it
    saves its output: down_proj (or its LoRA B) in llama, qwen2 and phi3, where only a
    residual add follows; nothing in gemma3, whose post-MLP norm saves it.
    """
    if shape.post_norms:
        return 0
    i, o = shape.projections()["down_proj"]
    return tokens * (rank * o if "down_proj" in adapted else i * o)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}: choose from {', '.join(METHODS)}")


def trainer_total_flos(shape: ModelShape, tokens: int) -> int:
    """What HF Trainer's total_flos adds for `tokens` trained tokens: 6 x tokens x parameters outside nn.Embedding.

    Shown for contrast only: it is the same for every method, counts no attention nor
    recompute, and drops a tied LM head (its weight is the nn.Embedding's).
    """
    counts = parameter_counts(shape)
    return 6 * tokens * (counts["total"] - counts["embedding"])


# ---------------------------------------------------------------- summary

def summary(shape: ModelShape, prompt_tokens: int = 512, new_tokens: int = 16, method: str = "lora",
            lora_rank: int = 8, targets: str | tuple[str, ...] = LORA_TARGETS,
            gradient_checkpointing: bool = False) -> dict:
    """Parameters and FLOPs for one example: its generation, and a training step on prompt + new tokens (the new
    tokens as the reply, as `finprog train` runs it: logits over the reply only)."""
    seq = prompt_tokens + new_tokens
    step = training_step_flops(shape, seq, method=method, lora_rank=lora_rank, targets=targets,
                               gradient_checkpointing=gradient_checkpointing, logits=new_tokens + 1)
    return {
        "model_type": shape.model_type,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "method": method,
        "lora_rank": lora_rank if method != "full" else None,
        "lora_targets": list(lora_targets(targets, shape)) if method != "full" else None,
        "gradient_checkpointing": gradient_checkpointing,
        "params": parameter_counts(shape, method, lora_rank, targets),
        "flops": {
            "prefill": prefill_flops(shape, prompt_tokens),
            "decode_step_first": decode_step_flops(shape, prompt_tokens + 1),
            "generation": generation_flops(shape, prompt_tokens, new_tokens),
            "training_step": step,
            "training_per_token": step / seq,
            "trainer_total_flos_per_token": trainer_total_flos(shape, 1),
        },
    }


def format_summary(result: dict) -> str:
    """`summary` as lines for a person."""
    p, f = result["params"], result["flops"]
    method = "full fine-tuning" if result["method"] == "full" else (
        f"{result['method']} r={result['lora_rank']} on {','.join(result['lora_targets'])}")
    if result["gradient_checkpointing"]:
        method += ", gradient checkpointing"
    seq = result["prompt_tokens"] + result["new_tokens"]
    rows = [
        ("prefill", f["prefill"], f"{result['prompt_tokens']} prompt tokens, logits for the last"),
        ("first decode step", f["decode_step_first"], f"context {result['prompt_tokens'] + 1}"),
        ("generation", f["generation"], f"prefill + {result['new_tokens'] - 1} decode steps"),
        ("training step", f["training_step"], f"{seq} tokens, logits over the last {result['new_tokens'] + 1}, "
                                               f"{f['training_per_token']:.4g} per token"),
        ("HF Trainer total_flos", f["trainer_total_flos_per_token"] * seq, "not used: 6 x tokens x non-embedding "
                                                                           "parameters, whatever the method"),
    ]
    return "\n".join([
        f"{result['model_type']}: {p['total'] / 1e6:.1f}M parameters ({p['embedding'] / 1e6:.1f}M embedding, "
        f"{p['lm_head'] / 1e6:.1f}M untied LM head, {p['non_embedding'] / 1e6:.1f}M other); "
        f"{p['trainable'] / 1e6:.3f}M trainable with {method}",
        *(f"  {what:22} {count:10.4g} FLOPs  ({note})" for what, count, note in rows),
    ])
