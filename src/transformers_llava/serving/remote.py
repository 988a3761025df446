"""A LLaVA behind any OpenAI-compatible server (ours, vLLM, SGLang), with the engine's `stream` interface.

    engine = RemoteEngine("http://127.0.0.1:8000/v1", model="llava")
    for delta in engine.stream(messages, temperature=0):   # same messages as LlavaEngine.stream: PIL image parts
        print(delta, end="")

Image parts are sent as `image_url` parts holding PNG `data:` URLs (lossless, so the server sees the very pixels the
engine would). Errors the server or the connection report become `RemoteError`, naming the URL and the server's
own message. The `openai` package (extra `[web]` or `[serve]`) does the HTTP.
"""

import base64
import io
import os
from collections.abc import Iterator

from PIL import Image


class RemoteError(RuntimeError):
    """The server refused the request or could not be reached; the message names the URL and its reason."""


def image_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(messages: list[dict]) -> list[dict]:
    """transformers chat messages (image parts holding PIL images) -> OpenAI chat messages."""
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": image_data_url(part["image"])}}
                       if part.get("type") == "image" else part for part in content]
        converted.append({"role": message["role"], "content": content})
    return converted


class RemoteEngine:
    """`stream(messages, ...)` answered by an OpenAI-compatible `/chat/completions` endpoint at `base_url`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600.0):
        from openai import OpenAI

        self.base_url, self.model = base_url.rstrip("/"), model
        # local servers need no key, but the client insists on one
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                             timeout=timeout, max_retries=0)

    def stream(self, messages: list[dict], *, temperature: float = 0.2, top_p: float = 0.7, max_new_tokens: int = 512,
               stop=None, seed: int | None = None) -> Iterator[str]:
        import openai

        params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens}
        params.update({k: v for k, v in (("stop", stop), ("seed", seed)) if v is not None})
        where = f"{self.base_url}/chat/completions (model {self.model!r})"
        try:
            response = self.client.chat.completions.create(model=self.model, messages=to_openai_messages(messages),
                                                           stream=True, **params)
            with response:  # leaving early closes the connection, and the server stops generating
                for chunk in response:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except openai.APIStatusError as error:
            detail = error.body.get("message") if isinstance(error.body, dict) else None
            raise RemoteError(f"{where} answered HTTP {error.status_code}: {detail or error.message}") from None
        except openai.APIError as error:
            raise RemoteError(f"{where} failed: {error}") from None


__all__ = ["RemoteEngine", "RemoteError", "to_openai_messages", "image_data_url"]
