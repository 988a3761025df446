"""The paper's conversation formats as Jinja chat templates, one file per format.

Each template renders exactly the prompt string the original implementation built (see
`shared/reference/paper/CONVERSATIONS.md`) and wraps every assistant answer together with its stop token in
`{% generation %}`, so that TRL's `assistant_only_loss` supervises what the original supervised. The BOS token is
not part of the text: like the original's tokenizer, the processor puts exactly one in front of every prompt.
"""

from importlib import resources

# format name -> the text that ends an assistant turn when it is not the tokenizer's EOS token
STOP_STRINGS = {"llava_v0": ["###"]}
FORMATS = ("llava_v0", "llava_v1", "vicuna_v1", "llava_llama_2", "plain")


def load_chat_template(name: str) -> str:
    """The Jinja source of one conversation format: llava_v0, llava_v1, vicuna_v1, llava_llama_2 or plain."""
    if name not in FORMATS:
        raise ValueError(f"Unknown conversation format {name!r}; known formats: {', '.join(FORMATS)}.")
    return resources.files(__package__).joinpath(f"{name}.jinja").read_text(encoding="utf-8")
