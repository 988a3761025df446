"""The training record of a LLaVA checkpoint: `training_record.json`, beside `config.json`.

    record = provenance(model.config)        # a copy: {"base_models", "stages", "evaluation"}
    record["stages"].append(stage)
    set_provenance(model.config, record)
    model.save_pretrained("out")             # out/training_record.json, and out/README.md rendered from it
    read_training_record("out")              # the record of a saved checkpoint (a folder or a Hub repo), or None

In memory the record rides on the config (`config.training_provenance`), so it follows the model through
`from_pretrained`, the Trainer and PEFT — stage 2 loads stage 1's checkpoint and appends to the same record. On disk
it is its own file, never a field of `config.json`; checkpoints written before kept it in `config.json`, where it is
still read from. Layout:

    {"base_models": {"vision_tower": ..., "language_model": ...},
     "stages": [{"stage", "what", "recipe", "data": {format, path, samples, dropped, chat_template},
                 "hyperparameters": [[name, value], ...], "steps", "train_loss", "finished"}, ...],
     "evaluation": {benchmark: {metric: value}}}
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import cached_file

PROVENANCE = "training_provenance"  # the config attribute holding the record in memory (and in older config.json)
RECORD_FILE = "training_record.json"
HUB_ARGUMENTS = ("cache_dir", "force_download", "token", "revision", "local_files_only", "subfolder")


def complete(record: dict | None) -> dict:
    """A record with all three parts (empty where the model was never trained here)."""
    record = record or {}
    return {"base_models": dict(record.get("base_models") or {}), "stages": list(record.get("stages") or []),
            "evaluation": dict(record.get("evaluation") or {})}


def provenance(config) -> dict:
    """The training record of a config (a copy; empty parts when the model was never trained here)."""
    return complete(getattr(config, PROVENANCE, None))


def set_provenance(config, record: dict) -> None:
    setattr(config, PROVENANCE, record)


def read_training_record(path, **hub_kwargs) -> dict | None:
    """The record saved with a checkpoint (`training_record.json`, else the `config.json` field of older
    checkpoints), or None. `path` is a folder or a Hub repo id; `hub_kwargs` as `from_pretrained`'s."""
    hub = {key: hub_kwargs[key] for key in HUB_ARGUMENTS if hub_kwargs.get(key) is not None}
    for name in (RECORD_FILE, "config.json"):
        file = cached_file(os.fspath(path), name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub)
        if file is None:
            continue
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON ({error}); it should hold a training record") from None
        if name == RECORD_FILE:
            return complete(data)
        if data.get(PROVENANCE):
            return complete(data[PROVENANCE])
    return None


def write_training_record(directory, record: dict) -> Path:
    path = Path(directory) / RECORD_FILE
    path.write_text(json.dumps(complete(record), indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@contextmanager
def kept_out_of_config(config):
    """While `config.json` is written: the record leaves the config, and comes back after. Yields the record."""
    record = config.__dict__.pop(PROVENANCE, None)
    try:
        yield record
    finally:
        if record is not None:
            setattr(config, PROVENANCE, record)


__all__ = ["provenance", "set_provenance", "read_training_record", "write_training_record", "kept_out_of_config",
           "PROVENANCE", "RECORD_FILE"]
