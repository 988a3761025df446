"""`transformers-llava chat` and `serve` driven as users drive them: the chat through a pipe (its `!` commands
included), locally and against the real `serve` command. Greedy answers equal `model.generate` / `LlavaChat`."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from serving_helpers import generate_alone, peak, running_server
from transformers_llava.chat import LlavaChat
from transformers_llava.serving import LlavaEngine, chat_cli, server
from transformers_llava.training.data import load_llava_json

STEPS = 6


@pytest.fixture(scope="module")
def model_dir(tiny_dir, tmp_path_factory):
    """The tiny LLaVA with peaked logits, saved (greedy choices not decided by float noise across processes)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tmp_path_factory.mktemp("peaked") / "model"
    peak(AutoModelForImageTextToText.from_pretrained(tiny_dir)).save_pretrained(path)
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    stripes, dots = Image.new("RGB", (64, 48), "orange"), Image.new("RGB", (50, 70), "navy")
    for x in range(0, 64, 8):
        stripes.paste((20, 120, 200), (x, 0, x + 4, 48))
    for y in range(0, 70, 10):
        dots.paste((250, 250, 0), (10, y, 16, y + 5))
    stripes.save(folder / "stripes.png")
    dots.save(folder / "dots.jpg")
    return folder / "stripes.png", folder / "dots.jpg"


def run_cli(*args, stdin: str, timeout=300):
    return subprocess.run([sys.executable, "-m", "transformers_llava.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


def answers(stdout: str) -> list[str]:
    return [line.removeprefix("ASSISTANT: ").strip() for line in stdout.splitlines() if line.startswith("ASSISTANT: ")]


def with_image(text, image):
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


def test_chat_through_a_pipe_with_its_commands(model_dir, loaded, photos, tmp_path):
    stripes, dots = photos
    saved = tmp_path / "chat.json"
    stdin = "\n".join([
        "What is this?", "What color is it?",          # two turns about --image, the cache kept between them
        "!bogus", "!set temp=1", "!image missing.png",  # three mistakes, each named on stderr
        f"!image {dots}", "!set max_new_tokens=4", "Describe the image concisely.",  # a new conversation
        f"!save {saved}", "!clear", "Describe the image concisely.",  # the same image, from scratch
    ]) + "\n"
    result = run_cli("chat", model_dir, "--image", stripes, "--temperature", "0", "--max-new-tokens", STEPS,
                     stdin=stdin)
    assert result.returncode == 1, result.stderr  # EOF ends the chat; 1 because commands failed in a pipe
    assert "unknown command !bogus" in result.stderr and "NAME one of temperature" in result.stderr
    assert "Image file not found: missing.png" in result.stderr

    model, processor = loaded
    first_image, second_image = (Image.open(p).convert("RGB") for p in (stripes, dots))
    chat = LlavaChat(model, processor, max_new_tokens=STEPS)
    expected = [chat.ask("What is this?", images=[first_image]), chat.ask("What color is it?")]
    fresh = LlavaChat(model, processor, max_new_tokens=4).ask("Describe the image concisely.", images=[second_image])
    expected += [fresh, fresh]
    assert answers(result.stdout) == expected and all(expected)
    # The first turn is what model.generate answers to that one-turn conversation.
    assert expected[0] == generate_alone(model, processor, [with_image("What is this?", first_image)], STEPS)

    dataset, report = load_llava_json(saved)
    assert report.kept == 1 and dataset[0]["images"] == [str(dots)]
    assert [m["content"][-1]["text"] for m in dataset[0]["messages"]] == ["Describe the image concisely.", fresh]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expected_over_http(loaded, image_path):
    """What the server answers (it re-reads the whole conversation each turn): `model.generate` on it."""
    model, processor = loaded
    image = Image.open(image_path).convert("RGB")
    first = generate_alone(model, processor, [with_image("What is this?", image)], STEPS)
    turns = [with_image("What is this?", image), {"role": "assistant", "content": [{"type": "text", "text": first}]},
             {"role": "user", "content": [{"type": "text", "text": "What color is it?"}]}]
    second = generate_alone(model, processor, turns, STEPS)
    return [first, second]


def chat_over_http(base_url, image_path):
    """Two turns, and between them one the server refuses (a bad temperature): named, and not in the conversation."""
    stdin = "What is this?\n!set temperature=-1\nWhy?\n!set temperature=0\nWhat color is it?\n"
    result = run_cli("chat", "--base-url", base_url, "--image", image_path, "--temperature", "0", "--max-new-tokens",
                     STEPS, stdin=stdin)
    assert result.returncode == 1 and "temperature must be a number from 0 (greedy) to 100, got -1" in result.stderr
    return answers(result.stdout)


def test_chat_with_a_server_over_http(loaded, photos):
    model, processor = loaded
    with running_server(LlavaEngine(model, processor), "tiny") as base_url:
        assert chat_over_http(base_url, photos[0]) == expected_over_http(loaded, photos[0])


@pytest.mark.slow
def test_chat_with_the_serve_command(model_dir, loaded, photos):
    port = free_port()
    serving = subprocess.Popen([sys.executable, "-m", "transformers_llava.cli", "serve", str(model_dir), "--port",
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while True:
            assert serving.poll() is None, serving.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        answered = chat_over_http(f"http://127.0.0.1:{port}/v1", photos[0])
    finally:
        serving.terminate()
        serving.wait(timeout=30)
    assert answered == expected_over_http(loaded, photos[0])


@pytest.mark.parametrize("main, argv, words", [
    (chat_cli.main, ["runs/nowhere/model"], "model path runs/nowhere/model does not exist"),
    (server.main, ["./nowhere"], "model path ./nowhere does not exist"),
    (chat_cli.main, [], "MODEL is required"),
])
def test_bad_model_paths_are_named(main, argv, words, capsys):
    try:
        status = main(argv)
    except SystemExit as exit:
        status = exit.code
    assert status == 2 and words in capsys.readouterr().err


def test_a_bad_image_path_is_named(model_dir, capsys):
    assert chat_cli.main([str(model_dir), "--image", "nope.jpg"]) == 2
    assert "Image file not found: nope.jpg" in capsys.readouterr().err
