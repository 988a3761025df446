"""LLaVA processor: images -> `pixel_values`, text -> `input_ids` with each `<image>` expanded to its image tokens.

The chat template (one of the paper's conversation formats, see `transformers_llava.chat_templates`) is stored on
the processor and saved with it. Errors name the sample and the counts: images vs `<image>` placeholders per
sample, and truncation that would cut image tokens.

This file is also shipped inside saved checkpoints as remote code, so it imports only from transformers and the
image processing file beside it.
"""

import inspect

from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ImagesKwargs, ProcessorMixin, TextKwargs

# Loaders for processors of other checkpoint layouts (the original LLaVA releases, llava-hf); see
# `modeling_llava.FOREIGN_CHECKPOINT_LOADERS`. Each takes `(cls, path, **kwargs)` and returns a processor or None.
FOREIGN_PROCESSOR_LOADERS: list = []


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
        """Like `LlavaProcessor.__call__`, with one rule on special tokens: every prompt starts with exactly one BOS.

        The original LLaVA tokenised each prompt with one leading BOS. The chat templates render the original text
        without it, and callers such as TRL's collator pass `add_special_tokens=False` to avoid a second one; so the
        tokenizer's special tokens are added exactly when the text does not already start with BOS.
        """
        bos = getattr(self.tokenizer, "bos_token", None)
        texts = [text] if isinstance(text, str) else text
        if bos and texts and all(isinstance(sample, str) for sample in texts):
            starts = {sample.startswith(bos) for sample in texts}
            if len(starts) > 1:
                raise ValueError(
                    f"Some prompts in this batch start with {bos!r} and some do not; render them all the same way."
                )
            kwargs.pop("add_special_tokens", None)
            kwargs.get("text_kwargs", {}).pop("add_special_tokens", None)
            kwargs["add_special_tokens"] = not starts.pop()
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """transformers' `apply_chat_template`; settings of the processor call given beside the template's arguments
        (`padding=True` for a batch, `max_length`, `max_image_pixels`, ...) are passed on as `processor_kwargs`
        without transformers' warning that they belong there."""
        named = inspect.signature(ProcessorMixin.apply_chat_template).parameters
        images_kwargs = getattr(self.image_processor, "valid_kwargs", ImagesKwargs)
        call_settings = (set(TextKwargs.__annotations__) | set(images_kwargs.__annotations__)) - set(named)
        moved = {key: kwargs.pop(key) for key in list(kwargs) if key in call_settings}
        if moved:
            kwargs["processor_kwargs"] = {**moved, **(kwargs.get("processor_kwargs") or {})}
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a processor saved by this package, or of any layout a registered foreign-format loader recognises."""
        for loader in FOREIGN_PROCESSOR_LOADERS:
            processor = loader(cls, pretrained_model_name_or_path, **kwargs)
            if processor is not None:
                return processor
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens one processed image of `height x width` pixels becomes in the text."""
        if not self.patch_size:
            raise ValueError("LlavaProcessor.patch_size is not set; it is needed to count image tokens.")
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    @property
    def tokens_per_image(self) -> int:
        """Tokens every image becomes: the image processor outputs `crop_size` pixels, whatever the input size."""
        crop = self.image_processor.crop_size
        return self.num_image_tokens(crop["height"], crop["width"])

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


__all__ = ["TransformersLlavaProcessor"]
