"""`accelerate launch` runs a recipe in data-parallel processes (two CPU processes over gloo here), and the FSDP and
DeepSpeed ZeRO-3 launch configs in examples/accelerate/ pass accelerate's own launch-time checks (running FSDP or
DeepSpeed needs GPUs)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from training_fixtures import EXAMPLES, ROOT, base_checkpoint, tiny_data, tiny_overrides, towers  # noqa: F401
from transformers_llava.checkpoints.training_record import read_training_record
from transformers_llava.training.checkpointing import read_run

ACCELERATE = EXAMPLES / "accelerate"


def launch_args(config: Path):
    """The arguments `accelerate launch --config_file CONFIG -m transformers_llava.cli train R.yaml` resolves to."""
    parsed = launch_command_parser().parse_args(
        ["--config_file", str(config), "-m", "transformers_llava.cli", "train", "recipe.yaml"])
    args, defaults, _ = _validate_launch_command(parsed)
    return args, defaults


def test_fsdp_config_resolves_to_full_sharding_of_our_layers(tiny):
    assert load_config_from_file(str(ACCELERATE / "fsdp.yaml")).distributed_type == "FSDP"
    env = prepare_multi_gpu_env(launch_args(ACCELERATE / "fsdp.yaml")[0])
    assert (env["ACCELERATE_USE_FSDP"], env["FSDP_SHARDING_STRATEGY"], env["FSDP_STATE_DICT_TYPE"],
            env["FSDP_USE_ORIG_PARAMS"], env["FSDP_OFFLOAD_PARAMS"]) == (
        "true", "FULL_SHARD", "FULL_STATE_DICT", "true", "false")
    # The wrapped layer classes are the decoder layers of the LLM and the encoder layers of the CLIP tower.
    model, _ = tiny
    classes = {type(module).__name__ for module in model.modules()}
    assert set(env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",")) <= classes


def test_deepspeed_zero3_config_resolves_and_leaves_sizes_to_the_trainer():
    assert load_config_from_file(str(ACCELERATE / "deepspeed_zero3.yaml")).distributed_type == "DEEPSPEED"
    args, defaults = launch_args(ACCELERATE / "deepspeed_zero3.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    config_file = Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
    assert (ROOT / config_file).is_file(), "the path is relative to the repository root, where launches run"
    zero3 = HfDeepSpeedConfig(str(ROOT / config_file))
    assert zero3.is_zero3() and zero3.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save")
    # Batch sizes, accumulation and precision come from the recipe through the Trainer ("auto").
    raw = json.loads((ROOT / config_file).read_text())
    assert {raw["train_micro_batch_size_per_gpu"], raw["gradient_accumulation_steps"], raw["bf16"]["enabled"]} == {
        "auto"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_together_and_save_once(towers, base_checkpoint, tiny_data, tmp_path):
    out = tmp_path / "ddp"
    recipe = EXAMPLES / "llava_v1_stage1.yaml"
    # Modality grouping on: its sampler yields the global order that accelerate shards between the ranks.
    overrides = tiny_overrides(recipe, towers, base_checkpoint, tiny_data, out, max_steps=3, save_steps=2,
                               group_by_modality_length=True)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "transformers_llava.cli", "train", str(recipe),
               *[arg for override in overrides for arg in ("--override", override)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Both ranks ran to the end; only the main one saved.
    assert result.stdout.count("rank 0/2 finished") == 1 and result.stdout.count("rank 1/2 finished") == 1
    assert result.stdout.count("Saved the stage1 model") == 1
    assert read_run(out)["finished"]
    stage = read_training_record(out)["stages"][-1]
    # 2 processes x 2 per device x 1 accumulation step = the global batch of 4; 3 steps saw 12 of the 16 samples.
    hyperparameters = dict(stage["hyperparameters"])
    assert (hyperparameters["processes"], hyperparameters["gradient_accumulation_steps"], stage["steps"]) == (2, 1, 3)
    assert "'epoch': '0.75'" in result.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # save_total_limit 1
