"""LLaVA processor: images -> `pixel_values`, text -> `input_ids` with each `<image>` expanded to its image tokens.

The chat template (one of the paper's conversation formats, see `transformers_llava.chat_templates`) is stored on
the processor and saved with it. Errors name the sample and the counts: images vs `<image>` placeholders per
sample, and truncation that would cut image tokens.

This file is also shipped inside saved checkpoints as remote code, so it imports only from transformers and the
image processing file beside it.
"""

import inspect
from dataclasses import dataclass

import numpy as np
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ImagesKwargs, MultiModalData, ProcessorMixin, TextKwargs
from transformers.utils.chat_template_utils import render_jinja_template

IGNORE_INDEX = -100  # label of a token that carries no loss



def package_checkpoints():
    """`transformers_llava.checkpoints` (loaders of the original LLaVA releases and llava-hf), or None where this file
    runs as a checkpoint's remote code on a machine without the package."""
    try:
        import transformers_llava.checkpoints as checkpoints
    except ImportError:
        return None
    return checkpoints


@dataclass
class EncodedConversation:
    """One conversation as the model reads it (see `TransformersLlavaProcessor.encode_conversation`).

    `input_ids`, `labels`: `[L]` int64, every image expanded into its tokens; labels are `IGNORE_INDEX` except on
    the answers and their stop tokens. `image_positions`: `[N_img]`, the index of each image's first token.
    `text`: the rendered conversation (one `<image>` per image). `offsets`: `[L, 2]`, the characters of `text` each
    token covers (`[0, 0]` for an added BOS; every token of an image covers its one placeholder).
    """

    input_ids: np.ndarray
    labels: np.ndarray
    image_positions: np.ndarray
    text: str
    offsets: np.ndarray


