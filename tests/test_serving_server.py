"""The OpenAI-compatible server, driven by the real `openai` client against a real uvicorn on 127.0.0.1: greedy
answers equal `model.generate`, streamed or not, with images and several turns; concurrent requests are batched with
the answers they get alone; every bad request gets a named 4xx error and the server keeps serving; a client that
disconnects mid-stream stops its generation."""

import base64
import io
import threading

import httpx
import pytest
from PIL import Image

from serving_helpers import data_url, generate_alone, peak, running_server

openai = pytest.importorskip("openai")

from transformers_llava.serving import LlavaEngine  # noqa: E402

ORANGE, BLUE = Image.new("RGB", (60, 40), "orange"), Image.new("RGB", (40, 50), "blue")


@pytest.fixture(scope="module")
def served(tiny_dir):
    """(engine, base_url, client) for one server shared by this module's tests."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = peak(AutoModelForImageTextToText.from_pretrained(tiny_dir).eval())
    engine = LlavaEngine(model, AutoProcessor.from_pretrained(tiny_dir), max_image_pixels=100_000)
    with running_server(engine) as base_url:
        yield engine, base_url, openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)


def user(text, *images):
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def expected(engine, openai_messages, max_new_tokens):
    """`model.generate`'s greedy answer to the same conversation in chat format."""
    def image(part):
        return Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].partition(",")[2])))

    chat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else [
        {"type": "image", "image": image(p)} if p["type"] == "image_url" else p for p in m["content"]]}
        for m in openai_messages]
    return generate_alone(engine.model, engine.processor, chat, max_new_tokens)


