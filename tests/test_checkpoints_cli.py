"""`transformers-llava convert`: original -> llava-hf -> ours through the real entry point, shards and all."""

import json

import torch
from checkpoint_layouts import make_towers, write_v15_release
from transformers import AutoModelForImageTextToText, AutoProcessor

from transformers_llava import LlavaForConditionalGeneration
from transformers_llava.chat_templates import load_chat_template
from transformers_llava.cli import main


def test_convert_original_to_llava_hf_to_ours(tmp_path, capsys):
    towers = make_towers(tmp_path / "towers")
    source = tmp_path / "llava-v1.5-7b"
    write_v15_release(source, towers)
    hf, ours, hf_again = tmp_path / "llava-v1.5-7b-hf", tmp_path / "ours", tmp_path / "hf-again"

    assert main(["convert", str(source), str(hf), "--to", "llava-hf", "--vision-tower", str(towers.vision_dir),
                 "--dtype", "float32", "--max-shard-size", "100KB"]) == 0
    printed = capsys.readouterr()
    assert f"Read {source} (original): " in printed.out and "projector mlp2x_gelu" in printed.out
    assert "Writing shards" in printed.err  # the progress bar
    shards = sorted(hf.glob("model-*.safetensors"))
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert f"Wrote {hf} (llava-hf): {len(shards)} shard(s)" in printed.out

    assert main(["convert", str(hf), str(ours), "--to", "ours"]) == 0
    assert "(llava-hf)" in capsys.readouterr().out
    assert main(["convert", str(ours), str(hf_again), "--to", "llava-hf", "--max-shard-size", "100KB"]) == 0

    direct = LlavaForConditionalGeneration.from_pretrained(source, vision_tower=towers.vision_dir, dtype=torch.float32)
    converted = AutoModelForImageTextToText.from_pretrained(ours)  # this package's format, through the Auto classes
    expected, found = direct.state_dict(), converted.state_dict()
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected)
    assert AutoProcessor.from_pretrained(ours).chat_template == load_chat_template("vicuna_v1")
    again = LlavaForConditionalGeneration.from_pretrained(hf_again).state_dict()
    assert all(torch.equal(expected[k], again[k]) for k in expected)


def test_convert_reports_bad_input_and_fails(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "llava-hf"]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "dst").exists()
