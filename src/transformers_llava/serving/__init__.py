"""Talking to a LLaVA: one chat engine (`engine.py`) under thin shells — the CLI chat (`chat_cli.py`), the
OpenAI-compatible HTTP server (`server.py`) and the web demo."""

from .engine import LlavaEngine
from .requests import Completion, Generation, RequestError

__all__ = ["LlavaEngine", "Generation", "Completion", "RequestError"]
