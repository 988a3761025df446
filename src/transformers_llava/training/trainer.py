"""One LLaVA training stage through TRL's `SFTTrainer`.

    trainer = make_trainer(model, processor, dataset, SFTConfig(...), stage="stage2")
    trainer.train()

`make_trainer` puts the model in the stage's trainable state, collates with the loss masking the paper used (each
answer and its stop token, from the `{% generation %}` tags of our chat templates; `LlavaDataCollator`), optionally
padding-free, evaluates the LM head only on supervised positions (`LlavaSFTTrainer`) and gives the projector its
own learning rate when asked. Sequence lengths are checked up front (`data.drop_too_long`), so nothing is ever
truncated through image tokens. Everything else is plain `SFTTrainer`.
"""

from trl import SFTConfig, SFTTrainer

from ..chat_templates import load_chat_template
from ..packed_attention import PACKED_SDPA
from .collator import LlavaDataCollator
from .sampler import ModalityLengthGroupedSampler, modality_lengths
from .stages import ProjectorLearningRate, prepare_stage, trainable_parameters


class LlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss evaluates the LM head only where a token is supervised (`loss_only=True`).

    TRL's fused head scores every position on CPU; with 256 image tokens and the prompt per sample, most of that
    vocabulary matmul is thrown away. The loss is the same (per token, normalised by `num_items_in_batch`).
    `group_by_modality_length=True` draws each optimizer step from one modality, as LLaVA-1.5 trained."""

    def __init__(self, *args, group_by_modality_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_modality_length = group_by_modality_length
        if group_by_modality_length and self.args.train_sampling_strategy != "random":
            raise ValueError(f"group_by_modality_length=True orders the samples itself; it cannot be combined with "
                             f"train_sampling_strategy={self.args.train_sampling_strategy!r}.")

    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return ModalityLengthGroupedSampler(
            modality_lengths(dataset), micro_batch=self.args.per_device_train_batch_size,
            micro_batches_per_step=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, use_cache=False, loss_only=True, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks, as in SFTTrainer
        return (loss, outputs) if return_outputs else loss


def make_trainer(
    model,
    processor,
    train_dataset,
    args: SFTConfig,
    *,
    stage: str,
    chat_template: str | None = None,
    projector_lr: float | None = None,
    padding_free: bool = False,
    group_by_modality_length: bool = False,
    lora=None,
    eval_dataset=None,
    callbacks=None,
) -> SFTTrainer:
    """An `SFTTrainer` for one stage (`stage1`, `stage2` or `lora`).

    `chat_template` names a conversation format to train with (e.g. `plain` for stage 1, as in the released code)
    without changing the processor's own; `padding_free` packs each batch into one row;
    `group_by_modality_length` gives every optimizer step samples of one modality (`sampler.py`)."""
    if padding_free and model.config.text_config._attn_implementation in ("sdpa", "eager", None):
        # Per-sample causal attention inside packed rows: Σ L_i² work, no (ΣL)² mask. Flash-attention
        # implementations read packed rows from position_ids themselves and are left alone.
        model.set_attn_implementation({"text_config": PACKED_SDPA})
    model = prepare_stage(model, stage, lora=lora)
    print(f"{stage}: trainable parameters\n{trainable_parameters(model)}")
    collator = LlavaDataCollator(processor, padding_free=padding_free,
                                 chat_template=load_chat_template(chat_template) if chat_template else None)
    optimizer = None
    if projector_lr is not None:
        optimizer = (ProjectorLearningRate, {"lr": args.learning_rate, "projector_lr": projector_lr,
                                             "weight_decay": args.weight_decay,
                                             "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon})
    return LlavaSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=collator,
        callbacks=callbacks,
        optimizer_cls_and_kwargs=optimizer,
        group_by_modality_length=group_by_modality_length,
    )


__all__ = ["make_trainer", "LlavaSFTTrainer"]
