"""Delta weights (the first LLaVA release, v0): target = delta + base LLaMA, checked tensor by tensor.

    from transformers_llava import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained("LLaVA-13b-delta-v0", base_model="llama-13b")

As in the original `apply_delta.py`: every delta tensor except the projector has a base tensor of the same shape,
except the token embeddings and `lm_head`, whose delta has extra rows for the added tokens (`<im_patch>`, ...); the
base fills the leading rows. A base of another size or vocabulary is refused, naming the tensor and both shapes,
before anything is added. Without a base, weights that look like a delta (final RMSNorm weights near 0 instead of
near 1) are refused too: loading them as a model would silently give garbage; and so are complete weights given
with a base.
"""

import torch

from .safe_load import CheckpointError
from .vocab import EMBED_KEY, HEAD_KEY

PROJECTOR_PREFIX = "model.mm_projector."
NORM_KEY = "model.norm.weight"
DELTA_NORM_THRESHOLD = 0.5  # trained LLaMA final-norm weights average ~1-2 in magnitude; deltas are ~0


def apply_delta(
    delta: dict[str, torch.Tensor], base: dict[str, torch.Tensor], delta_name: str, base_name: str
) -> dict[str, torch.Tensor]:
    """The target weights (original key names); `delta` and `base` are left unchanged."""
    check_is_delta(delta, delta_name)
    check_delta_fits(delta, base, delta_name, base_name)
    target = {}
    for key, tensor in delta.items():
        if key.startswith(PROJECTOR_PREFIX) or key not in base:
            target[key] = tensor.clone()
            continue
        base_tensor = base[key].to(tensor.dtype)
        merged = tensor.clone()
        merged[tuple(slice(0, size) for size in base_tensor.shape)] += base_tensor
        target[key] = merged
    return target


def check_delta_fits(delta: dict, base: dict, delta_name: str, base_name: str) -> None:
    """Refuse a base whose tensors do not fit the delta (another model size or vocabulary)."""
    missing = sorted(key for key in delta if not key.startswith(PROJECTOR_PREFIX) and key not in base)
    if missing:
        raise CheckpointError(
            f"The delta {delta_name} has {len(missing)} tensors the base {base_name} lacks (e.g. "
            f"{', '.join(missing[:3])}); this is not the base the delta was made from (expected LLaMA weights "
            "with keys model.embed_tokens.weight, model.layers.<i>.*, model.norm.weight, lm_head.weight)."
        )
    for key, tensor in delta.items():
        if key not in base:
            continue
        delta_shape, base_shape = tuple(tensor.shape), tuple(base[key].shape)
        if delta_shape == base_shape:
            continue
        grows_vocab = key in (EMBED_KEY, HEAD_KEY) and delta_shape[1:] == base_shape[1:]
        if grows_vocab and base_shape[0] <= delta_shape[0]:
            continue
        if grows_vocab:
            reason = (f"the base vocabulary ({base_shape[0]} tokens) is larger than the delta's ({delta_shape[0]}): "
                      "the base is not the LLaMA the delta was made from")
        else:
            reason = "the base is a different model size"
        raise CheckpointError(
            f"Delta {delta_name} does not fit base {base_name}: {key} is {list(delta_shape)} in the delta but "
            f"{list(base_shape)} in the base; {reason}. Refusing to apply it."
        )


def norm_magnitude(state_dict: dict[str, torch.Tensor]) -> float | None:
    """Mean |w| of the final RMSNorm: ~1 or more in a trained model, ~0 in a delta."""
    norm = state_dict.get(NORM_KEY)
    return None if norm is None else norm.float().abs().mean().item()


def check_not_delta(state_dict: dict[str, torch.Tensor], name) -> None:
    """Refuse weights whose final RMSNorm is near 0: a delta loaded without its base."""
    magnitude = norm_magnitude(state_dict)
    if magnitude is not None and magnitude < DELTA_NORM_THRESHOLD:
        raise CheckpointError(
            f"{name} looks like delta weights: {NORM_KEY} averages |w| = {magnitude:.4f}, while a trained model's "
            "is ~1. Pass base_model='path/to/llama' (CLI: --base-model) to apply the delta to its base LLaMA."
        )


def check_is_delta(state_dict: dict[str, torch.Tensor], name) -> None:
    """Refuse complete weights given as a delta: adding a base to them would silently double the model."""
    magnitude = norm_magnitude(state_dict)
    if magnitude is not None and magnitude >= DELTA_NORM_THRESHOLD:
        raise CheckpointError(
            f"base_model was given, but {name} holds complete weights, not a delta: {NORM_KEY} averages "
            f"|w| = {magnitude:.4f} (a delta's is ~0). Load it without base_model."
        )


__all__ = ["apply_delta", "check_delta_fits", "check_not_delta", "check_is_delta"]
