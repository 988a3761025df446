"""LLaVA modeling: vision tower -> projector -> image tokens spliced into the LLM's input embeddings.

`TransformersLlavaModel` is the backbone (`base_model_prefix = "model"`): it returns the LLM's last hidden states, so
TRL's fused LM head, padding-free training and generation all go through the same code path.
`TransformersLlavaForConditionalGeneration` adds the `lm_head` and the loss.

The towers are reused from transformers (`AutoModel.from_config`); only the projector and the splice are LLaVA's.
This file is also shipped inside saved checkpoints as remote code, so it imports only from transformers, torch and
the configuration file beside it.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from .configuration_llava import MODEL_TYPE, TransformersLlavaConfig, projector_depth

# transformers writes llava checkpoints in its older layout (`language_model.model.*`, `language_model.lm_head`,
# top-level `vision_tower` / `multi_modal_projector`) and renames them on load. A model type outside transformers
# gets those renames only when registered, else `lm_head.weight` and the LLM are silently re-initialised. It is
# registered here, not in the package, so that remote-code copies of this file load their checkpoints too.
register_checkpoint_conversion_mapping(
    MODEL_TYPE,
    [
        WeightRenaming(source_patterns=r"^language_model.lm_head", target_patterns="lm_head"),
        WeightRenaming(source_patterns=r"^language_model.model", target_patterns="model.language_model"),
        WeightRenaming(source_patterns=r"^vision_tower", target_patterns="model.vision_tower"),
        WeightRenaming(source_patterns=r"^multi_modal_projector", target_patterns="model.multi_modal_projector"),
    ],
    overwrite=True,
)



def package_checkpoints():
    """`transformers_llava.checkpoints`: loaders of the other checkpoint layouts (original LLaVA releases, llava-hf),
    the model card and the training record. None where this file runs as a checkpoint's remote code on a machine
    without the package: such a copy loads and saves this package's own format only."""
    try:
        import transformers_llava.checkpoints as checkpoints
    except ImportError:
        return None
    return checkpoints


@dataclass
class LlavaModelOutputWithPast(BaseModelOutputWithPast):
    """Backbone output; `image_hidden_states` are the projected image features `[N_img * T, D_llm]`."""

    image_hidden_states: torch.Tensor | None = None


@dataclass
class LlavaCausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: torch.Tensor | None = None


class LlavaMultiModalProjector(nn.Module):
    """Vision features `[N, T, D_vis * n_layers]` -> LLM embeddings `[N, T, D_llm]`.

    `linear` is the paper's projection `W z + b` (one layer, no activation); `mlpNx_gelu` stacks N layers with the
    activation between them (LLaVA-1.5 uses N = 2). Layers are named `linear_1..linear_N` as in llava-hf.
    """

    def __init__(self, config: TransformersLlavaConfig):
        super().__init__()
        depth = projector_depth(config.projector_type)
        d_in = config.vision_config.hidden_size * config.num_feature_layers
        d_out = config.text_config.hidden_size
        self.depth = depth
        self.linear_1 = nn.Linear(d_in, d_out, bias=config.multimodal_projector_bias)
        for i in range(2, depth + 1):
            setattr(self, f"linear_{i}", nn.Linear(d_out, d_out, bias=config.multimodal_projector_bias))
        self.act = ACT2FN[config.projector_hidden_act] if depth > 1 else None

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(image_features)
        for i in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{i}")(self.act(hidden))
        return hidden


def suppress_image_token(model) -> None:
    """The `<image>` token is an input placeholder, never an answer: `generate` suppresses it by default.

    Set when the model is built or loaded, and only where the generation config names no `suppress_tokens` yet, so
    it is saved in generation_config.json and a config that says otherwise is kept. `generate(...,
    suppress_tokens=[])` (or `model.generation_config.suppress_tokens = []`) lets the model emit it; a decoding step
    that receives it embeds it as a text token.
    """
    generation_config = getattr(model, "generation_config", None) if model.can_generate() else None
    if generation_config is not None and generation_config.suppress_tokens is None:
        generation_config.suppress_tokens = [model.config.image_token_id]


