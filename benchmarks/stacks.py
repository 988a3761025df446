"""The training stacks under comparison, loaded from the same saved weights.

    model, processor = load_model("builtin", root)             # transformers' LlavaForConditionalGeneration
    trainer = make_stack_trainer("ours", root, "stage2", args)   # our model + make_trainer(padding_free=True)

- `ours`: our model trained with `make_trainer(..., padding_free=True)` (packed rows, per-sample attention, LM head
  only on supervised positions).
- `ours_padded`: the same with `padding_free=False` (padded rows), to separate packing from the rest.
- `ours_dense`: packed rows like `ours`, but attention as transformers' `sdpa` does it for a packed row: one
  block-diagonal mask over the whole row, (ΣL)² work instead of Σ L_i² (the per-sample attention lever, measured).
- `builtin`: transformers' built-in `LlavaForConditionalGeneration` and `LlavaProcessor` with our weights, chat
  template and image preprocessing (so both stacks see identical ids, labels and pixels), trained with TRL's
  `SFTTrainer` and its own vision collator (`assistant_only_loss=True`, `max_length=None`).

Both stacks freeze with the same `prepare_stage` (the built-in model has the same part names), so stage 1 trains the
projector and stage 2 the projector, LLM and LM head, with the vision tower frozen.
"""

from pathlib import Path

import datasets
import torch
from transformers import CLIPImageProcessorPil
from transformers import LlavaConfig as BuiltinLlavaConfig
from transformers import LlavaForConditionalGeneration as BuiltinLlava
from transformers import LlavaProcessor as BuiltinLlavaProcessor
from trl import SFTConfig, SFTTrainer

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
from transformers_llava.training.stages import prepare_stage
from transformers_llava.training.trainer import make_trainer

STACKS = ("ours", "ours_dense", "ours_padded", "builtin")


def builtin_from_ours(model, processor):
    """transformers' built-in Llava and LlavaProcessor holding exactly our model's weights and settings."""
    config = model.config
    builtin = BuiltinLlava(BuiltinLlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id, image_seq_length=config.image_seq_length,
        projector_hidden_act=config.projector_hidden_act, vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        multimodal_projector_bias=config.multimodal_projector_bias,
    ))
    builtin.load_state_dict(model.state_dict(), strict=True)
    builtin.generation_config = model.generation_config
    ours_images = processor.image_processor
    settings = {key: getattr(ours_images, key) for key in ("size", "crop_size", "image_mean", "image_std",
                                                           "do_convert_rgb", "resample", "rescale_factor")}
    builtin_processor = BuiltinLlavaProcessor(
        image_processor=CLIPImageProcessorPil(**settings), tokenizer=processor.tokenizer,
        patch_size=processor.patch_size, vision_feature_select_strategy=processor.vision_feature_select_strategy,
        num_additional_image_tokens=processor.num_additional_image_tokens, chat_template=processor.chat_template,
    )
    return builtin.eval(), builtin_processor


def load_model(stack: str, root: str | Path, dtype: torch.dtype = torch.float32):
    """(model, processor) of one stack, in eval mode, weights in `dtype`."""
    if stack not in STACKS:
        raise ValueError(f"Unknown stack {stack!r}; choose one of {', '.join(STACKS)}.")
    model = LlavaForConditionalGeneration.from_pretrained(Path(root) / "model").eval()
    processor = LlavaProcessor.from_pretrained(Path(root) / "model")
    if stack == "builtin":
        model, processor = builtin_from_ours(model, processor)
    return model.to(dtype), processor


def load_dataset(root: str | Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(Path(root) / "data"))


def training_args(output_dir, *, batch_size: int, steps: int, bf16: bool, seed: int, device: str = "cpu") -> SFTConfig:
    """The same `SFTConfig` for every stack. bf16=True means Trainer's autocast (weights stay fp32) in both.
    Gradient checkpointing (TRL's default) is off for both: these mini models are compute- not memory-bound."""
    return SFTConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=1e-3,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=device == "cpu",
        disable_tqdm=True, gradient_checkpointing=False, bf16=bf16, assistant_only_loss=True, max_length=None,
        seed=seed, data_seed=seed, dataloader_num_workers=0,
    )


def make_stack_trainer(stack: str, root: str | Path, stage: str, args: SFTConfig) -> SFTTrainer:
    model, processor = load_model(stack, root)
    dataset = load_dataset(root)
    if stack == "builtin":
        # TRL's collator tokenises the rendered chat with add_special_tokens=False, so the built-in LlavaProcessor
        # adds no BOS, while ours starts every prompt with exactly one (as the original LLaVA did). The template
        # emits it here, with the space a Llama tokenizer marks the first word with (`▁A`), so that both stacks
        # train on identical ids and labels (checked per sample by `report.validate`).
        processor.chat_template = "{{ bos_token ~ ' ' }}" + processor.chat_template
        return SFTTrainer(model=prepare_stage(model, stage), args=args, train_dataset=dataset,
                          processing_class=processor)
    trainer = make_trainer(model, processor, dataset, args, stage=stage, padding_free=stack in ("ours", "ours_dense"))
    if stack == "ours_dense":
        trainer.model.set_attn_implementation({"text_config": "sdpa"})
    return trainer
