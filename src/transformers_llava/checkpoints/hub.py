"""Hub repository names for foreign layouts: read config.json first, download the rest only when it is foreign.

    directory = resolve_directory("liuhaotian/llava-v1.5-7b", {"cache_dir": ...}, wanted=is_foreign_config)

A local directory is returned as is. For an `org/name` repository, config.json is fetched (or found in the cache,
offline); when `wanted(config)` holds, the repository's snapshot is fetched with `huggingface_hub`, leaving out
`pytorch_model*.bin` when `model*.safetensors` exist (safetensors first, and half the download). Anything that cannot
be resolved returns None, so transformers' own loader reports the name as it usually does.
"""

import os
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hub_constants

from .safe_load import read_json

HUB_ARGUMENTS = ("cache_dir", "revision", "token", "local_files_only", "force_download")
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.jinja", "*.txt"]


def hub_arguments(kwargs: dict) -> dict:
    """The `from_pretrained` arguments that say where and how to fetch from the Hub."""
    return {name: kwargs[name] for name in HUB_ARGUMENTS if kwargs.get(name) is not None}


def resolve_directory(name_or_path, hub: dict, wanted=lambda config: True) -> Path | None:
    """A local directory for `name_or_path` (see the module docstring), or None."""
    if name_or_path is None:
        return None
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    name = os.fspath(name_or_path)
    if name.count("/") != 1 or os.path.exists(name):
        return None
    try:
        config = read_json(hf_hub_download(name, "config.json", **hub))
    except (OSError, ValueError):  # not cached offline, no such repository, no network: transformers reports it
        return None
    if not wanted(config):
        return None
    return Path(snapshot_download(name, allow_patterns=HUB_FILES, ignore_patterns=_duplicate_weights(name, hub),
                                  **hub))


def _duplicate_weights(repo: str, hub: dict) -> list[str]:
    """`pytorch_model*.bin` when the repository also has `model*.safetensors` (checked online only)."""
    if hub.get("local_files_only") or hub_constants.HF_HUB_OFFLINE:
        return []
    try:
        files = HfApi(token=hub.get("token")).list_repo_files(repo, revision=hub.get("revision"))
    except (OSError, ValueError):
        return []
    return ["pytorch_model*.bin"] if any(fnmatch(f, "model*.safetensors") for f in files) else []


__all__ = ["resolve_directory", "hub_arguments"]
