"""Attention for padding-free batches on any device: `attn_implementation="llava_packed_sdpa"`.

    model.set_attn_implementation({"text_config": PACKED_SDPA})   # done by `make_trainer(padding_free=True)`

Several samples packed in one row (positions restarting at 0 per sample, no attention mask) need block-diagonal
causal attention. With plain `sdpa`, transformers builds a dense (ΣL)² mask and every query attends over the whole
row, so the cost grows with the square of the packed length; flash-attention's varlen kernels avoid that, but not
on CPU. This implementation runs PyTorch's `scaled_dot_product_attention` once per packed sample with `is_causal`,
so the cost is Σ L_i², and builds no mask at all. Anything that is not a packed row (padded batches, generation
with a cache) takes the usual `sdpa` path unchanged.
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "llava_packed_sdpa"


def packed_segments(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]] | None:
    """`[(start, end), ...]` of the samples in a packed row, or None when the row holds one sample."""
    if position_ids is None or position_ids.shape[0] != 1 or position_ids.shape[-1] != length:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return list(zip(starts, starts[1:] + [length]))


def packed_sdpa_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """`query/key/value [1, heads, ΣL, head_dim]` of a packed row -> per-sample causal attention."""
    segments = None
    if attention_mask is None and query.shape[2] == key.shape[2]:
        segments = packed_segments(position_ids, query.shape[2])
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # `split`, not one slice per sample: a slice's backward writes its gradient into a zero tensor of the whole row,
    # so n slices cost n zero-filled rows and n full-row additions; split's backward is one concatenation.
    lengths = [b - a for a, b in segments]
    outputs = [
        sdpa_attention_forward(module, q, k, v, None, **kwargs)[0]
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    return torch.cat(outputs, dim=1), None  # [1, ΣL, heads, head_dim], as sdpa returns it


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """No mask for packed rows or single unpadded sequences (causality comes from `is_causal`); padded batches get
    the usual sdpa mask."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)

__all__ = ["PACKED_SDPA", "packed_sdpa_attention", "packed_segments"]
