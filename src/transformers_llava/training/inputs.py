"""The files and folders a recipe names exist: checked by `load_recipe` (and so by `train --check`) before anything
loads, so that a wrong path fails in a second with the key that holds it, not minutes into a launch.

    check_inputs(recipe)      # RecipeError naming the recipe file, the key and the path

Checked: `data.path` (a JSON(L) file; for ScienceQA a folder with `problems.json` and `pid_splits.json`),
`data.eval_path`, `data.image_folder`, `model.checkpoint` / `model.vision_tower` / `model.language_model` (a local
folder with a `config.json`, or a Hub id: in the local cache when offline, on the Hub otherwise) and
`training.resume_from_checkpoint`.
"""

import os
from pathlib import Path

from .recipes import Recipe, RecipeError


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def model_source_problem(name: str) -> str | None:
    """Why `name` (a local folder or a Hub model id) cannot be loaded, or None."""
    path = Path(name).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"{name} is a folder without a config.json"
    if path.exists():
        return f"{name} is a file, not a model folder"
    if not _looks_like_hub_id(name):
        return f"{name} does not exist"
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return f"{name} is not a local folder, and not in the Hub cache (HF_HUB_OFFLINE is set)"
    from huggingface_hub import repo_exists

    try:
        if repo_exists(name):
            return None
    except Exception:  # no network, rate limits: the load itself will say  # noqa: BLE001
        return None
    return f"{name} is neither a local folder nor a model on the Hub"


def input_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """`(key, problem)` for every input of the recipe that is not there."""
    problems = []
    data = recipe.data
    if data.format == "scienceqa":
        folder = Path(data.path)
        missing = [name for name in ("problems.json", "pid_splits.json") if not (folder / name).is_file()]
        if not folder.is_dir():
            problems.append(("data.path", f"{data.path} does not exist (ScienceQA's folder with problems.json and "
                                          "pid_splits.json)"))
        elif missing:
            problems.append(("data.path", f"{data.path} holds no {' or '.join(missing)}"))
    elif not Path(data.path).is_file():
        problems.append(("data.path", f"{data.path} " + ("is a folder, not a JSON file" if Path(data.path).is_dir()
                                                         else "does not exist")))
    if data.eval_path is not None and not Path(data.eval_path).is_file():
        problems.append(("data.eval_path", f"{data.eval_path} does not exist"))
    if data.image_folder is not None and not Path(data.image_folder).is_dir():
        problems.append(("data.image_folder", f"{data.image_folder} is not a folder"))
    for key in ("checkpoint", "vision_tower", "language_model"):
        name = getattr(recipe.model, key)
        problem = model_source_problem(name) if name else None
        if problem:
            problems.append((f"model.{key}", problem))
    resume = recipe.training.resume_from_checkpoint
    if resume and not os.path.isdir(resume):
        problems.append(("training.resume_from_checkpoint", f"{resume} is not a folder"))
    return problems


def check_inputs(recipe: Recipe) -> None:
    problems = input_problems(recipe)
    if problems:
        lines = [f"{key}: {problem}" for key, problem in problems]
        raise RecipeError(f"{recipe.source}: " + ("\n  ".join(["input(s) not found:", *lines]) if len(lines) > 1
                                                  else lines[0]))


__all__ = ["check_inputs", "input_problems", "model_source_problem"]
