"""Continuous (iteration-level) batching: the engine's decode loop, one token per running row per step.

    batch = DecodeBatch(model, pad_token_id)
    batch.admit(requests)     # prefill newcomers (left-padded among themselves), merge their KV cache in
    while batch.rows:
        batch.step()          # one decoding step for every running row
        batch.drop_finished() # rows ended by EOS, stop string, own token limit or cancellation leave
        batch.admit(...)      # requests that arrived meanwhile join between steps

The running rows share one KV cache whose sequence axis is left-padded: every row's newest token sits in the last
column, `mask` [B, T] marks each row's real positions, and position ids follow each row's own length, so every row
computes what it would alone (padded positions are masked out of attention). Admitting newcomers left-pads the
shorter of the two caches along the sequence axis and stacks the rows; dropping rows selects the others and trims
columns no remaining row attends to, so the width stays the longest row's length.

Every row samples with its own settings: temperature 0 is greedy (argmax), otherwise temperature and top-p, drawn
with the row's own `torch.Generator` when it has a seed (so a seed repeats itself whatever the batch holds). The
model's `generation_config.suppress_tokens` (the `<image>` token) are never chosen, as in `generate`; a generation
config asking for other logits processing (`UNSUPPORTED`, e.g. a repetition penalty) is refused by `check_supported`
rather than silently ignored.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

# generation-config fields `generate` would turn into logits processing this loop does not do: their no-op values
UNSUPPORTED = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
               "bad_words_ids": [], "min_length": 0, "min_new_tokens": 0, "begin_suppress_tokens": [],
               "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": {},
               "exponential_decay_length_penalty": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "typical_p": 1.0,
               "min_p": 0.0, "top_h": None}


def check_supported(generation_config) -> None:
    """Raise ValueError naming the fields of `generation_config` (and their values) this loop would not honour."""
    odd = {name: value for name, neutral in UNSUPPORTED.items()
           if (value := getattr(generation_config, name, None)) is not None and value != neutral}
    if odd:
        raise ValueError(f"the model's generation config sets {odd}, which the serving engine's decode loop does not "
                         f"apply (it applies temperature, top_p, suppress_tokens, EOS and stop strings); unset them in "
                         f"generation_config.json to serve this model")


class DecodeBatch:
    """The rows being decoded together, with their KV cache; see the module docstring."""

    def __init__(self, model, pad_token_id: int):
        self.model, self.pad_token_id = model, pad_token_id
        self.rows: list = []  # the requests (`_Request`: ids, pixel_values, generation), one per batch row
        self.cache: DynamicCache | None = None  # per layer keys / values [B, H, T, D]
        self.mask: torch.Tensor | None = None  # [B, T] 1 where a row has a real token
        self.last: torch.Tensor | None = None  # [B] each row's newest token, the next step's input
        self._generators: list[torch.Generator | None] = []
        suppress = model.generation_config.suppress_tokens or []
        self._suppress = torch.tensor(list(suppress), dtype=torch.long, device=model.device)

    @property
    def generations(self) -> list:
        return [r.generation for r in self.rows]

    @torch.no_grad()
    def admit(self, requests: list) -> None:
        """Prefill `requests` (images encoded, prompts left-padded among themselves), choose each one's first
        token, and merge their rows into the running batch."""
        if not requests:
            return
        device = self.model.device
        width = max(len(r.ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every row's last prompt token is in the last column
            input_ids[i, width - len(r.ids):] = r.ids
            mask[i, width - len(r.ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, L] each row counts from its own first token
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        pixels = [r.pixel_values for r in requests if r.pixel_values is not None]
        if pixels:  # the model fills image tokens in row-major order: the rows' images, in row order
            inputs["pixel_values"] = torch.cat(pixels).to(device, self.model.dtype)
        out = self.model(**inputs, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        generators = [_generator(r.generation.sampling.seed, device) for r in requests]
        first = self._choose(out.logits[:, -1], [r.generation for r in requests], generators)  # [b]
        self._merge(out.past_key_values, mask, first)
        self.rows += requests
        self._generators += generators
        self._push(first, requests)

    @torch.no_grad()
    def step(self) -> None:
        """One decoding step: every running row reads its newest token and chooses the next."""
        positions = self.mask.sum(-1, keepdim=True)  # [B, 1] the new token's position in its own row
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=-1)  # [B, T + 1]
        out = self.model(input_ids=self.last[:, None], attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        self.last = self._choose(out.logits[:, -1], self.generations, self._generators)
        self._push(self.last, self.rows)

    def drop_finished(self) -> list:
        """Remove the rows whose answer ended or whose client cancelled, from the rows and the cache; returns
        the removed requests."""
        keep = [i for i, r in enumerate(self.rows) if not (r.generation.finished or r.generation.cancelled)]
        if len(keep) == len(self.rows):
            return []
        dropped = [r for i, r in enumerate(self.rows) if i not in keep]
        if not keep:
            self.clear()
            return dropped
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.last = self.mask[index], self.last[index]
        start = int(self.mask.any(0).long().argmax())  # the first column a remaining row attends to
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
        self.rows = [self.rows[i] for i in keep]
        self._generators = [self._generators[i] for i in keep]
        return dropped

    def clear(self) -> None:
        self.rows, self._generators, self.cache, self.mask, self.last = [], [], None, None, None

    # -- helpers
    def _merge(self, cache: DynamicCache, mask: torch.Tensor, first: torch.Tensor) -> None:
        """Stack newcomers' cache [b, H, L, D] and mask [b, L] under the running ones, left-padding the shorter."""
        if self.cache is None:
            self.cache, self.mask, self.last = cache, mask, first
            return
        width = max(self.mask.shape[1], mask.shape[1])
        if len(self.cache.layers) != len(cache.layers):
            raise RuntimeError(f"cache layers differ: running {len(self.cache.layers)}, new {len(cache.layers)}")
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
            old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.last = torch.cat([self.last, first])

    def _choose(self, logits: torch.Tensor, generations: list, generators: list) -> torch.Tensor:
        """The next token of each row [B] from its logits [B, V], with the row's own sampling settings."""
        logits = logits.float()
        if len(self._suppress):
            logits[:, self._suppress] = -float("inf")
        chosen = logits.argmax(-1)
        for i, (generation, generator) in enumerate(zip(generations, generators)):
            sampling = generation.sampling
            if sampling.greedy:
                continue
            scores = TemperatureLogitsWarper(float(sampling.temperature))(None, logits[i: i + 1])
            scores = TopPLogitsWarper(float(sampling.top_p))(None, scores)
            chosen[i] = torch.multinomial(scores.softmax(-1)[0], 1, generator=generator)[0]
        return chosen

    @staticmethod
    def _push(tokens: torch.Tensor, requests: list) -> None:
        for request, token in zip(requests, tokens.tolist()):
            request.generation.push(token)


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` zero-padded on the left of `dim` to `width`."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None  # torch's global generator
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


__all__ = ["DecodeBatch", "check_supported"]
