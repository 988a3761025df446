"""The tokens an original LLaVA release expects in its tokenizer, and growing the embeddings to hold them.

The original code added `<im_patch>` (and `<im_start>`/`<im_end>` with `mm_use_im_start_end`) to the tokenizer at
load time, but marked images with the id -200 that never reaches an embedding. This model marks them with a real
`<image>` token instead; when the vocabulary has no row for it, the embedding and `lm_head` grow (to a multiple of
64) with rows equal to the mean of the existing ones. An added `lm_head` row scores every position with the mean of
the other logits (up to rounding), which never outranks their maximum: the logits of the original vocabulary and
greedy decoding are unchanged.
"""

import torch

from ..builder import IMAGE_TOKEN

IM_PATCH, IM_START, IM_END = "<im_patch>", "<im_start>", "<im_end>"
EMBED_KEY, HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"  # original key names
VOCAB_MULTIPLE = 64


def prepare_tokenizer(tokenizer, config: dict):
    """Add the tokens of the original loader (by `config`'s mm_use_* flags), then `<image>`; pad with `<unk>`."""
    if config.get("mm_use_im_patch_token", True):
        tokenizer.add_tokens([IM_PATCH], special_tokens=True)
    if config.get("mm_use_im_start_end", False):
        tokenizer.add_tokens([IM_START, IM_END], special_tokens=True)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as the original: LLaMA tokenizers pad with <unk>
    return tokenizer


def padded_rows(rows: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return -(-rows // multiple) * multiple


def grow_vocab(state_dict: dict[str, torch.Tensor], tokens: int, keys=(EMBED_KEY, HEAD_KEY)) -> int:
    """Give every token id below `tokens` a row in `keys` (in place); returns the vocabulary size afterwards.

    New rows are the mean of the existing rows of that matrix (see the module docstring for why).
    """
    rows = state_dict[keys[0]].shape[0]
    if tokens <= rows:
        return rows
    target = padded_rows(tokens)
    for key in keys:
        if key in state_dict:
            state_dict[key] = append_mean_rows(state_dict[key], target)
    return target


def append_mean_rows(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """`matrix [R, D]` extended to `[rows, D]` with copies of its row mean (computed in float32)."""
    extra = rows - matrix.shape[0]
    if extra <= 0:
        return matrix
    mean = matrix.float().mean(dim=0, keepdim=True).to(matrix.dtype)
    return torch.cat([matrix, mean.expand(extra, -1)], dim=0)


def match_head_to_embeddings(state_dict: dict[str, torch.Tensor]) -> None:
    """Give `lm_head` as many rows as the embeddings (in place), for tokens added while `lm_head` was frozen."""
    if HEAD_KEY in state_dict and state_dict[EMBED_KEY].shape[0] > state_dict[HEAD_KEY].shape[0]:
        state_dict[HEAD_KEY] = append_mean_rows(state_dict[HEAD_KEY], state_dict[EMBED_KEY].shape[0])


__all__ = ["prepare_tokenizer", "grow_vocab", "append_mean_rows", "match_head_to_embeddings"]