class TransformersLlavaPreTrainedModel(PreTrainedModel):
    config_class = TransformersLlavaConfig
    config: TransformersLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a checkpoint of this package with its training record (`training_record.json`), or an original
        LLaVA release or llava-hf checkpoint, converted as it loads (`checkpoints.loaders.load_foreign_model`).
        The backbone (`AutoModel`) loads every layout too."""
        checkpoints = package_checkpoints()
        model = None
        if checkpoints is not None:
            model = checkpoints.load_foreign_model(cls, pretrained_model_name_or_path, *args, **kwargs)
        own_format = model is None
        if own_format:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model  # `output_loading_info=True` returns (model, info)
        if own_format and checkpoints is not None and pretrained_model_name_or_path is not None:
            record = checkpoints.read_training_record(pretrained_model_name_or_path, **kwargs)
            if record is not None:
                checkpoints.set_provenance(loaded.config, record)
        suppress_image_token(loaded)  # checkpoints saved before the default, or without generation_config.json
        return model

    def _init_weights(self, module):
        # Towers initialise themselves (they are PreTrainedModels); only the projector is ours.
        if isinstance(module, LlavaMultiModalProjector):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for i in range(1, module.depth + 1):
                layer = getattr(module, f"linear_{i}")
                nn.init.normal_(layer.weight, mean=0.0, std=std)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


class TransformersLlavaModel(TransformersLlavaPreTrainedModel):
    """Vision tower + projector + language model (no LM head)."""

    def __init__(self, config: TransformersLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Encode `pixel_values [N_img, 3, H, W]`; `pooler_output` is a list of `N_img` tensors `[T, D_llm]`.

        The rest is the vision tower's own output, as in transformers' Llava: `hidden_states` / `attentions` when
        asked for (`output_hidden_states=True`, `output_attentions=True`, or the vision config's flags); a tuple
        with `return_dict=False`. Only the selected layers are captured otherwise.
        """
        layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
        tower_dtype = self.vision_tower.dtype
        # A frozen tower (every LLaVA stage) needs no autograd graph: no activations kept for backward.
        frozen = not any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.no_grad() if frozen and torch.is_grad_enabled() else nullcontext():
            tower_out = self.vision_tower(pixel_values.to(tower_dtype), return_dict=True, **kwargs)
        selected = [tower_out.hidden_states[layer] for layer in layers]  # each [N_img, 1 + P, D_vis]
        if vision_feature_select_strategy == "default":
            selected = [hidden[:, 1:] for hidden in selected]  # CLS dropped: the paper uses patch features only
        features = torch.cat(selected, dim=-1)  # [N_img, T, D_vis * n_layers]
        projected = self.multi_modal_projector(features.to(self.multi_modal_projector.linear_1.weight.dtype))
        tower_out.pooler_output = list(projected)  # [T, D_llm] per image
        return tower_out

    def _image_token_mask(self, input_ids, inputs_embeds) -> torch.Tensor:
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    def _check_image_tokens(self, mask: torch.Tensor, image_features: list[torch.Tensor]) -> None:
        per_row = mask.sum(-1).tolist()
        n_tokens, n_features = sum(per_row), sum(len(f) for f in image_features)
        if n_tokens == n_features:
            return
        tokens_per_image = len(image_features[0]) if image_features else 0
        rows = ", ".join(f"row {i}: {n}" for i, n in enumerate(per_row))
        raise ValueError(
            f"Image tokens and image features do not match: the input_ids hold {n_tokens} image tokens ({rows}) but "
            f"{len(image_features)} images give {n_features} features ({tokens_per_image} per image). Every `<image>` "
            "must be expanded by the processor into exactly that many tokens; a truncated sequence cuts them."
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaModelOutputWithPast:
        """Without image features (no `pixel_values` / `mm_encoder_outputs`), image tokens in `input_ids` are
        embedded as ordinary tokens, as in transformers' Llava: a decoding step that generated `<image>`, or an
        assistant model in assisted generation (which is given the ids but not the image), never fails."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if pixel_values is not None and (mm_encoder_outputs or {}).get("image") is not None:
            raise ValueError("Pass either `pixel_values` or pre-encoded `mm_encoder_outputs['image']`, not both.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, L, D_llm]

        encoded = (mm_encoder_outputs or {}).get("image")
        if encoded is None and pixel_values is not None:
            encoded = self.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                return_dict=True,
            )
        image_features = None
        if encoded is not None:
            mask = self._image_token_mask(input_ids, inputs_embeds)  # [B, L]
            self._check_image_tokens(mask, encoded.pooler_output)
            image_features = torch.cat(encoded.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            # Placeholders are filled in reading order: row by row, left to right, image after image.
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features)

        if position_ids is not None and attention_mask is None and past_key_values is None:
            # Several samples packed along the time axis (positions restart at 0 per sample): the LLM builds a
            # block-diagonal causal mask from position_ids, which it only does without a cache.
            use_cache = False
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return LlavaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class TransformersLlavaForConditionalGeneration(TransformersLlavaPreTrainedModel, GenerationMixin):
    """LLaVA with its language-modeling head; `generate` reuses the encoded image across decoding steps."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: TransformersLlavaConfig):
        super().__init__(config)
        self.model = TransformersLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        suppress_image_token(self)


    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also map `AutoModel` (the backbone) in the saved `auto_map`, for loading without the package."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                "AutoModel": "modeling_llava.TransformersLlavaModel"}
        # Weights are saved under the names they have in memory, not reverted to transformers' older llava layout:
        # a plain `load_state_dict` then reads them back, which is what Trainer's `resume_from_checkpoint` does
        # (transformers#43701). The renames registered above still load checkpoints in the older layout.
        kwargs.setdefault("save_original_format", False)
        checkpoints = package_checkpoints()
        # The training record goes to its own file, not into config.json (`checkpoints.training_record`).
        with checkpoints.kept_out_of_config(self.config) if checkpoints else nullcontext():
            result = super().save_pretrained(save_directory, *args, **kwargs)
        if checkpoints is not None and kwargs.get("is_main_process", args[0] if args else True):
            checkpoints.write_checkpoint_files(self, save_directory)  # training_record.json and README.md
        return result

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        checkpoints = package_checkpoints()
        if checkpoints is not None:  # our card replaces the generic README.md push_to_hub has just written
            checkpoints.write_model_card(self, working_dir, repo_id=repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """Without a cache every step re-reads the whole sequence with its images. `<image>` tokens generated since
        the prompt (allowed with `suppress_tokens=[]`) are then text: the image features fill the prompt's
        placeholders only, and the step gets the embeddings."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        ids, pixel_values = inputs.get("input_ids"), inputs.get("pixel_values")
        encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")  # generate encodes the images up front
        if kwargs.get("is_first_iteration") or ids is None or (pixel_values is None and encoded is None):
            return inputs
        mask = ids == self.config.image_token_id  # [B, L]
        if encoded is None:
            encoded = self.model.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                return_dict=True,
            )
        features = torch.cat(encoded.pooler_output)  # [N_img * T, D_llm]
        # Generated tokens are the last g of every row: the smallest g that leaves exactly the prompt's placeholders.
        in_suffix = torch.cat([mask.new_zeros(1, dtype=torch.long), mask.flip(-1).sum(0).cumsum(0)])  # [L + 1]
        fits = (mask.sum() - in_suffix == len(features)).nonzero()
        if len(fits) == 0 or int(fits[0]) == 0:
            return inputs  # nothing generated is an image token, or a real mismatch the forward reports
        prompt_mask = mask.clone()
        prompt_mask[:, ids.shape[1] - int(fits[0]):] = False
        embeds = self.get_input_embeddings()(ids)
        inputs["inputs_embeds"] = embeds.masked_scatter(prompt_mask.unsqueeze(-1), features.to(embeds.dtype))
        inputs["input_ids"] = inputs["pixel_values"] = inputs["mm_encoder_outputs"] = None
        return inputs

    def get_image_features(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, **kw):
        return self.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kw,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaCausalLMOutputWithPast:
        """`logits_to_keep`: as in transformers (`slice_logits_to_keep`); a boolean `[B, L]` mask gives logits
        `[N_kept, V]` at those positions only (training's loss, see `training/trainer.py`)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)  # [B, L', D_llm] or [N_kept, D_llm]
        logits = self.lm_head(hidden)  # [B, L', V]
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

# Loaded as a checkpoint's remote code (`trust_remote_code=True`) on a machine where transformers-llava is
# installed: the installed package is used, so one process never mixes two versions of these classes.
if not __name__.startswith("transformers_llava."):
    try:
        from transformers_llava.modeling_llava import TransformersLlavaModel, TransformersLlavaForConditionalGeneration  # noqa: F811
    except ImportError:
        pass


__all__ = [
    "TransformersLlavaPreTrainedModel",
    "TransformersLlavaModel",
    "TransformersLlavaForConditionalGeneration",
    "LlavaMultiModalProjector",
]
