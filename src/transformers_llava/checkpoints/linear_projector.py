"""The paper's one-layer projector written as llava-hf's two-layer one (`linear_1 -> act -> linear_2`), and back.

    from transformers_llava.checkpoints.linear_projector import split_relu, unsplit_relu
    tensors = split_relu(weight, bias, width)   # {"linear_1.weight": ..., "linear_2.weight": ..., ...}, act "relu"
    weight, bias = unsplit_relu(tensors)        # the original tensors, bit for bit (None when not this construction)

Serving engines build llava-hf's projector themselves: vLLM's `LlavaMultiModalProjector`
(vllm/model_executor/models/llava.py) is `linear_1: D_vision -> D_llm`, `act = get_act_fn(projector_hidden_act)`,
`linear_2: D_llm -> D_llm`, and its activation table (`_ACTIVATION_REGISTRY` in
vllm/model_executor/layers/activation.py) has no identity: gelu, gelu_fast, gelu_new, gelu_pytorch_tanh, relu,
relu2, silu, quick_gelu, tanh, sigmoid, xielu. So the identity trick (`act="linear"`, `linear_2 = I`) that
transformers accepts is refused there.

`relu(h) - relu(-h) = h` holds exactly in floating point, but applied to the projector's output `h = W x + b` it
needs 2 x D_llm hidden units, and the engines build D_llm. Applied to the input instead it needs 2 x D_vision, which
fits whenever D_llm >= 2 D_vision (LLaVA: 1024-wide CLIP into 4096 / 5120-wide Vicuna):

    linear_1 = rows (e_1, -e_1, e_2, -e_2, ..., 0 ...)   bias 0     -> (x_1, -x_1, x_2, -x_2, ..., 0 ...)
    relu                                                             -> (x_1+, x_1-, x_2+, x_2-, ..., 0 ...)
    linear_2 = columns (W_1, -W_1, W_2, -W_2, ..., 0 ...)  bias b    -> W x + b

`linear_1` and the relu are exact (one +-1 per row). In `linear_2` every product is bit for bit the original's
(`-W_ij * x_j- = W_ij * x_j` for negative `x_j`, and one of each pair is an exact zero), in the original's column
order; only a matrix-multiply kernel that sums the doubled inner dimension in a different grouping than the original
one can round differently (last bits of fp32; see docs/checkpoints.md for measurements). Import recognises the
construction by its exact pattern and recovers `W` and `b` bit for bit.
"""

import torch

ACTIVATION = "relu"


def fits(d_vision: int, width: int) -> bool:
    """Whether the construction fits llava-hf's hidden width (`width` = D_llm)."""
    return 2 * d_vision <= width


def split_relu(weight: torch.Tensor, bias: torch.Tensor | None, width: int) -> dict[str, torch.Tensor]:
    """`linear_1.*` / `linear_2.*` tensors computing `weight @ x + bias` as `linear_2(relu(linear_1(x)))`."""
    d_out, d_in = weight.shape  # [D_llm, D_vision]
    if not fits(d_in, width) or d_out != width:
        raise ValueError(f"the relu construction needs width >= 2 x {d_in} = {2 * d_in} and {d_out} outputs; "
                         f"got width {width}")
    eye = torch.eye(d_in, dtype=weight.dtype)
    first = torch.zeros(width, d_in, dtype=weight.dtype)
    first[0 : 2 * d_in : 2], first[1 : 2 * d_in : 2] = eye, -eye
    second = torch.zeros(d_out, width, dtype=weight.dtype)
    second[:, 0 : 2 * d_in : 2], second[:, 1 : 2 * d_in : 2] = weight, -weight
    tensors = {"linear_1.weight": first, "linear_2.weight": second}
    if bias is not None:
        tensors["linear_1.bias"] = torch.zeros(width, dtype=weight.dtype)
        tensors["linear_2.bias"] = bias.clone()
    return tensors


def unsplit_relu(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """`(weight, bias)` when `tensors` hold exactly the `split_relu` construction; None otherwise."""
    first, second = tensors.get("linear_1.weight"), tensors.get("linear_2.weight")
    if first is None or second is None or first.ndim != 2 or second.ndim != 2:
        return None
    width, d_in = first.shape
    if second.shape != (width, width) or not fits(d_in, width):
        return None
    try:
        expected = split_relu(second[:, 0 : 2 * d_in : 2], tensors.get("linear_2.bias"), width)
    except ValueError:
        return None
    if tensors.keys() != expected.keys() or not all(torch.equal(tensors[k], expected[k]) for k in expected):
        return None
    bias = tensors.get("linear_2.bias")
    return second[:, 0 : 2 * d_in : 2].clone(), None if bias is None else bias.clone()


__all__ = ["ACTIVATION", "fits", "split_relu", "unsplit_relu"]
