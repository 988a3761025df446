"""Checking converted weights against the model a config describes, before anything is loaded.

    check_state_dict(config, state_dict, source="path/to/checkpoint", display=original_name)

transformers' loader reports missing or mis-shaped tensors as warnings and initialises them at random; a converted
checkpoint must instead match exactly. Errors name the tensor (in the source's own naming when `display` is given)
and both shapes, and say what the projector's shape is made of.
"""

import torch

from ..configuration_llava import TransformersLlavaConfig
from ..modeling_llava import TransformersLlavaForConditionalGeneration
from .detect import UnknownLayoutError
from .safe_load import CheckpointError


def expected_shapes(config: TransformersLlavaConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the model `config` describes (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = TransformersLlavaForConditionalGeneration(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def projector_explanation(config: TransformersLlavaConfig) -> str:
    vision, text = config.vision_config, config.text_config
    return (
        f"the vision tower gives {vision.hidden_size} features x {config.num_feature_layers} layer(s) and the "
        f"language model has hidden size {text.hidden_size} ({config.projector_type} projector)"
    )


def check_state_dict(config: TransformersLlavaConfig, state: dict[str, torch.Tensor], source, display=None) -> None:
    """Raise unless `state` has exactly the tensors, with exactly the shapes, of the model `config` describes."""
    display = display or (lambda key: key)
    expected = expected_shapes(config)
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        names = [display(key) for key in unexpected]
        raise UnknownLayoutError(
            f"{source}: {len(names)} tensors have no place in this model (e.g. {', '.join(names[:5])})."
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        names = [display(key) for key in missing]
        raise CheckpointError(
            f"{source}: {len(names)} tensors this model needs are missing (e.g. {', '.join(names[:5])}); "
            "the checkpoint is incomplete or its config does not describe it."
        )
    for key, shape in expected.items():
        found = tuple(state[key].shape)
        if found != shape:
            why = f": {projector_explanation(config)}" if "multi_modal_projector" in key else ""
            shown = display(key) if display(key) == key else f"{display(key)} ({key})"
            raise CheckpointError(
                f"{source}: {shown} has shape {list(found)} but this model needs {list(shape)}{why}."
            )


__all__ = ["check_state_dict", "expected_shapes"]
