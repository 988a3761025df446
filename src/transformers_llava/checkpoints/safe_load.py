"""Reading checkpoint weights safely: safetensors by default, `.bin` pickles only as plain tensors.

    from transformers_llava.checkpoints.safe_load import read_weights, weight_files
    state_dict = read_weights(weight_files("path/to/llava-v1.5-7b"))

- `.safetensors` files are preferred whenever a directory holds both formats; their header is checked against the
  file size first, so a truncated download fails naming the shard and the missing bytes.
- `.bin` files go through `torch.load(weights_only=True)`, which refuses to run code from the pickle. Files that need
  more than that load only with `allow_pickle=True`, an explicit statement that the file is trusted.
- Reading itself is huggingface_hub's `load_state_dict_from_file`; the checks above and the messages are ours.
- A sharded checkpoint's index must list shards that exist, and every tensor it names must be in its shard.
"""

import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from huggingface_hub import load_state_dict_from_file
from safetensors import SafetensorError
from tqdm.auto import tqdm

SAFE_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SAFE_SINGLE, BIN_SINGLE = "model.safetensors", "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the numbers involved."""


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file as a dict, or a CheckpointError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} does not exist.") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file may be truncated.") from err


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight shards of a `save_pretrained`-style directory, safetensors first; [] when there are none."""
    directory = Path(directory)
    for index_name, single_name in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        if (directory / index_name).is_file():
            return _indexed_shards(directory / index_name)
        if (directory / single_name).is_file():
            return [directory / single_name]
    return []


def first_file(directory: str | os.PathLike, names: tuple[str, ...]) -> Path | None:
    """The first of `names` that exists in `directory` (callers list safetensors names first)."""
    return next((Path(directory) / name for name in names if (Path(directory) / name).is_file()), None)


def _indexed_shards(index_path: Path) -> list[Path]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no `weight_map`; the index file is damaged.")
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (index_path.parent / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{index_path.name} lists {len(shards)} shards but {len(missing)} are missing from {index_path.parent}: "
            f"{', '.join(missing)}. The download is incomplete."
        )
    return [index_path.parent / name for name in shards]


def expected_keys(files: list[Path]) -> dict[str, str]:
    """tensor name -> shard file name, from the index beside sharded files ({} for a single file)."""
    if len(files) < 2:
        return {}
    index_name = SAFE_INDEX if files[0].suffix == ".safetensors" else BIN_INDEX
    return read_json(files[0].parent / index_name)["weight_map"]


def check_safetensors_size(path: Path) -> None:
    """Fail naming the shard when the file is shorter than its header says (a truncated download)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, not even a safetensors header.")
        header_len = struct.unpack("<Q", prefix)[0]
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path} is truncated: its header alone needs {8 + header_len:,} bytes but the file has {size:,}."
            )
        try:
            header = json.loads(handle.read(header_len))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({err}).") from err
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    needed = 8 + header_len + data_end
    if size < needed:
        raise CheckpointError(
            f"{path} is truncated: its header describes {needed:,} bytes but the file has {size:,} "
            f"({needed - size:,} missing). Download it again."
        )


def load_weight_file(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """One `.safetensors` or `.bin` file as a flat dict of tensors (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weight file {path} does not exist.")
    if path.suffix == ".safetensors":
        check_safetensors_size(path)
        try:
            return load_state_dict_from_file(path, map_location="cpu")
        except SafetensorError as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    state = _load_pickle(path, allow_pickle)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors.")
    not_tensors = sorted(key for key, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{path} holds {len(not_tensors)} entries that are not tensors ({', '.join(map(str, not_tensors[:5]))}); "
            "it is not a weights file."
        )
    return state


def _load_pickle(path: Path, allow_pickle: bool):
    try:
        return load_state_dict_from_file(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path),
                                         safe=False)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise CheckpointError(
                f"{path} is a pickle that needs more than plain tensors to load ({_first_line(err)}). Loading it "
                "could run code stored in the file. If you trust its origin, pass allow_pickle=True (CLI: "
                "--allow-pickle); better, convert it once to safetensors."
            ) from err
        warnings.warn(f"Loading {path} with full pickle support (allow_pickle=True): only do this for trusted files.")
        return load_state_dict_from_file(path, map_location="cpu", weights_only=False, safe=False)
    except (RuntimeError, EOFError, OSError) as err:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} ({size:,} bytes) is truncated or not a PyTorch weights file: {_first_line(err)}. "
            "Download it again."
        ) from err


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_weights(
    files: list[Path], allow_pickle: bool = False, progress: bool | None = None, desc: str = "Reading shards"
) -> dict[str, torch.Tensor]:
    """All shards merged into one state dict, with a progress bar over shards when there are several."""
    expected = expected_keys(files)
    state: dict[str, torch.Tensor] = {}
    show = len(files) > 1 if progress is None else progress
    for path in tqdm(files, desc=desc, unit="shard", disable=not show):
        shard = load_weight_file(path, allow_pickle)
        missing = sorted(key for key, name in expected.items() if name == path.name and key not in shard)
        if missing:
            raise CheckpointError(
                f"{path} lacks {len(missing)} tensors its index assigns to it (e.g. {', '.join(missing[:3])}); the "
                "shard is truncated or from another checkpoint."
            )
        state.update(shard)
    return state


__all__ = [
    "CheckpointError",
    "read_json",
    "weight_files",
    "first_file",
    "load_weight_file",
    "read_weights",
    "check_safetensors_size",
]
