"""One request to the engine: its sampling settings, its errors, and its answer as a stream of text deltas.

    generation = engine.submit(messages, temperature=0)   # a Generation
    for delta in generation:                               # blocks on the engine's events; `async for` via .deltas()
        print(delta, end="")
    generation.result()                                    # a Completion: the text, its token counts, finish reason

`Generation` is filled by whoever decodes the row (the engine's continuous batch, or `generate` through
`RowStreamer` / `RowsFinished` for `LlavaChat` turns): each token is decoded in context, stop strings are cut and the
visible text is handed to the consumer as it grows.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


class RequestError(ValueError):
    """A request the engine cannot run, said in words a client can act on; `param` names the field at fault and
    `code` is a short machine-readable reason (the server sends both in its 400 answer)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class Sampling:
    """How one answer is decoded. `temperature=0` is greedy; `stop` strings end the answer and are not part of it."""

    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 100:
            raise RequestError(f"temperature must be a number from 0 (greedy) to 100, got {self.temperature!r}",
                               "temperature", "invalid_value")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}", "top_p", "invalid_value")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}",
                               "max_tokens", "invalid_value")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise RequestError(f"stop must be non-empty strings, got {list(self.stop)!r}", "stop", "invalid_value")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": None}


class Completion(str):
    """A finished answer: the text itself, plus `prompt_tokens`, `completion_tokens` and `finish_reason`
    ("stop" or "length")."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


_END = object()  # the event stream's end, as `Generation._unpack` reports it


class Generation:
    """One answer being generated. Iterate it for text deltas (once); then `text`, `finish_reason`,
    `prompt_tokens` and `completion_tokens` hold the outcome. `cancel()` stops it at the next token."""

    def __init__(self, tokenizer, prompt_tokens: int, sampling: Sampling, stops: list[str], eos_ids: set[int]):
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.sampling, self.finish_reason, self.text = sampling, None, ""
        self.token_ids: list[int] = []
        self._tokenizer, self._stops, self._eos_ids = tokenizer, stops, eos_ids
        self._decoded, self._emitted = "", 0
        self._events: queue.Queue = queue.Queue()
        self._wake = None  # set by an asyncio consumer: called after each event
        self._cancelled = threading.Event()

    # -- the consumer's side
    def __iter__(self) -> Iterator[str]:
        while (delta := self._unpack(*self._events.get())) is not _END:
            yield delta

    async def deltas(self):
        """The text deltas for an asyncio consumer (no thread waits for them)."""
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        self._wake = lambda: loop.call_soon_threadsafe(ready.set)
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                await ready.wait()
                ready.clear()
                continue
            if (delta := self._unpack(*event)) is _END:
                return
            yield delta

    @staticmethod
    def _unpack(kind: str, value):
        """An event -> its text delta, `_END` when the answer is over; an error event raises its error."""
        if kind == "error":
            raise value
        return value if kind == "delta" else _END

    def result(self) -> Completion:
        """Wait for the whole answer."""
        for _ in self:
            pass
        return self.completion()

    def completion(self) -> Completion:
        completion = Completion(self.text)
        completion.prompt_tokens, completion.completion_tokens = self.prompt_tokens, self.completion_tokens
        completion.finish_reason = self.finish_reason
        return completion

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    # -- the generating thread's side
    def push(self, token: int) -> None:
        """One new token of this row."""
        if self.finished:
            return
        if self.cancelled:
            return self.finish("cancelled")
        self.token_ids.append(token)
        self.completion_tokens += 1
        if token in self._eos_ids:
            return self.finish("stop")
        self._decoded = self._tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cuts = [i for i in (self._decoded.find(stop) for stop in self._stops) if i >= 0]
        if cuts:
            self._decoded = self._decoded[: min(cuts)]
            return self.finish("stop")
        if self.completion_tokens >= self.sampling.max_new_tokens:
            return self.finish("length")
        self._emit(final=False)

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        self._emit(final=True)
        self.text, self.finish_reason = self._decoded.strip(), reason
        self._put("end", None)

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finish_reason = "error"
            self._put("error", error)

    def _put(self, kind: str, value) -> None:
        self._events.put((kind, value))
        if self._wake is not None:
            try:
                self._wake()
            except RuntimeError:  # the consumer's event loop is gone
                self.cancel()

    def _emit(self, final: bool) -> None:
        """Send the text that can no longer change: held back are leading and trailing whitespace (the answer is
        stripped), a trailing half of a multi-byte character, and a tail that may be the start of a stop string."""
        visible = self._decoded.lstrip()
        end = len(visible.rstrip())
        if not final:
            end = len(visible[:end].rstrip("\ufffd"))
            for stop in self._stops:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if visible[:end].endswith(stop[:k]):
                        end -= k
                        break
        if end > self._emitted:
            self._put("delta", visible[self._emitted: end])
            self._emitted = end


class RowStreamer(BaseStreamer):
    """Hands each row of a `generate` call its new token (the first `put` is the prompt, skipped)."""

    def __init__(self, rows: list[Generation]):
        self.rows, self.prompt_seen = rows, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            row.push(token)

    def end(self) -> None:
        pass


class RowsFinished(StoppingCriteria):
    """Rows whose answer ended (stop, own token limit) or whose client cancelled are finished for `generate`."""

    def __init__(self, rows: list[Generation]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([row.finished or row.cancelled for row in self.rows], device=input_ids.device)
