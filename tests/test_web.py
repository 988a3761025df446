"""The web demo (`transformers-llava web`): its image preprocessing choice, its streaming, and the page itself driven
in headless Chromium — upload, ask at temperature 0, see the streamed answer equal greedy `generate`, regenerate,
ask again, clear.

The browser test needs Debian's `chromium` and the `playwright` package (no browser download); without them it skips,
except under CI=true, where it fails.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import reference_path
from transformers_llava.serving.engine import LlavaEngine
from transformers_llava.serving.image_modes import prepare_image
from transformers_llava.serving.web import WebChat, Turn

CHROMIUM = "/usr/bin/chromium"
MAX_IMAGE_PIXELS = 300_000  # the browser test's server takes the 570 x 380 photo and refuses the 1000 x 667 one


# -- the "preprocess for non-square image" choice

@pytest.mark.parametrize("size", [(60, 40), (40, 61), (333, 77), (31, 33), (32, 32)])
def test_crop_and_pad_give_the_processor_modes_pixels_whatever_the_checkpoint_mode(tiny_dir, size):
    image_processor = AutoProcessor.from_pretrained(tiny_dir).image_processor
    side = image_processor.crop_size["height"]
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for mode, processor_mode in (("Crop", "square"), ("Pad", "pad")):
        expected = image_processor(image, image_aspect_ratio=processor_mode, return_tensors="pt")["pixel_values"]
        prepared = prepare_image(image, mode, side=side, background=(122, 116, 104))
        assert prepared.width == prepared.height
        for checkpoint_mode in ("square", "pad"):
            got = image_processor(prepared, image_aspect_ratio=checkpoint_mode, return_tensors="pt")["pixel_values"]
            assert torch.equal(got, expected), (mode, checkpoint_mode, size)


def test_resize_squashes_the_whole_image_and_default_leaves_it():
    image = Image.new("RGB", (90, 30), "blue")
    image.paste(Image.new("RGB", (10, 30), "red"), (0, 0))  # a red band at the far left, which a crop would cut
    squashed = prepare_image(image, "Resize", side=30)
    assert squashed.size == (30, 30) and squashed.getpixel((0, 15))[0] > 200
    assert prepare_image(image, "Crop", side=30).getpixel((0, 15)) == (0, 0, 255)
    assert prepare_image(image, "Default", side=30) is image
    assert prepare_image(image, "Resize").size == (90, 90)  # side unknown (a remote server): the longer edge
    with pytest.raises(ValueError, match="'Stretch' is not one of Default, Crop, Resize, Pad"):
        prepare_image(image, "Stretch")


# -- the page's logic over the one engine

def greedy(model, processor, conversation, max_new_tokens, image_aspect_ratio=None):
    """`model.generate` on a conversation [(question, image or None, answer or None), ...], the last one unanswered."""
    messages, images = [], []
    for question, image, answer in conversation:
        content = [{"type": "text", "text": question}]
        if image is not None:
            content.insert(0, {"type": "image"})
            images.append(image)
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    if images and image_aspect_ratio:
        inputs["pixel_values"] = processor.image_processor(images, image_aspect_ratio=image_aspect_ratio,
                                                           return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def plain_model_dir(tiny_dir, tmp_path_factory):
    """The tiny LLaVA, made to answer in plain words (the page renders Markdown) and never to stop early: tokens
    other than letters are suppressed in its generation config, and peaked logits keep greedy choices clear of float
    noise."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    vocabulary = processor.tokenizer.get_vocab()
    model.generation_config.suppress_tokens = sorted(i for token, i in vocabulary.items()
                                                     if not token.replace("▁", "").isalpha())
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    path = tmp_path_factory.mktemp("web_model") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain(plain_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(plain_model_dir).eval()
    return model, AutoProcessor.from_pretrained(plain_model_dir)


def test_answers_stream_piece_by_piece_and_equal_greedy_generate(plain):
    model, processor = plain
    photo = Image.open(reference_path("llava", "images", "waterview.jpg"))
    chat = WebChat(LlavaEngine(model, processor))
    turns = [Turn("What is this?", photo, "Pad")]
    seen = [turns[-1].answer for _ in chat.stream_answer(turns, 0, 0.7, 12)]
    expected = greedy(model, processor, [("What is this?", photo, None)], 12, image_aspect_ratio="pad")
    assert turns[-1].answer == expected
    assert len(set(seen)) > 3 and all(expected.startswith(text) for text in seen)  # streamed, growing
    turns.append(Turn("What color?"))
    for _ in chat.stream_answer(turns, 0, 0.7, 8):
        pass
    conversation = [("What is this?", photo, expected), ("What color?", None, None)]
    assert turns[-1].answer == greedy(model, processor, conversation, 8, image_aspect_ratio="pad")


def test_a_page_that_stops_listening_stops_the_generation(plain):
    model, processor = plain
    engine = LlavaEngine(model, processor)
    steps = []
    model.model.language_model.register_forward_hook(lambda *args: steps.append(1))
    turns = [Turn("What is this?", Image.new("RGB", (40, 30), "red"))]
    answer = WebChat(engine).stream_answer(turns, 0, 0.7, 1000)
    next(answer), next(answer)
    answer.close()  # what Gradio does to a handler when Clear cancels it or the tab goes away
    engine.complete([{"role": "user", "content": "Hi"}], max_new_tokens=1)  # queued behind the cancelled one
    assert len(steps) < 50  # the cancelled answer stopped after a few of its 1000 tokens


# -- the page in a real browser

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sync_playwright():
    """playwright's sync API, or skip (fail under CI=true) saying what is missing."""
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture
def web_app(plain_model_dir, tmp_path):
    """`transformers-llava web MODEL` running on 127.0.0.1; yields its URL."""
    port = free_port()
    log = open(tmp_path / "web.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "transformers_llava.cli", "web", str(plain_model_dir),
                                "--port", str(port), "--max-image-pixels", str(MAX_IMAGE_PIXELS)],
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"the web demo exited with {process.returncode}:\n{(tmp_path / 'web.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the web demo did not answer at {url}:\n{(tmp_path / 'web.log').read_text()}")
                time.sleep(1)
        yield url, tmp_path / "web.log"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_page_streams_greedy_answers_regenerates_and_clears(sync_playwright, web_app, plain, tmp_path):
    model, processor = plain
    url, log = web_app
    photo_path = reference_path("llava", "images", "extreme_ironing.jpg")
    photo = Image.open(photo_path)
    question, follow_up, fresh = "What is unusual about this image?", "What color is it?", "What is this?"

    def normalized(text):  # the page renders the answer as Markdown: compare words, not whitespace
        return " ".join(text.split())

    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # a loaded machine renders slowly
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(url)
        bot = page.locator("#chatbot [data-testid='bot']")
        user = page.locator("#chatbot [data-testid='user']")

        def wait_for_answers(count, last):
            """Wait until the chat holds `count` answers, the last one reading `last`."""
            try:
                page.wait_for_function(
                    """([count, last]) => {
                        const answers = document.querySelectorAll("#chatbot [data-testid='bot']");
                        return answers.length === count &&
                               answers[count - 1].innerText.split(/\\s+/).join(" ").trim() === last;
                    }""", arg=[count, normalized(last)], timeout=120_000)
            except Exception:
                shown = [normalized(text) for text in bot.all_inner_texts()]
                pytest.fail(f"expected {count} answers ending with {normalized(last)!r}; the page shows {shown}; "
                            f"the server's log ends:\n{log.read_text()[-3000:]}")

        def set_slider(elem_id, value):
            """Type into the slider's box, then wait until the slider itself holds the value (the page's state)."""
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
            expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value))

        def ask(text, settings):
            """Ask once the page's settings are what the expected answer assumes (sliders render lazily)."""
            for elem_id, value in settings.items():
                expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value))
            page.fill("#question textarea", text)
            page.press("#question textarea", "Enter")

        # Upload, choose Pad, greedy decoding, 32 tokens, ask.
        page.set_input_files("#imagebox input[type=file]", str(photo_path))
        page.locator("#imagebox img").first.wait_for()
        page.get_by_label("Pad").check()
        page.get_by_text("Parameters").click()
        set_slider("temperature", 0)
        set_slider("max-new-tokens", 32)
        expect(page.get_by_label("Pad")).to_be_checked()
        ask(question, {"temperature": 0, "max-new-tokens": 32})
        answer = greedy(model, processor, [(question, photo, None)], 32, image_aspect_ratio="pad")
        assert len(answer.split()) > 3
        wait_for_answers(1, answer)
        assert page.locator("#chatbot img").count() == 1  # the photo is shown in the chat
        assert page.locator("#imagebox img").count() == 0  # and the upload box is ready for a new conversation

        # Regenerate with 16 tokens: the answer is replaced, not added to.
        set_slider("max-new-tokens", 16)
        expect(page.locator("#temperature input[type=range]")).to_have_value("0")
        page.click("#regenerate")
        regenerated = greedy(model, processor, [(question, photo, None)], 16, image_aspect_ratio="pad")
        assert regenerated != answer
        wait_for_answers(1, regenerated)

        # A second turn about the same photo.
        expect(page.locator("#max-new-tokens input[type=range]")).to_have_value("16")
        page.fill("#question textarea", follow_up)
        page.click("#send")
        second = greedy(model, processor, [(question, photo, regenerated), (follow_up, None, None)], 16,
                        image_aspect_ratio="pad")
        wait_for_answers(2, second)
        page.screenshot(path=tmp_path / "web_demo.png", full_page=True)
        print(f"screenshot: {tmp_path / 'web_demo.png'}")

        # Clear: the chat is empty, and the next question starts a new conversation without the photo.
        page.click("#clear")
        page.wait_for_function("document.querySelectorAll(\"#chatbot [data-testid='user']\").length === 0")
        assert bot.count() == 0
        ask(fresh, {"temperature": 0, "max-new-tokens": 16})
        wait_for_answers(1, greedy(model, processor, [(fresh, None, None)], 16))
        assert user.count() == 1 and page.locator("#chatbot img").count() == 0

        # An image over the server's --max-image-pixels: the page says why, and the chat is left as it was.
        page.set_input_files("#imagebox input[type=file]", str(reference_path("llava", "images", "waterview.jpg")))
        page.locator("#imagebox img").first.wait_for()
        ask(question, {})
        page.get_by_text("has 1000 x 667 = 667,000 pixels, more than max_image_pixels=300,000").wait_for()
        assert user.count() == 1 and bot.count() == 1
        browser.close()


