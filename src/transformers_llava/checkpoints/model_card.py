"""The model card of a LLaVA checkpoint, rendered from `hub_cards/llava_model_card.md.jinja` at every save.

    model.save_pretrained("out")              # writes out/README.md (and out/training_record.json) beside the weights
    model.push_to_hub("user/llava-tiny")      # uploads that card (not transformers' generic one)
    record_evaluation("out", "ScienceQA", {"accuracy": 90.92})   # adds a result and re-renders out/README.md

The card is rendered from the training record (`training_record.py`). `LlavaForConditionalGeneration.save_pretrained`
and `push_to_hub` call `write_checkpoint_files` here.
"""

import math
import os
import re
from importlib import resources
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open

from .training_record import (
    PROVENANCE,
    kept_out_of_config,
    provenance,
    read_training_record,
    set_provenance,
    write_training_record,
)

TEMPLATE = "hub_cards/llava_model_card.md.jinja"
STAGE_WHAT = {
    "stage1": "feature alignment (projector trained; vision tower and language model frozen)",
    "stage2": "instruction tuning (projector and language model trained; vision tower frozen)",
    "lora": "LoRA on the language model's linear layers, projector trained in full; vision tower frozen",
}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _tower_name(sub_config) -> str:
    return getattr(sub_config, "_name_or_path", "") or getattr(sub_config, "model_type", "unknown")


def base_models(config) -> dict:
    """Recorded base models, else the names the towers were loaded from."""
    recorded = provenance(config)["base_models"]
    return {"vision_tower": recorded.get("vision_tower") or _tower_name(config.vision_config),
            "language_model": recorded.get("language_model") or _tower_name(config.text_config)}


def template_text() -> str:
    return resources.files("transformers_llava").joinpath(TEMPLATE).read_text(encoding="utf-8")


def _existing_tags(directory) -> list[str]:
    """Tags of a README.md already in `directory` (e.g. the `tags=` of `push_to_hub`), kept in our card."""
    path = Path(directory) / "README.md"
    if not path.is_file():
        return []
    try:
        return list(ModelCard.load(path).data.tags or [])
    except (ValueError, yaml.YAMLError):
        return []


def stored_parameters(directory) -> int:
    """Parameters in the `*.safetensors` files of `directory`, read from their headers only."""
    total = 0
    for path in Path(directory).glob("*.safetensors"):
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total


def _hub_ids(*names: str) -> list[str]:
    """The names that are Hub repositories (not local paths): the card's `base_model` metadata."""
    return [name for name in names if name and HUB_ID.match(name) and not os.path.exists(name)]


def render_model_card(config, *, model_id: str | None = None, adapter: dict | None = None,
                      parameters: int | None = None, tags: list[str] = ()) -> str:
    """The card's Markdown (with its YAML metadata) for a LLaVA `config`; `adapter` = a LoRA adapter's settings."""
    record, bases = provenance(config), base_models(config)
    all_tags = ["llava", "transformers-llava", "image-text-to-text", *(["lora"] if adapter else [])]
    all_tags += [tag for tag in tags if tag not in all_tags]
    base_model = _hub_ids(adapter["base_model"]) if adapter else _hub_ids(*bases.values())
    card_data = ModelCardData(library_name="peft" if adapter else "transformers", pipeline_tag="image-text-to-text",
                              tags=all_tags, base_model=base_model or None)
    vision = config.vision_config
    title = model_id.rsplit("/", 1)[-1] if model_id else f"LLaVA: {bases['vision_tower']} + {bases['language_model']}"
    card = ModelCard.from_template(
        card_data, template_str=template_text(), title=title,
        model_id=model_id or "path/to/this/checkpoint",
        vision_tower=bases["vision_tower"], language_model=bases["language_model"],
        projector_type=config.projector_type, image_size=vision.image_size, patch_size=vision.patch_size,
        feature_layer=config.vision_feature_layer, image_tokens=config.image_seq_length,
        image_aspect_ratio=config.image_aspect_ratio,
        parameters=f"{parameters:,} stored in this folder" if parameters else "unknown",
        stages=[{"what": STAGE_WHAT.get(s.get("stage"), ""), "data": None, "hyperparameters": [], "steps": None,
                 "train_loss": None, "recipe": None, "finished": None, **s} for s in record["stages"]],
        evaluation=record["evaluation"], adapter=adapter,
    )
    return str(card)


def write_model_card(model, directory, repo_id: str | None = None) -> Path:
    """Write `directory/README.md` for `model` (also for LoRA adapters, whose card names the adapter)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    adapter = None
    if hasattr(model, "peft_config"):
        settings = model.peft_config[getattr(model, "active_adapter", "default")]
        adapter = {"r": settings.r, "lora_alpha": settings.lora_alpha, "base_model": settings.base_model_name_or_path}
    text = render_model_card(base.config, model_id=repo_id, adapter=adapter, tags=_existing_tags(directory),
                             parameters=stored_parameters(directory))
    path = Path(directory) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def write_checkpoint_files(model, directory, repo_id: str | None = None) -> None:
    """What a LLaVA checkpoint holds besides transformers' files: `training_record.json` (when the model has a
    record) and the card. Called by `LlavaForConditionalGeneration.save_pretrained` and `push_to_hub`."""
    record = getattr(model.config, PROVENANCE, None)
    if record is not None:
        write_training_record(directory, record)
    write_model_card(model, directory, repo_id=repo_id)


def record_evaluation(checkpoint_dir, benchmark: str, metrics: dict) -> None:
    """Add `{metric: value}` for `benchmark` to a saved checkpoint's record and re-render its README.md."""
    from transformers import AutoConfig

    record = read_training_record(checkpoint_dir) or provenance(None)
    record["evaluation"][benchmark] = {**record["evaluation"].get(benchmark, {}), **metrics}
    write_training_record(checkpoint_dir, record)
    config = AutoConfig.from_pretrained(checkpoint_dir)
    set_provenance(config, read_training_record(checkpoint_dir))  # as saved: benchmarks in sorted order
    card = render_model_card(config, parameters=stored_parameters(checkpoint_dir))
    (Path(checkpoint_dir) / "README.md").write_text(card, encoding="utf-8")


__all__ = ["render_model_card", "write_model_card", "write_checkpoint_files", "record_evaluation", "provenance",
           "set_provenance", "base_models", "kept_out_of_config", "PROVENANCE"]