class TransformersLlavaProcessor(ProcessorMixin):
    """Same constructor as transformers' `LlavaProcessor`.

    Args:
        image_processor: a `TransformersLlavaImageProcessor` (or any CLIP-style image processor).
        tokenizer: the language model's tokenizer, holding the `<image>` token.
        patch_size: the vision tower's patch size.
        vision_feature_select_strategy: `"default"` drops the CLS token (one fewer image token), `"full"` keeps it.
        chat_template: a Jinja chat template (one of the paper's formats).
        image_token: the placeholder string, `<image>`.
        num_additional_image_tokens: tokens the tower adds besides patches (1 for CLIP's CLS).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        num_additional_image_tokens=0,
        **kwargs,
    ):
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        ids = tokenizer.encode(self.image_token, add_special_tokens=False) if tokenizer is not None else [None]
        if tokenizer is not None and len(ids) != 1:
            raise ValueError(
                f"The tokenizer splits the image placeholder {self.image_token!r} into {len(ids)} tokens {ids}; add "
                "it as one special token (`tokenizer.add_special_tokens`) and resize the model's embeddings."
            )
        self.image_token_id = ids[0]
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Like `LlavaProcessor.__call__`, with one default on special tokens: every prompt starts with exactly one BOS.

        The original LLaVA tokenised each prompt with one leading BOS, and the chat templates render the original
        text without it. So unless `add_special_tokens` is given, the tokenizer's special tokens are added exactly
        when the text does not already start with BOS. An explicit `add_special_tokens` is honoured as given (the
        ids are then exactly the text's tokens, as `text_replacement_offsets` and vLLM assume).
        """
        explicit = "add_special_tokens" in kwargs or "add_special_tokens" in kwargs.get("text_kwargs", {})
        bos = getattr(self.tokenizer, "bos_token", None)
        texts = [text] if isinstance(text, str) else text
        if not explicit and bos and texts and all(isinstance(sample, str) for sample in texts):
            starts = {sample.startswith(bos) for sample in texts}
            if len(starts) > 1:
                raise ValueError(
                    f"Some prompts in this batch start with {bos!r} and some do not; render them all the same way."
                )
            kwargs["add_special_tokens"] = not starts.pop()
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`; a tokenised conversation always starts with exactly one BOS, and
        settings of the processor call given beside the template's arguments (`padding=True` for a batch,
        `max_length`, `max_image_pixels`, ...) are passed on as `processor_kwargs` without transformers' warning that
        they belong there.

        The templates leave the BOS out (the original added it when tokenising), so an `add_special_tokens` meant
        for templates that write it themselves (TRL's collator passes `False`) is not applied to a conversation.
        """
        if kwargs.get("tokenize"):
            kwargs.pop("add_special_tokens", None)
            if kwargs.get("processor_kwargs"):
                kwargs["processor_kwargs"] = {
                    k: v for k, v in kwargs["processor_kwargs"].items() if k != "add_special_tokens"
                }
        named = inspect.signature(ProcessorMixin.apply_chat_template).parameters
        images_kwargs = getattr(self.image_processor, "valid_kwargs", ImagesKwargs)
        call_settings = (set(TextKwargs.__annotations__) | set(images_kwargs.__annotations__)) - set(named)
        moved = {key: kwargs.pop(key) for key in list(kwargs) if key in call_settings}
        if moved:
            kwargs["processor_kwargs"] = {**moved, **(kwargs.get("processor_kwargs") or {})}
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a processor saved by this package, or of an original LLaVA release or llava-hf checkpoint
        (`checkpoints.loaders.load_foreign_processor`)."""
        checkpoints = package_checkpoints()
        processor = checkpoints.load_foreign_processor(cls, pretrained_model_name_or_path, **kwargs) \
            if checkpoints is not None else None
        return processor if processor is not None else super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens one processed image of `height x width` pixels becomes in the text."""
        if not self.patch_size:
            raise ValueError("LlavaProcessor.patch_size is not set; it is needed to count image tokens.")
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image for images of the given `(height, width)` sizes, as transformers'
        `LlavaProcessor` reports them (vLLM and transformers' tests read it). Every image is resized and cropped or
        padded to `crop_size` first, so each becomes the same number of tokens whatever its size."""
        vision_data = {}
        if image_sizes is not None:
            crop = self._merge_kwargs(**kwargs)["images_kwargs"].get("crop_size") or self.image_processor.crop_size
            count = self.num_image_tokens(crop["height"], crop["width"])
            vision_data.update(num_image_tokens=[count] * len(image_sizes), num_image_patches=[1] * len(image_sizes))
        return MultiModalData(**vision_data)

    @property
    def tokens_per_image(self) -> int:
        """Tokens every image becomes: the image processor outputs `crop_size` pixels, whatever the input size."""
        crop = self.image_processor.crop_size
        return self.num_image_tokens(crop["height"], crop["width"])

    def encode_conversation(self, messages: list[dict], images: list | None = None, *, chat_template: str | None = None,
                            add_generation_prompt: bool = False, tokens_per_image: int | None = None,
                            sample_id=None) -> EncodedConversation:
        """One conversation -> ids, labels and image positions: the single path from chat messages to what the model
        reads, shared by training (collator, length filter), the chat, evaluation and serving.

            encoded = processor.encode_conversation(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
                images=["cat.jpg"])        # only counted, never opened: pixel values are the image processor's job
            encoded.input_ids              # [BOS] SYSTEM USER: <image>*576 \nWhat is this? ASSISTANT: A cat.</s>
            encoded.labels                 # -100 everywhere but "A cat.</s>"
            encoded.image_positions        # [first index of the image's 576 tokens]

        The text is rendered with the chat template (`chat_template`: a template or the name of one of the
        processor's, else its default) and tokenised once with one placeholder per image, which is then repeated
        into `tokens_per_image` tokens (default: `self.tokens_per_image`). Labels supervise exactly the tokens
        inside the template's `{% generation %}` spans (each answer and its stop token, as the original LLaVA
        did); image tokens never. BOS follows `__call__`'s rule: one is added unless the text starts with it.
        `images` (paths or images), when given, must match the conversation's image parts; `sample_id` names the
        sample in errors. `add_generation_prompt=True` ends with the open assistant turn, for generation.
        """
        name = "This conversation" if sample_id is None else f"Sample {sample_id}"
        if images is not None:
            parts = sum(part.get("type") == "image" for message in messages
                        if not isinstance(message["content"], str) for part in message["content"])
            parts += sum(message["content"].count(self.image_token) for message in messages
                         if isinstance(message["content"], str))
            if parts != len(images):
                raise ValueError(f"{name}: {len(images)} image(s) but {parts} image part(s) in its messages.")
        tokenizer = self.tokenizer
        (text,), (spans,) = render_jinja_template(
            [messages], chat_template=self._resolve_chat_template(chat_template),
            add_generation_prompt=add_generation_prompt, return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map)
        bos = getattr(tokenizer, "bos_token", None)
        encoding = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True)
        ids = np.asarray(encoding["input_ids"], dtype=np.int64)
        offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        supervised = np.zeros(len(ids), dtype=bool)
        for start, end in spans:  # tokens overlapping an answer span (added special tokens have empty offsets)
            supervised |= (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])
        is_image = ids == self.image_token_id
        if images is not None and is_image.sum() != len(images):
            raise ValueError(f"{name}: the rendered text holds {is_image.sum()} {self.image_token} for "
                             f"{len(images)} image(s).")
        per_image = self.tokens_per_image if tokens_per_image is None else tokens_per_image
        repeats = np.where(is_image, per_image, 1)
        expanded_is_image = np.repeat(is_image, repeats)
        starts = np.cumsum(repeats) - repeats  # where each original token lands once images are expanded
        return EncodedConversation(
            input_ids=np.repeat(ids, repeats),
            labels=np.where(expanded_is_image | ~np.repeat(supervised, repeats), IGNORE_INDEX, np.repeat(ids, repeats)),
            image_positions=starts[is_image],
            text=text,
            offsets=np.repeat(offsets, repeats, axis=0),
        )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        height, width = image_inputs["pixel_values"][image_idx].shape[-2:]
        return self.image_token * self.num_image_tokens(height, width)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Images per sample must match `<image>` placeholders per sample; say which sample does not."""
        if text is not None and images is not None and isinstance(text, list) and all(isinstance(t, str) for t in text):
            nested = isinstance(images, (list, tuple)) and len(images) == len(text) and all(
                isinstance(group, (list, tuple)) for group in images
            )
            if nested:
                for index, (sample, group) in enumerate(zip(text, images)):
                    placeholders = sample.count(self.image_token)
                    if placeholders != len(group):
                        raise ValueError(
                            f"Sample {index} has {len(group)} image(s) but {placeholders} {self.image_token} "
                            "placeholder(s) in its text; each image needs exactly one placeholder."
                        )
            else:
                placeholders = [sample.count(self.image_token) for sample in text]
                n_images = len(make_flat_list_of_images(images))
                if sum(placeholders) != n_images:
                    per_sample = ", ".join(f"sample {i}: {n}" for i, n in enumerate(placeholders))
                    raise ValueError(
                        f"{n_images} image(s) were given but the text holds {sum(placeholders)} {self.image_token} "
                        f"placeholder(s) ({per_sample}); each image needs exactly one placeholder."
                    )
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _check_special_mm_tokens(self, text, text_inputs, modalities):
        """Truncation must never cut image tokens: name the sample and how many were lost."""
        input_ids = text_inputs["input_ids"]
        input_ids = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
        for index, (sample, ids) in enumerate(zip(text, input_ids)):
            expected = sample.count(self.image_token)
            kept = list(ids).count(self.image_token_id)
            if kept != expected:
                raise ValueError(
                    f"Sample {index}: truncation keeps {kept} of its {expected} image tokens ({len(ids)} tokens "
                    "kept). Image tokens must never be cut: raise max_length, or drop or shorten this sample."
                )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]

# Loaded as a checkpoint's remote code (`trust_remote_code=True`) on a machine where transformers-llava is
# installed: the installed package is used, so one process never mixes two versions of these classes.
if not __name__.startswith("transformers_llava."):
    try:
        from transformers_llava.processing_llava import TransformersLlavaProcessor  # noqa: F811
    except ImportError:
        pass


__all__ = ["TransformersLlavaProcessor", "EncodedConversation", "IGNORE_INDEX"]
