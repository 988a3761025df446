"""One LLaVA training stage through TRL's `SFTTrainer`.

    trainer = make_trainer(model, processor, dataset, SFTConfig(...), stage="stage2")
    trainer.train()

`make_trainer` puts the model in the stage's trainable state, switches on the loss masking the paper used
(`assistant_only_loss`: each answer and its stop token, via the `{% generation %}` tags of our chat templates),
leaves `max_length` to the data (samples are length-checked up front so image tokens are never cut) and gives the
projector its own learning rate when asked. Everything else is plain `SFTTrainer`.
"""

import copy

from trl import SFTConfig, SFTTrainer

from ..chat_templates import load_chat_template
from .stages import ProjectorLearningRate, prepare_stage, trainable_parameters


def make_trainer(
    model,
    processor,
    train_dataset,
    args: SFTConfig,
    *,
    stage: str,
    chat_template: str | None = None,
    projector_lr: float | None = None,
    lora=None,
    eval_dataset=None,
    callbacks=None,
) -> SFTTrainer:
    """An `SFTTrainer` for one stage (`stage1`, `stage2` or `lora`); `chat_template` names a conversation format
    to train with (e.g. `plain` for stage 1 as in the released code) without changing the processor's own."""
    if args.max_length is not None:
        raise ValueError(
            f"SFTConfig.max_length={args.max_length} would let the collator truncate through image tokens; check "
            "lengths up front with transformers_llava.training.data.drop_too_long and set max_length=None."
        )
    if not args.assistant_only_loss:
        raise ValueError("LLaVA supervises only the answers: set SFTConfig(assistant_only_loss=True).")
    model = prepare_stage(model, stage, lora=lora)
    print(f"{stage}: trainable parameters\n{trainable_parameters(model)}")
    if chat_template is not None:
        processor = copy.copy(processor)
        processor.chat_template = load_chat_template(chat_template)
    optimizer = None
    if projector_lr is not None:
        optimizer = (ProjectorLearningRate, {"lr": args.learning_rate, "projector_lr": projector_lr,
                                             "weight_decay": args.weight_decay,
                                             "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon})
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=callbacks,
        optimizer_cls_and_kwargs=optimizer,
    )


__all__ = ["make_trainer"]
