"""One LLaVA training stage through TRL's `SFTTrainer`.

    trainer = make_trainer(model, processor, dataset, SFTConfig(...), stage="stage2")
    trainer.train()

`make_trainer` puts the model in the stage's trainable state, collates with the loss masking the paper used (each
answer and its stop token, from the `{% generation %}` tags of our chat templates; `LlavaDataCollator`), optionally
padding-free, evaluates the LM head only on supervised positions (`LlavaSFTTrainer`) and gives the projector its
own learning rate when asked. Sequence lengths are checked up front (`data.drop_too_long`), so nothing is ever
truncated through image tokens. Everything else is plain `SFTTrainer`.
"""

import torch
from torch import nn
from trl import SFTConfig, SFTTrainer

from ..chat_templates import load_chat_template
from ..packed_attention import PACKED_SDPA
from ..processing_llava import IGNORE_INDEX
from .collator import LlavaDataCollator
from .sampler import ModalityLengthGroupedSampler, modality_lengths
from .stages import ProjectorLearningRate, prepare_stage, trainable_parameters


def supervised_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training loss with the LM head evaluated only where the next token is supervised.

    Returns `(loss, log_probs [N_supervised, V], targets [N_supervised])`. Image, prompt and padding positions never
    reach the vocabulary matmul (`logits_to_keep` as a boolean mask, transformers' `slice_logits_to_keep`); the
    loss is the per-token cross-entropy summed and divided by `num_items_in_batch` (else the supervised count)."""
    targets = inputs["labels"][:, 1:]  # position t predicts token t + 1
    supervised = targets != IGNORE_INDEX  # [B, L - 1]
    keep = nn.functional.pad(supervised, (0, 1), value=False)  # [B, L]: the last position predicts nothing
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False, logits_to_keep=keep)
    log_probs = outputs.logits.float().log_softmax(-1)  # [N_supervised, V]; kept for the logged metrics
    targets = targets[supervised].to(log_probs.device)
    denominator = num_items_in_batch if num_items_in_batch is not None else supervised.sum().clamp(min=1)
    return nn.functional.nll_loss(log_probs, targets, reduction="sum") / denominator, log_probs, targets


class LlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss evaluates the LM head only where a token is supervised (`supervised_loss`).

    TRL's fused head scores every position on CPU; with 256 image tokens and the prompt per sample, most of that
    vocabulary matmul is thrown away. The loss is the same (per token, normalised by `num_items_in_batch`), and the
    metrics TRL logs (`entropy`, `mean_token_accuracy`, `num_tokens`) are kept.
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
        mode = "train" if self.model.training else "eval"
        loss, log_probs, targets = supervised_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks, as in SFTTrainer
        self._log_token_metrics(mode, inputs, log_probs.detach(), targets)
        if return_outputs:  # as SFTTrainer: full logits for `compute_metrics`, from another forward
            with torch.no_grad():
                return loss, model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        return loss

    def _log_token_metrics(self, mode: str, inputs: dict, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """The metrics `SFTTrainer.compute_loss` logs, from the supervised positions' log-probabilities."""
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)  # [N_supervised]
            correct = log_probs.argmax(-1) == targets
        num_valid = gather(torch.tensor(len(targets), device=log_probs.device)).sum()
        entropy_sum, num_correct = gather(entropy.sum()).sum(), gather(correct.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":  # padding-free batches have no attention_mask: every position is a token
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += gather(tokens).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


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


__all__ = ["make_trainer", "LlavaSFTTrainer", "supervised_loss"]
