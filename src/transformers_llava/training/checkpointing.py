"""An output directory belongs to one run: claim it at start, resume it after a crash, refuse any other run.

    claim = claim_output_dir(recipe)          # raises OutputDirConflict for a different run; writes llava_run.json
    trainer.train(resume_from_checkpoint=claim.checkpoint)
    mark_finished(recipe.training.output_dir)

`llava_run.json` holds the recipe's settings, their hash (`Recipe.identity()`: every setting that changes the
trained weights) and a fingerprint of the data files (size, modification time, SHA-256). Running a recipe again into
the same folder resumes from the last *complete* checkpoint — one whose `trainer_state.json` (the file the Trainer
writes last) reads back — or does nothing when the run finished. A folder that holds another run, or files of no run
at all, is an error naming the difference: nothing in it is deleted or overwritten. Two exceptions: an attempt that
stopped before its first checkpoint left nothing to resume, so any recipe may start afresh there; and a data file
edited since the run started is refused unless `allow_data_change=True` (`--allow-data-change`), which records the
change. (Images are not fingerprinted: the run record would have to read every one.)
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from transformers.trainer_utils import sort_checkpoints

from .recipes import ignored_in_identity

RUN_FILE = "llava_run.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class OutputDirConflict(RuntimeError):
    """The output directory holds something other than this run."""


class DataChanged(OutputDirConflict):
    """The data files changed since the run in the output directory started."""


@dataclass
class Claim:
    checkpoint: str | None  # resume from here (None: start from scratch)
    finished: bool  # the run already completed: nothing to do
    skipped: list[str]  # checkpoints left by a kill while they were being written
    replaced: str | None = None  # an earlier attempt that stopped before its first checkpoint, started afresh
    data_changed: list[str] | None = None  # data files changed since the start (resumed with allow_data_change)


def data_files(recipe) -> list[Path]:
    """The files the run reads its samples from (ScienceQA: the problems and the split)."""
    if recipe.data.format == "scienceqa":
        return [Path(recipe.data.path) / "problems.json", Path(recipe.data.path) / "pid_splits.json"]
    return [Path(recipe.data.path)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}


def data_fingerprint(recipe) -> dict:
    """`{path: {size, mtime_ns, sha256}}` for each data file that exists."""
    return {str(path): fingerprint(path) for path in data_files(recipe) if path.is_file()}


def changed_data(recorded: dict, recipe) -> list[str]:
    """The data files that differ from the run record's fingerprint, each with what changed. Size and modification
    time equal: unchanged, without reading the file; otherwise the content hash decides (a touch is no change)."""
    changes = []
    for path in data_files(recipe):
        old = recorded.get(str(path))
        if old is None:
            continue  # a record from before fingerprints, or a file the run did not read
        if not path.is_file():
            changes.append(f"{path}: removed")
            continue
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) == (old["size"], old["mtime_ns"]):
            continue
        if _sha256(path) != old["sha256"]:
            changes.append(f"{path}: {old['size']} -> {stat.st_size} bytes, content changed")
    return changes


def step_of(checkpoint: Path) -> int:
    return int(CHECKPOINT.match(checkpoint.name).group(1))


def complete_checkpoints(output_dir) -> tuple[list[Path], list[Path]]:
    """`(complete, incomplete)` checkpoint folders, by step (transformers' `sort_checkpoints`); complete =
    `trainer_state.json` parses."""
    complete, incomplete = [], []
    folders = [Path(p) for p in sort_checkpoints(os.fspath(output_dir)) if CHECKPOINT.match(Path(p).name)]
    for folder in folders:
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
            complete.append(folder)
        except (OSError, ValueError):
            incomplete.append(folder)
    return complete, incomplete


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    lines = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def read_run(output_dir) -> dict | None:
    path = Path(output_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise OutputDirConflict(f"{path} is not readable JSON ({error}); it was not written by a finished claim. "
                                "Nothing was changed; delete it if the folder holds nothing to keep.") from error


def _write_run(output_dir, run: dict) -> None:
    path = Path(output_dir) / RUN_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(run, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)  # atomic: a kill leaves the old file or the new one, never half of one


def _new_run(recipe) -> dict:
    return {"identity": recipe.identity(), "recipe": recipe.to_dict(), "source": recipe.source,
            "data": data_fingerprint(recipe), "started": datetime.now(timezone.utc).isoformat(), "finished": None}


def claim_output_dir(recipe, write: bool = True, allow_data_change: bool = False) -> Claim:
    """Decide how this run uses its output directory; `write=False` on every process but the main one."""
    output_dir = Path(recipe.training.output_dir)
    identity, settings = recipe.identity(), recipe.to_dict()
    run = read_run(output_dir) if output_dir.is_dir() else None
    if run is None:
        present = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
        if present:
            shown = ", ".join(present[:8]) + (f", ... ({len(present)} entries)" if len(present) > 8 else "")
            raise OutputDirConflict(
                f"{output_dir} is not empty ({shown}) and holds no {RUN_FILE}: it is not a run of "
                f"{recipe.source}. Nothing was changed; choose another training.output_dir or empty this one.")
        if write:
            output_dir.mkdir(parents=True, exist_ok=True)
            _write_run(output_dir, _new_run(recipe))
        return Claim(checkpoint=None, finished=False, skipped=[])
    complete, incomplete = complete_checkpoints(output_dir)
    if run.get("identity") != identity:
        if not run.get("finished") and not complete:
            # The earlier attempt stopped before its first checkpoint (a bad setting, missing data): nothing to lose.
            if write:
                _write_run(output_dir, _new_run(recipe))
            return Claim(checkpoint=None, finished=False, skipped=[str(p) for p in incomplete],
                         replaced=f"{run.get('source')} (started {run.get('started')})")
        changes = [change for change in _differences(run.get("recipe", {}), settings)
                   if not (change.startswith("training.") and ignored_in_identity(change.split(":")[0][9:]))]
        raise OutputDirConflict(
            f"{output_dir} holds a different run (started {run.get('started')} from {run.get('source')}, identity "
            f"{run.get('identity')}; this recipe's is {identity}). Settings that differ:\n  "
            + "\n  ".join(changes or ["(none listed: the run file predates these settings)"])
            + "\nNothing was changed; choose another training.output_dir, or restore the settings to resume.")
    if run.get("finished"):
        return Claim(checkpoint=None, finished=True, skipped=[])
    latest = complete[-1] if complete else None
    skipped = [str(p) for p in incomplete if latest is None or step_of(p) > step_of(latest)]
    changed = changed_data(run.get("data") or {}, recipe)
    if changed and latest is not None and not allow_data_change:
        raise DataChanged(
            f"{output_dir} holds a run that started on other data: the data changed since {run.get('started')}:\n  "
            + "\n  ".join(changed) + f"\nResuming from {latest.name} would train on samples its record does not "
            "describe. Nothing was changed; restore the data, choose another training.output_dir, or resume anyway "
            "with --allow-data-change (the change is recorded in " + RUN_FILE + ").")
    if changed and write:
        run.setdefault("data_changes", []).append({"at": datetime.now(timezone.utc).isoformat(), "files": changed,
                                                   "resumed_from": latest.name if latest else None})
        run["data"] = data_fingerprint(recipe)
        _write_run(output_dir, run)
    return Claim(checkpoint=str(latest) if latest else None, finished=False, skipped=skipped,
                 data_changed=changed or None)


def mark_finished(output_dir) -> None:
    run = read_run(output_dir)
    run["finished"] = datetime.now(timezone.utc).isoformat()
    _write_run(output_dir, run)


__all__ = ["claim_output_dir", "mark_finished", "complete_checkpoints", "read_run", "data_fingerprint", "Claim",
           "OutputDirConflict", "DataChanged", "RUN_FILE"]
