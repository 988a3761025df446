"""Training FLOPs counted analytically from the model's shapes and the batches' real lengths, and a matmul peak.

    shape = ModelShape.of(model)
    flops = step_flops(shape, "stage2", batch_stats)    # useful FLOPs of one optimizer step
    peak = matmul_peak(torch.bfloat16)                  # FLOP/s of a large torch.matmul on this machine

What is counted (a multiply-add is 2 FLOPs; only matrix multiplications):
- LLM linear layers (q, k, v, o, gate, up, down of every layer): 2·P per token forward; backward 2·P for the input
  gradient plus 2·P for the weight gradient when the LLM trains (stage 2: 6·P per token, stage 1: 4·P, the gradient
  still flows through the frozen LLM to the projector).
- LLM attention: QKᵀ and AV over each sample's own causal triangle, 2·L²·d per layer forward, twice that backward.
- LM head: d·V per supervised position only (2 forward, 2 input-gradient, 2 weight-gradient in stage 2).
- Projector: 6·P per image token (it always trains).
- Vision tower (frozen, forward only): 2·P per token of each image (patches + CLS) and full attention 4·T²·d.
Padding, positions without a loss and recomputation are not counted: the count is the same for every stack on the
same batch, so FLOP/s compare the work a stack gets done, not the work it does. Norms, activations, softmax, the
embedding lookup and the optimizer are left out (a few percent at these sizes).
"""

import time
from dataclasses import dataclass

import torch
from torch import nn


def linear_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class ModelShape:
    llm_linear: int
    llm_layers: int
    llm_hidden: int
    vocab: int
    projector: int
    vision_linear: int
    vision_layers: int
    vision_hidden: int
    vision_tokens: int  # tokens the tower runs per image (patches + CLS)
    image_tokens: int  # tokens each image gives the LLM

    @classmethod
    def of(cls, model) -> "ModelShape":
        base = model.model
        text, vision = model.config.text_config, model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return cls(
            llm_linear=linear_params(base.language_model), llm_layers=text.num_hidden_layers,
            llm_hidden=text.hidden_size, vocab=model.lm_head.weight.shape[0],
            projector=linear_params(base.multi_modal_projector),
            vision_linear=linear_params(base.vision_tower), vision_layers=vision.num_hidden_layers,
            vision_hidden=vision.hidden_size, vision_tokens=patches + 1,
            image_tokens=model.config.image_seq_length,
        )


def step_flops(shape: ModelShape, stage: str, lengths: list[int], supervised: int, images: int) -> float:
    """Useful FLOPs of one training step on a batch of samples of `lengths` tokens."""
    llm_trains = stage == "stage2"
    per_weight = 6 if llm_trains else 4
    tokens = sum(lengths)
    llm = per_weight * shape.llm_linear * tokens
    attention = 3 * shape.llm_layers * sum(2 * n * n * shape.llm_hidden for n in lengths)
    head = per_weight * shape.llm_hidden * shape.vocab * supervised
    projector = 6 * shape.projector * shape.image_tokens * images
    vision = images * (2 * shape.vision_linear * shape.vision_tokens
                       + shape.vision_layers * 4 * shape.vision_tokens ** 2 * shape.vision_hidden)
    return float(llm + attention + head + projector + vision)


def best_seconds(work, repeats: int, device: str) -> float:
    """Shortest wall time of `work()` over `repeats` calls after one warm-up (synchronised on a GPU)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    work()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        work()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best FLOP/s of `size`² x `size`² matmuls in `dtype` on random data."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    return 2 * size ** 3 / best_seconds(lambda: a @ b, repeats, device)


def copy_bandwidth(megabytes: int = 256, repeats: int = 5, device: str = "cpu") -> float:
    """Memory bandwidth in bytes/s: a `megabytes` tensor copied into another, bytes read plus bytes written."""
    source = torch.randn(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / best_seconds(lambda: target.copy_(source), repeats, device)
