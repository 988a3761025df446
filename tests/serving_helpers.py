"""Helpers for the serving tests: conversations, what `model.generate` answers to them, data URLs, a real uvicorn.

    with running_server(engine) as base_url:      # http://127.0.0.1:PORT/v1, on a port the OS picked
        OpenAI(base_url=base_url, api_key="none").chat.completions.create(...)
"""

import base64
import io
import socket
import threading
import time
from contextlib import contextmanager

import torch


def ask(text, *images):
    parts = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def peak(model):
    """Peaked logits: greedy choices not decided by float noise (so batched and alone agree token for token)."""
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


def generate_alone(model, processor, messages, max_new_tokens):
    """What `model.generate` answers to the conversation (chat-format messages), encoded as the processor does."""
    images = [part["image"] for m in messages if isinstance(m["content"], list)
              for part in m["content"] if part["type"] == "image"]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def data_url(image, fmt="PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


@contextmanager
def running_server(engine, model_name="tiny", **options):
    """The package's app under a real uvicorn on 127.0.0.1 in a background thread."""
    import uvicorn

    from transformers_llava.serving.server import build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(engine, model_name, **options), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
