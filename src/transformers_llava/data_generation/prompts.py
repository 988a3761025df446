"""The released prompts for the three instruction-data types (the instruction lists are in `formats.instructions`).

Bundled with the package under `transformers_llava/data/` (copied byte for byte from the LLaVA release), so nothing
is read from elsewhere at run time.

    prompt_set = load_prompt_set("complex_reasoning")
    messages = build_messages(prompt_set, format_context(image, with_boxes=prompt_set.with_boxes))
    # [system, (user: few-shot caps, assistant: few-shot response) x N, user: the query]
"""

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
PROMPTS_DIR = DATA_DIR / "prompts"

# data type -> whether its symbolic image includes the boxes (paper section 3: conversation sees captions only)
DATA_TYPES = {"conversation": False, "detail_description": True, "complex_reasoning": True}


@dataclass(frozen=True)
class PromptSet:
    """One data type's system message and few-shot (context, response) pairs, in file order."""

    data_type: str
    system: str
    examples: tuple[tuple[str, str], ...]

    @property
    def with_boxes(self) -> bool:
        return DATA_TYPES[self.data_type]


def check_data_type(data_type: str) -> str:
    if data_type not in DATA_TYPES:
        raise ValueError(f"unknown instruction-data type {data_type!r}; choose from {sorted(DATA_TYPES)}")
    return data_type


@cache
def load_prompt_set(data_type: str, root: str | os.PathLike | None = None) -> PromptSet:
    """The prompts of `data_type` from `root/<data_type>/` (default: the bundled copy of the release)."""
    folder = Path(root or PROMPTS_DIR) / check_data_type(data_type)
    system = (folder / "system_message.txt").read_text(encoding="utf-8")
    examples = []
    for caps in sorted(folder.glob("*_caps.txt")):
        response = caps.with_name(caps.name.replace("_caps.txt", "_conv.txt"))
        if not response.exists():
            raise FileNotFoundError(f"few-shot context {caps} has no response file {response.name}")
        examples.append((caps.read_text(encoding="utf-8"), response.read_text(encoding="utf-8")))
    if not examples:
        raise FileNotFoundError(f"no few-shot examples (NNN_caps.txt / NNN_conv.txt) in {folder}")
    return PromptSet(data_type, system, tuple(examples))


def build_messages(prompt_set: PromptSet, context: str) -> list[dict]:
    """Chat messages for one query: the system message, each few-shot pair as a user/assistant turn, the query."""
    messages = [{"role": "system", "content": prompt_set.system}]
    for example_context, example_response in prompt_set.examples:
        messages.append({"role": "user", "content": example_context})
        messages.append({"role": "assistant", "content": example_response})
    messages.append({"role": "user", "content": context})
    return messages