# -- the same page logic against an OpenAI-compatible server (`--base-url`)

def test_remote_engine_answers_as_generate_through_our_server(plain):
    from serving_helpers import running_server

    from transformers_llava.serving.remote import RemoteEngine, RemoteError

    model, processor = plain
    photo = Image.open(reference_path("llava", "images", "waterview.jpg"))
    with running_server(LlavaEngine(model, processor), model_name="tiny") as base_url:
        chat = WebChat(RemoteEngine(base_url, model="tiny"))
        turns = [Turn("What is this?", photo, "Pad")]
        seen = [turns[-1].answer for _ in chat.stream_answer(turns, 0, 0.7, 12)]
        expected = greedy(model, processor, [("What is this?", photo, None)], 12, image_aspect_ratio="pad")
        assert turns[-1].answer == expected and len(set(seen)) > 1  # the image went as lossless PNG, streamed back
        turns.append(Turn("What color?"))
        for _ in chat.stream_answer(turns, 0, 0.7, 8):
            pass
        assert turns[-1].answer == greedy(model, processor, [("What is this?", photo, expected),
                                                             ("What color?", None, None)], 8, image_aspect_ratio="pad")
        with pytest.raises(RemoteError, match=r"/chat/completions \(model 'tiny'\) answered HTTP 400: .*top_p"):
            list(RemoteEngine(base_url, model="tiny").stream(chat.messages(turns[:1]), top_p=0.0))
    with pytest.raises(RemoteError, match=r"127\.0\.0\.1:\d+/v1/chat/completions \(model 'tiny'\) failed: Connection"):
        list(RemoteEngine(f"http://127.0.0.1:{free_port()}/v1", model="tiny").stream(chat.messages(turns[:1])))
