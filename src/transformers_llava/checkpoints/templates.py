"""The conversation format that comes with each original release, and its image placeholder.

    from transformers_llava.checkpoints.templates import conversation_format, release_chat_template
    conversation_format("llava-v1.5-7b", config)          # "vicuna_v1"
    release_chat_template("llava_v0", im_start_end=True)  # renders "<im_start><image><im_end>\n" for each image

The original code picked the format from the model's name (`llava/eval/run_llava.py`): "llama-2" -> llava_llama_2,
"v1" -> llava_v1, otherwise llava_v0. LLaVA-1.5 was trained and evaluated with `vicuna_v1` (`--version v1`), so
names saying v1.5, or an MLP projector, pick that. Directories renamed away from the release name fall back on the
config: `mm_use_im_start_end` (the v0 era) -> llava_v0, otherwise llava_v1.

With `mm_use_im_start_end` the original wrapped each image as `<im_start><image><im_end>`: the two marker tokens keep
their own embeddings around the image features. The chat template renders exactly that, and the processor expands
the `<image>` in the middle, so the token sequence is the original's.
"""

from ..chat_templates import FORMATS, load_chat_template

IMAGE, WRAPPED = "<image>", "<im_start><image><im_end>"
# The two places each conversation template writes the image placeholder: string content and image parts.
_STRING_CONTENT = "{%- if content is string -%}{{ content }}"
_IMAGE_PART = "{%- if part.type == 'image' -%}<image>{{ '\\n' }}"


def conversation_format(name: str, config: dict) -> str:
    """The conversation format of an original release called `name` with flat config `config`."""
    lowered = name.lower()
    if "llama-2" in lowered or "llama_2" in lowered:
        return "llava_llama_2"
    if any(tag in lowered for tag in ("v1.5", "v1_5", "v1-5")) or config.get("mm_projector_type", "").startswith("mlp"):
        return "vicuna_v1"
    if "v1" in lowered:
        return "llava_v1"
    if "v0" in lowered or config.get("mm_use_im_start_end", False):
        return "llava_v0"
    return "llava_v1"


def release_chat_template(format_name: str, im_start_end: bool = False) -> str:
    """The Jinja chat template of `format_name`, with images wrapped in `<im_start>`/`<im_end>` when asked."""
    template = load_chat_template(format_name)
    if not im_start_end:
        return template
    if _STRING_CONTENT not in template or _IMAGE_PART not in template:
        raise ValueError(
            f"The {format_name!r} template has no image placeholder to wrap in <im_start>/<im_end> (formats that "
            f"have one: {', '.join(f for f in FORMATS if f != 'plain')})."
        )
    # String content may already carry the markers; normalise before wrapping so they are never doubled.
    unwrapped = f"content.replace('{WRAPPED}', '{IMAGE}').replace('{IMAGE}', '{WRAPPED}')"
    template = template.replace(_STRING_CONTENT, "{%- if content is string -%}{{ " + unwrapped + " }}")
    return template.replace(_IMAGE_PART, "{%- if part.type == 'image' -%}" + WRAPPED + "{{ '\\n' }}")


__all__ = ["conversation_format", "release_chat_template"]
