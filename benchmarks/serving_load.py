"""The requests of the server benchmark: one LLaVA-Bench question each, with a synthetic photo as a data URL.

    body = request_body({"question_id": 0, "image": "x.jpg", "text": "What is this?"}, size=336, new_tokens=64)
    httpx.post(f"{base_url}/chat/completions", json=body)
"""

import base64
import io
import random

from .workload import synthetic_image


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(question: dict, size: int, new_tokens: int) -> dict:
    """A greedy chat completion asking `question["text"]` about a photo drawn from the question's id."""
    image = synthetic_image(random.Random(question["question_id"]), size)
    return {"model": "bench", "temperature": 0, "max_tokens": new_tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": question["text"]}]}]}
