"""What is trained in each stage of the paper's recipe, and the optimizer that gives the projector its own rate.

    model = prepare_stage(model, "stage1")   # projector only: vision tower and LLM frozen (feature alignment)
    model = prepare_stage(model, "stage2")   # projector + LLM: vision tower frozen (instruction tuning)
    model = prepare_stage(model, "lora")     # LoRA on the LLM's linear layers + the full projector (PEFT)

`trainable_parameters(model)` reports the counts per part. The LoRA preset never touches the vision tower or the
projector's linear layers: adapters are scoped to the LLM by module path, the projector is trained fully and saved
(`modules_to_save`), and `ProjectorLearningRate` gives it its own learning rate (the original's `mm_projector_lr`).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

STAGES = ("stage1", "stage2", "lora")
Stage = Literal["stage1", "stage2", "lora"]
PROJECTOR = "multi_modal_projector"


def _parts(model) -> dict[str, nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"vision_tower": base.model.vision_tower, "projector": base.model.multi_modal_projector,
            "language_model": base.model.language_model, "lm_head": base.lm_head}


def llm_linear_layers(model) -> list[str]:
    """Names (leaf) of the `nn.Linear` layers inside the LLM: the LoRA targets, whatever the LLM family."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.model.language_model.named_modules()
                   if isinstance(module, nn.Linear)})


def lora_config(model, r: int = 128, alpha: int = 256, dropout: float = 0.05, target_modules=None):
    """The original LLaVA LoRA recipe (r=128, alpha=256), with targets scoped to `model.language_model`."""
    from peft import LoraConfig

    leaves = target_modules or llm_linear_layers(model)
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        # A full-match regex on module paths: only the LLM's layers, never the CLIP tower (it has q_proj/v_proj too).
        target_modules=rf"model\.language_model\..*\.({'|'.join(leaves)})",
        modules_to_save=[PROJECTOR],
    )


def prepare_stage(model, stage: Stage, *, lora=None, quantized: bool = False):
    """Freeze/unfreeze `model` for `stage`; for "lora" returns a `PeftModel` (pass `lora=` a LoraConfig to override)."""
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; choose one of {', '.join(STAGES)}.")
    parts = _parts(model)
    trainable = {"stage1": {"projector"}, "stage2": {"projector", "language_model", "lm_head"}, "lora": set()}[stage]
    for name, module in parts.items():
        module.requires_grad_(name in trainable)
    if stage != "lora":
        return model
    if quantized:
        check_qlora_available()
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, lora or lora_config(model))


def check_qlora_available() -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; say so plainly when either is missing."""
    missing = []
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if missing:
        raise RuntimeError("QLoRA (4-bit) training needs " + " and ".join(missing) + "; train with stage='lora' "
                           "on full-precision weights instead.")


@dataclass
class ParameterReport:
    trainable: dict[str, int]
    total: dict[str, int]

    def __str__(self) -> str:
        rows = [f"{name:<15} {self.trainable[name]:>14,} / {self.total[name]:>14,} trainable" for name in self.total]
        all_trainable, all_total = sum(self.trainable.values()), sum(self.total.values())
        rows.append(f"{'all':<15} {all_trainable:>14,} / {all_total:>14,} ({100 * all_trainable / all_total:.2f} %)")
        return "\n".join(rows)


def trainable_parameters(model) -> ParameterReport:
    """Trainable / total parameter counts per part (LoRA adapters count toward the part they sit in)."""
    trainable, total = {}, {}
    for name, module in _parts(model).items():
        params = list(module.parameters())
        total[name] = sum(p.numel() for p in params)
        trainable[name] = sum(p.numel() for p in params if p.requires_grad)
    return ParameterReport(trainable, total)


class ProjectorLearningRate:
    """An optimizer factory for `SFTTrainer(optimizer_cls_and_kwargs=(ProjectorLearningRate, {...}))`: AdamW with
    the projector at `projector_lr` and everything else at `lr`, no weight decay on biases and norms."""

    def __call__(self, model, lr: float, projector_lr: float | None = None, weight_decay: float = 0.0, **adamw):
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                is_projector = PROJECTOR in name
                decays = param.ndim >= 2
                groups.setdefault((is_projector, decays), []).append(param)
        param_groups = [
            {"params": params, "lr": projector_lr if is_projector and projector_lr is not None else lr,
             "weight_decay": weight_decay if decays else 0.0}
            for (is_projector, decays), params in groups.items()
        ]
        return torch.optim.AdamW(param_groups, lr=lr, **adamw)


__all__ = ["STAGES", "prepare_stage", "lora_config", "trainable_parameters", "ProjectorLearningRate",
           "check_qlora_available", "llm_linear_layers"]
