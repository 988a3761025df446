"""Checkpoints and the output directory: a run killed with SIGKILL and started again ends with exactly the weights
of an uninterrupted run; a folder holding a different run, or foreign files, is refused with nothing changed."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from training_fixtures import EXAMPLES, base_checkpoint, run_cli, tiny_data, tiny_overrides, towers  # noqa: F401
from transformers_llava.training.checkpointing import (
    RUN_FILE,
    DataChanged,
    OutputDirConflict,
    claim_output_dir,
    complete_checkpoints,
    read_run,
)
from transformers_llava.training.cli import main
from transformers_llava.training.recipes import load_recipe

RECIPE = EXAMPLES / "llava_v1_stage2.yaml"


def arguments(towers, base_checkpoint, tiny_data, out, **training):
    overrides = tiny_overrides(RECIPE, towers, base_checkpoint, tiny_data, out, **training)
    return [str(RECIPE), *[arg for override in overrides for arg in ("--override", override)]]


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(towers, base_checkpoint, tiny_data, tmp_path,
                                                                      capfd):
    # 6 optimizer steps of 2 x 2 samples (gradient accumulation 2) over 16 samples: the run crosses an epoch.
    settings = {"max_steps": 6, "save_steps": 2}
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    child = run_cli(["train", *arguments(towers, base_checkpoint, tiny_data, killed, **settings)],
                    popen={"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL})
    deadline = time.time() + 300
    while not (killed.is_dir() and complete_checkpoints(killed)[0]) and child.poll() is None:
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not read_run(killed)["finished"]

    capfd.readouterr()
    assert main(arguments(towers, base_checkpoint, tiny_data, killed, **settings)) == 0
    resumed_from = capfd.readouterr().out
    assert "Resuming" in resumed_from and "checkpoint-" in resumed_from
    step = int(resumed_from.split("checkpoint-")[1].split(".")[0].split()[0])
    assert 2 <= step < 6, resumed_from

    assert main(arguments(towers, base_checkpoint, tiny_data, straight, **settings)) == 0
    resumed, reference = load_file(killed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert resumed.keys() == reference.keys()
    base = load_file(base_checkpoint / "model.safetensors")
    assert any(not torch.equal(reference[k], base[k]) for k in reference), "training should move the weights"
    # Bit for bit: the optimizer, scheduler, RNG and data order are restored exactly on the same CPU build.
    different = [name for name in reference if not torch.equal(resumed[name], reference[name])]
    assert not different, different


def test_a_different_run_in_the_output_dir_is_refused_and_left_alone(towers, base_checkpoint, tiny_data, tmp_path,
                                                                      capsys):
    out = tmp_path / "run"
    assert main(arguments(towers, base_checkpoint, tiny_data, out, max_steps=1)) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    # The same recipe again: finished, nothing to do.
    assert main(arguments(towers, base_checkpoint, tiny_data, out, max_steps=1)) == 0
    assert "already holds the finished run" in capsys.readouterr().out
    # Another learning rate: a different run.
    assert main(arguments(towers, base_checkpoint, tiny_data, out, max_steps=1, learning_rate=0.5,
                          logging_steps=5)) == 3  # the documented code for an output folder of another run
    error = capsys.readouterr().err
    assert "holds a different run" in error and "training.learning_rate: 2e-05 -> 0.5" in error
    assert "logging_steps" not in error  # it may change between attempts of one run, so it is no difference
    assert "Nothing was changed" in error
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_foreign_files_and_incomplete_checkpoints(tmp_path):
    recipe = load_recipe(RECIPE, [f"training.output_dir={tmp_path / 'out'}"], check_files=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirConflict, match=r"is not empty \(notes.txt\) and holds no llava_run.json"):
        claim_output_dir(recipe)
    (tmp_path / "out" / "notes.txt").unlink()
    assert claim_output_dir(recipe).checkpoint is None and (tmp_path / "out" / RUN_FILE).is_file()
    # checkpoint-4 was being written when the process died: its trainer_state.json is cut short.
    for step, state in ((2, json.dumps({"global_step": 2})), (4, '{"global_ste')):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir()
        (tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "out" / "checkpoint-10").mkdir()  # nothing written yet
    claim = claim_output_dir(recipe)
    assert claim.checkpoint == str(tmp_path / "out" / "checkpoint-2")
    assert claim.skipped == [str(tmp_path / "out" / "checkpoint-4"), str(tmp_path / "out" / "checkpoint-10")]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_the_folder_to_the_corrected_command(
        towers, base_checkpoint, tiny_data, tmp_path, capfd):
    out = tmp_path / "run"
    # Every sample is over max_length and on_too_long=fail: the run stops after claiming the folder.
    failing = arguments(towers, base_checkpoint, tiny_data, out, max_steps=1) + [
        "-o", "data.max_length=20", "-o", "data.on_too_long=fail"]
    assert main(failing) == 4  # invalid data, not the output-folder conflict (3) nor a traceback (1)
    error = capfd.readouterr().err
    assert f"invalid data: {tiny_data / 'conversations.json'}: 16 sample(s) longer than max_length=20" in error
    # The corrected command is another run (another data.max_length), yet nothing was trained: it takes the folder.
    assert main(arguments(towers, base_checkpoint, tiny_data, out, max_steps=1)) == 0
    assert "stopped before its first checkpoint; starting afresh" in capfd.readouterr().out
    run = read_run(out)
    assert run["finished"] and run["recipe"]["data"]["max_length"] == 2048


def fake_interrupted_run(recipe, out):
    """The folder a run killed after its checkpoint at step 2 leaves (without spending a training run on it)."""
    claim_output_dir(recipe)
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))


def test_data_edited_between_a_kill_and_the_resume_is_refused_unless_allowed(towers, base_checkpoint, tiny_data,
                                                                             tmp_path, capsys):
    data, out = tmp_path / "conversations.json", tmp_path / "run"
    shutil.copy(tiny_data / "conversations.json", data)
    args = arguments(towers, base_checkpoint, tiny_data, out, max_steps=4) + ["-o", f"data.path={data}"]
    recipe = load_recipe(RECIPE, [arg for arg in args[1:] if arg != "--override" and arg != "-o"])
    fake_interrupted_run(recipe, out)
    recorded = read_run(out)["data"][str(data)]
    assert recorded["size"] == data.stat().st_size and len(recorded["sha256"]) == 64
    # Touched, same bytes: the same data.
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert claim_output_dir(recipe).checkpoint == str(out / "checkpoint-2")
    # One sample edited: refused, naming the file; nothing changed.
    data.write_text(data.read_text().replace("What color is it?", "What colour is it?", 1))
    before = (out / RUN_FILE).read_text()
    assert main(args) == 3
    error = capsys.readouterr().err
    assert "the data changed since" in error and f"{data}: " in error and "content changed" in error
    assert "--allow-data-change" in error and (out / RUN_FILE).read_text() == before
    with pytest.raises(DataChanged):
        claim_output_dir(recipe)
    # Allowed explicitly: resumes, and the run record says what changed.
    claim = claim_output_dir(recipe, allow_data_change=True)
    assert claim.checkpoint == str(out / "checkpoint-2") and str(data) in claim.data_changed[0]
    run = read_run(out)
    assert run["data_changes"][0]["resumed_from"] == "checkpoint-2"
    assert run["data"][str(data)]["sha256"] != recorded["sha256"]
    assert claim_output_dir(recipe).data_changed is None  # the new data is now the run's
