"""Batched generation that runs what a group of prompts shares (the system prompt, the image) through the model once.

    outputs = generate_shared(model, processor, ids, groups, pixel_values, max_new_tokens=64, do_sample=False)

`ids` are the prompts' token ids with every image already expanded into its tokens (as the processor returns them);
`groups[i]` names the group of prompt i (prompts about the same image, or text-only prompts in a row), and
`pixel_values[g]` is the image of group g (or None). LLaVA-Bench asks three questions of each image: the image is
encoded once instead of three times, and its ~600-token prefix (system prompt + image tokens) is prefilled once
and its keys/values copied to the three rows, which then prefill only their question and decode together.

Each group's prefix is the longest run of tokens all its prompts start with (at least one token of each prompt is
left to prefill with the batch). Row i of group g is laid out as

    [left pad to the longest prefix][prefix g][pad to the longest rest][rest of prompt i]

with the attention mask zero on both pads; `generate` derives positions from the mask's running sum, so every real
token sits at the position it has when its prompt runs alone, and attends to exactly the tokens it would alone.

The rows' keys and values go into a `StaticCache` sized for the prompt and the answer: a growing cache concatenates
every layer's whole cache at every step, which at a batch of 12 rows of ~600 cached tokens allocates and copies
hundreds of MB per generated token.
"""

import torch
from transformers import DynamicCache, StaticCache


def common_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving at least one token of the shortest row."""
    shortest = min(len(row) for row in rows)
    length = 0
    while length < shortest - 1 and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def pad_id(processor) -> int:
    """The id padding positions hold (masked out of attention, so any id does when the tokenizer has none)."""
    return processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0


def left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each [len(rows), longest row], the rows padded on the left with `pad`."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return input_ids, attention_mask


def check_no_split_image(prefix: list[int], rest: list[int], image_token_id: int, group: int) -> None:
    if prefix and rest and prefix[-1] == image_token_id and rest[0] == image_token_id:
        raise ValueError(f"Prompt group {group}: its shared prefix ends inside an image's tokens; prompts must "
                         "continue after their image (the chat template's generation prompt does).")


def generate_shared(model, processor, ids: list[list[int]], groups: list[int], pixel_values: list, *,
                    max_new_tokens: int, **generate_kwargs):
    """`generate` output `[len(ids), longest prompt row + new tokens]` and the length of the prompt rows."""
    if len(groups) != len(ids) or sorted(set(groups)) != list(range(len(pixel_values))):
        raise ValueError(f"{len(ids)} prompts with groups {sorted(set(groups))} for {len(pixel_values)} groups: "
                         "every prompt needs a group, numbered 0..G-1, and every group its image or None.")
    pad = pad_id(processor)
    image_token_id = processor.image_token_id
    members = [[i for i, g in enumerate(groups) if g == group] for group in range(len(pixel_values))]
    prefixes = [ids[m[0]][:common_prefix_length([ids[i] for i in m])] for m in members]
    rests = [ids[i][len(prefixes[g]):] for i, g in enumerate(groups)]
    for i, g in enumerate(groups):
        check_no_split_image(prefixes[g], rests[i], image_token_id, g)
        if image_token_id in rests[i]:
            raise ValueError(f"Prompt {i}: an image after the part its group shares; put each prompt's image first.")

    width = max(len(p) for p in prefixes)
    longest = max(len(rest) for rest in rests)
    device, text_config = model.device, model.config.get_text_config()
    prefix_ids, prefix_mask = left_padded(prefixes, pad, device)
    cache = StaticCache(config=text_config, max_cache_len=width + longest + max_new_tokens)
    if width:
        images = [pixels for pixels in pixel_values if pixels is not None]
        prefix_cache = DynamicCache(config=text_config)
        with torch.inference_mode():
            model(input_ids=prefix_ids, attention_mask=prefix_mask,
                  position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
                  pixel_values=torch.stack(images).to(device, model.dtype) if images else None,
                  past_key_values=prefix_cache, use_cache=True, logits_to_keep=1)
            rows = torch.tensor(groups, device=device)
            for index, layer in enumerate(prefix_cache.layers):  # [G, heads, width, dim] -> row i gets its group's
                cache.update(layer.keys[rows], layer.values[rows], index)

    input_ids = torch.tensor([prefix_ids[g].tolist() + [pad] * (longest - len(r)) + r for r, g in zip(rests, groups)],
                             device=device)
    attention_mask = torch.tensor([prefix_mask[g].tolist() + [0] * (longest - len(r)) + [1] * len(r)
                                   for r, g in zip(rests, groups)], device=device)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                                max_new_tokens=max_new_tokens, disable_compile=True, **generate_kwargs)
    return output, input_ids.shape[1]


__all__ = ["generate_shared", "common_prefix_length"]
