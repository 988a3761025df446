"""Prompts and stops of an exported checkpoint as serving engines read them: one BOS, stop strings as token ids.

    from transformers_llava.checkpoints.engine_prompts import bos_in_template, stop_token_ids
    tokenizer, template, prefix = bos_in_template(processor.tokenizer, processor.chat_template)
    ids = stop_token_ids(tokenizer, ["###"])      # every token whose text contains "###"

**One BOS.** The original LLaVA tokenised each prompt with exactly one leading BOS. Our chat templates render the
original text without it, and our processor adds it (`TransformersLlavaProcessor.__call__`). An export is read by
processors that do not know that rule, and engines tokenise the rendered template in two ways:
`add_special_tokens=False` (vLLM's chat endpoint: `ChatCompletionRequest.add_special_tokens` defaults to False in
vllm/entrypoints/openai/protocol.py) or True (`processor(text=rendered)`, the llava-hf model cards' pattern, vLLM's
completions endpoint). The only text + tokenizer pair that gives one BOS both ways is a template that writes the
BOS and a tokenizer that adds none (`add_bos_token: false`). transformers 5.23's
`ProcessorMixin.apply_chat_template(tokenize=True)` (what `transformers serve` calls) then also gives one: it passes
`add_special_tokens=False` when the rendered text starts with BOS. Import undoes both changes.

The text after a BOS written in the prompt is not tokenised like the start of a text: Llama tokenizers in
transformers 5 (`Metaspace(prepend_scheme="first")`, `legacy: false`) give "A" after "<s>" but "▁A" at the start.
So the template writes `{{ bos_token }}` followed by the gap ("" or " ") that makes the tokens after it equal ours,
found by tokenising probe conversations both ways; a format for which no gap works (`plain` with such a tokenizer:
its prompt may start with `<image>` or with text) keeps the BOS in the tokenizer, and the export says so.

**Stops.** `llava_v0` ends a turn with the text `###`, kept in `generation_config.stop_strings`; vLLM reads
`eos_token_id` from generation_config.json (`SamplingParams.update_from_generation_config` adds every id of the list
to the stop token ids; `ModelConfig.get_diff_sampling_param` reads only repetition_penalty, temperature, top_k,
top_p, min_p, max_new_tokens) and never `stop_strings`; SGLang reads the same list. The export lists the eos token
and every token whose text contains the stop string: generation stops at those tokens exactly where
`stop_strings` stops (the string ends inside that token), and they are not part of the answer in either. A stop
string split across two tokens (`##` + `#`) has no token id; our own generation still stops there through
`stop_strings`, an engine only when the request passes `stop`.
"""

import copy

BOS = "{{ bos_token }}"
# The BOS alone, or followed by a space (an expression: the templates' `{#-` would strip a literal one).
PREFIXES = (BOS, "{{ bos_token ~ ' ' }}")
_PROBE = "a b"
# Conversations the chosen prefix is checked on: image first, text only, a second turn.
PROBES = (
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
     {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Color?"}],
    [{"role": "user", "content": "Hello there."}],
)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a plain text."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer(_PROBE)["input_ids"][:1] == [bos]


def _render(tokenizer, template: str, conversation) -> str:
    return tokenizer.apply_chat_template(conversation, chat_template=template, add_generation_prompt=True,
                                         tokenize=False)


def bos_in_template(tokenizer, chat_template: str | None):
    """(tokenizer that adds no BOS, template that writes it, the prefix written) when a prefix reproduces our ids
    on every probe; otherwise the inputs unchanged and prefix None."""
    if chat_template is None or not adds_bos(tokenizer):
        return tokenizer, chat_template, None
    before = tokenizer(_PROBE)["input_ids"]
    without = copy.deepcopy(tokenizer)
    without.add_bos_token = False  # transformers rebuilds the post-processor without BOS
    without.init_kwargs["add_bos_token"] = False  # and writes it to tokenizer_config.json for classes that rebuild
    if without(_PROBE)["input_ids"] != before[1:]:
        return tokenizer, chat_template, None
    ours = [tokenizer(_render(tokenizer, chat_template, c))["input_ids"] for c in PROBES]
    for prefix in PREFIXES:
        for special in (False, True):
            theirs = [without(_render(without, prefix + chat_template, c), add_special_tokens=special)["input_ids"]
                      for c in PROBES]
            if theirs != ours:
                break
        else:
            return without, prefix + chat_template, prefix
    return tokenizer, chat_template, None


def bos_out_of_template(tokenizer, chat_template: str | None, prefix: str):
    """The inverse of `bos_in_template`: (tokenizer that adds BOS, template without `prefix`)."""
    if chat_template is not None and chat_template.startswith(prefix):
        chat_template = chat_template.removeprefix(prefix)
    if not adds_bos(tokenizer):
        tokenizer.add_bos_token = True
        tokenizer.init_kwargs["add_bos_token"] = True
    return tokenizer, chat_template


def stop_token_ids(tokenizer, stop_strings) -> list[int]:
    """Ids of every token whose decoded text contains one of `stop_strings` (added tokens included)."""
    if not stop_strings:
        return []
    ids = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if any(stop in text for stop in stop_strings):
            ids.append(token_id)
    return ids


def as_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


__all__ = ["BOS", "adds_bos", "bos_in_template", "bos_out_of_template", "stop_token_ids", "as_list"]
