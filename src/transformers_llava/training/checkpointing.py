"""An output directory belongs to one run: claim it at start, resume it after a crash, refuse any other run.

    claim = claim_output_dir(recipe)          # raises OutputDirConflict for a different run; writes llava_run.json
    trainer.train(resume_from_checkpoint=claim.checkpoint)
    mark_finished(recipe.training.output_dir)

`llava_run.json` holds the recipe's settings and their hash (`Recipe.identity()`: every setting that changes the
trained weights). Running a recipe again into the same folder resumes from the last *complete* checkpoint — one
whose `trainer_state.json` (the file the Trainer writes last) reads back — or does nothing when the run finished.
A folder that holds another run, or files of no run at all, is an error naming the difference: nothing in it is
deleted or overwritten.
"""

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from transformers.trainer_utils import sort_checkpoints

from .recipes import IGNORED_IN_IDENTITY

RUN_FILE = "llava_run.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class OutputDirConflict(RuntimeError):
    """The output directory holds something other than this run."""


@dataclass
class Claim:
    checkpoint: str | None  # resume from here (None: start from scratch)
    finished: bool  # the run already completed: nothing to do
    skipped: list[str]  # checkpoints left by a kill while they were being written


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


def claim_output_dir(recipe, write: bool = True) -> Claim:
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
            _write_run(output_dir, {"identity": identity, "recipe": settings, "source": recipe.source,
                                    "started": datetime.now(timezone.utc).isoformat(), "finished": None})
        return Claim(checkpoint=None, finished=False, skipped=[])
    if run.get("identity") != identity:
        changes = [change for change in _differences(run.get("recipe", {}), settings)
                   if change.split(":")[0] not in IGNORED_IN_IDENTITY]
        raise OutputDirConflict(
            f"{output_dir} holds a different run (started {run.get('started')} from {run.get('source')}, identity "
            f"{run.get('identity')}; this recipe's is {identity}). Settings that differ:\n  "
            + "\n  ".join(changes or ["(none listed: the run file predates these settings)"])
            + "\nNothing was changed; choose another training.output_dir, or restore the settings to resume.")
    if run.get("finished"):
        return Claim(checkpoint=None, finished=True, skipped=[])
    complete, incomplete = complete_checkpoints(output_dir)
    latest = complete[-1] if complete else None
    skipped = [str(p) for p in incomplete if latest is None or step_of(p) > step_of(latest)]
    return Claim(checkpoint=str(latest) if latest else None, finished=False, skipped=skipped)


def mark_finished(output_dir) -> None:
    run = read_run(output_dir)
    run["finished"] = datetime.now(timezone.utc).isoformat()
    _write_run(output_dir, run)


__all__ = ["claim_output_dir", "mark_finished", "complete_checkpoints", "read_run", "Claim", "OutputDirConflict",
           "RUN_FILE"]