def test_health_and_models(served):
    engine, base_url, client = served
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_greedy_answers_equal_generate_streamed_or_not_with_images_and_turns(served):
    engine, base_url, client = served
    first = [user("What is this?", ORANGE)]
    reply = client.chat.completions.create(model="tiny", messages=first, temperature=0, max_tokens=8)
    answer = reply.choices[0].message.content
    assert answer == expected(engine, first, 8) and answer
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(engine.encode(
        [{"role": "user", "content": [{"type": "image", "image": ORANGE}, {"type": "text", "text": "What is this?"}]}]
    )[0]), 8)
    # A second turn with a second image, streamed: the deltas add up to generate's answer.
    turns = first + [{"role": "assistant", "content": answer}, user("And this one?", BLUE)]
    chunks = list(client.chat.completions.create(model="tiny", messages=turns, temperature=0, max_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(engine, turns, 10) and len([c for c in chunks if c.choices]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices


def test_stop_and_max_completion_tokens(served):
    engine, base_url, client = served
    messages = [user("What is this?", ORANGE)]
    full = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_completion_tokens=10)
    full = full.choices[0].message.content
    stop = full.split()[2]
    cut = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_answer_as_alone(served):
    engine, base_url, client = served
    conversations = [[user("What is this?", ORANGE)], [user("Hello, what color is the sky?")],
                     [user("Describe the image concisely.", BLUE)], [user("What is in the image?", ORANGE)]]
    alone = [expected(engine, c, 6) for c in conversations]
    sizes = []
    handle = engine.model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: sizes.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    engine.batch_window, answers = 1.0, [None] * 4

    def call(i):
        reply = client.chat.completions.create(model="tiny", messages=conversations[i], temperature=0, max_tokens=6)
        answers[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    try:
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        engine.batch_window = 0.005
        handle.remove()
    assert answers == alone
    assert max(sizes) > 1 and len(sizes) < 4 * 6  # batched: fewer forward passes than one request at a time


def test_a_client_disconnecting_mid_stream_stops_its_generation(served):
    engine, base_url, client = served
    steps = []
    handle = engine.model.model.language_model.register_forward_hook(lambda *args: steps.append(1))
    body = {"model": "tiny", "messages": [user("What is this?", ORANGE)], "temperature": 0, "max_tokens": 1500,
            "stream": True}
    try:
        with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            next(lines)  # a blank line, then the first content delta
            assert '"content"' in next(lines)
        # The connection is closed; the next request waits for the generation to end.
        after = client.chat.completions.create(model="tiny", messages=[user("hi")], temperature=0, max_tokens=2)
    finally:
        handle.remove()
    assert after.choices[0].message.content and len(steps) < 200  # not 1500 tokens


def bad(text_or_url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": text_or_url}},
                                         {"type": "text", "text": "What is this?"}]}]


BAD_REQUESTS = {
    "invalid base64": (dict(messages=bad("data:image/png;base64,not*base64!")), 400, "invalid_base64",
                       "messages[0].content[0].image_url"),
    "not an image": (dict(messages=bad("data:image/png;base64,aGVsbG8gd29ybGQ=")), 400, "invalid_image",
                     "messages[0].content[0].image_url"),
    "over max_image_pixels": (dict(messages=[user("big", Image.new("RGB", (400, 300)))]), 400, "image_too_large",
                              "messages[0].content[0].image_url"),
    "remote image without the flag": (dict(messages=bad("http://169.254.169.254/x.png")), 400,
                                      "remote_images_disabled", "messages[0].content[0].image_url"),
    "unknown role": (dict(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]), 400, "invalid_role",
                     "messages[0].role"),
    "placeholder typed in the text": (dict(messages=[user("look: <image>", ORANGE)]), 400,
                                      "image_placeholder_mismatch", "messages"),
    "prompt longer than the context": (dict(messages=[user("red " * 2100)]), 400, "context_length_exceeded",
                                       "messages"),
    "n > 1": (dict(messages=[user("hi")], n=2), 400, "unsupported", "n"),
    "unknown model": (dict(messages=[user("hi")], model="gpt-4o"), 404, "model_not_found", "model"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_named_error_and_the_server_keeps_serving(served, name):
    engine, base_url, client = served
    request, status, code, param = BAD_REQUESTS[name]
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(**{"model": "tiny", "temperature": 0, "max_tokens": 2, **request})
    assert (error.value.status_code, error.value.code, error.value.param) == (status, code, param)
    assert error.value.type == "invalid_request_error" and len(error.value.message) > 20
    reply = client.chat.completions.create(model="tiny", messages=[user("hi")], temperature=0, max_tokens=2)
    assert reply.choices[0].message.content


def test_more_images_than_the_template_can_place(served):
    """The plain (stage-1) format places only user images; an image in an answer is refused, not dropped."""
    engine, base_url, client = served
    template = engine.processor.chat_template
    engine.set_conversation_format("plain")
    messages = [user("x", ORANGE), {"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": data_url(BLUE)}}, {"type": "text", "text": "a"}]}, user("y")]
    try:
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=2)
    finally:
        engine.processor.chat_template = template
    assert error.value.code == "too_many_images" and "2 image(s) were sent" in error.value.message


def test_not_json_and_unknown_paths_get_openai_shaped_errors(served):
    engine, base_url, client = served
    response = httpx.post(base_url + "/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.get(base_url + "/nowhere", timeout=10)
    assert response.status_code == 404 and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_remote_images_are_fetched_only_with_the_flag(served, tmp_path):
    """With allow_remote_images an http URL is fetched (here from a file server on 127.0.0.1) and answers as the same
    image sent inline; a URL that is not an image is still a named 400."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    engine, base_url, client = served
    ORANGE.save(tmp_path / "orange.png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=tmp_path))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        with running_server(engine, allow_remote_images=True) as remote_url:
            remote = openai.OpenAI(base_url=remote_url, api_key="none", max_retries=0)
            reply = remote.chat.completions.create(model="tiny", messages=bad(f"{url}/orange.png"), temperature=0,
                                                   max_tokens=6)
            with pytest.raises(openai.BadRequestError) as error:
                remote.chat.completions.create(model="tiny", messages=bad(f"{url}/notes.txt"), max_tokens=2)
    finally:
        files.shutdown()
    inline = client.chat.completions.create(model="tiny", messages=[user("What is this?", ORANGE)], temperature=0,
                                            max_tokens=6)
    assert reply.choices[0].message.content == inline.choices[0].message.content
    assert error.value.code == "invalid_image"
