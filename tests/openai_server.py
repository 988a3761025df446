"""A small OpenAI-compatible chat-completions server for tests: real HTTP on 127.0.0.1, scripted replies, faults.

    from openai_server import OpenAIServer, Status, Slow

    def responder(request):      # request: RecordedRequest (path, headers, body, received_at)
        return "Question:\\nWhat?\\n===\\nAnswer:\\nThat.\\n==="   # str -> wrapped as a chat completion

    with OpenAIServer(responder) as server:      # port 0: the OS picks a free port
        server.inject(Status(429, retry_after=0), Slow(2.0))   # the next two requests fail, in this order
        client = OpenAIChatClient(base_url=server.base_url, model="test")
        ...
        assert len(server.requests) == 3

A responder gets each `POST /v1/chat/completions` request and returns one of:
  str   -> a chat completion with that text (usage counted as whitespace-separated words),
  dict  -> sent as the JSON body as is (e.g. a completion without `choices`),
  Fault -> that fault for this request (so faults can depend on the request's content).
Faults queued with `inject(...)` take precedence, one per request, first in first out:
  Slow(seconds)                  sleep, then answer normally (longer than the client's timeout -> client times out)
  Status(code, body, retry_after) that HTTP status (e.g. 429 with Retry-After, 500), JSON error body
  Garbage()                      200 with a body that is not JSON
  Malformed()                    200 with JSON that is no chat completion (no `choices`)
  Disconnect()                   close the connection without answering
With `api_key=...` the server answers 401 to requests without `Authorization: Bearer <key>`.

As a pytest fixture: `from openai_server import openai_server` in a test module, then take `openai_server` as an
argument (a fresh server per test; assign `openai_server.responder = ...` to script it).

Run it standalone (for trying the CLIs by hand):  python tests/openai_server.py --port 8011 [--fail-every 7]
It then answers every request in the LLaVA-data formats from the prompt's own captions (`llava_format_responder`),
and with --fail-every N answers every N-th request with a 429 / 500 / garbage fault in turn (`failing_every`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest


@dataclass
class Slow:
    seconds: float


@dataclass
class Status:
    code: int
    body: str = '{"error": {"message": "injected failure"}}'
    retry_after: float | str | None = None


@dataclass
class Garbage:
    body: str = "<html>502 Bad Gateway</html> not json"


@dataclass
class Malformed:
    body: dict = field(default_factory=lambda: {"id": "x", "object": "chat.completion", "choices": []})


@dataclass
class Disconnect:
    pass


Fault = Slow | Status | Garbage | Malformed | Disconnect


@dataclass
class RecordedRequest:
    path: str
    headers: httpx.Headers  # case-insensitive, as HTTP header names are
    body: dict
    received_at: float = field(default_factory=time.monotonic)  # time.monotonic() on arrival


def count_words(text: str) -> int:
    return len(text.split())


def completion(text: str, request: dict) -> dict:
    """A chat-completions response body for `text`, with word counts standing in for token counts."""
    prompt_words = sum(count_words(m.get("content") or "") for m in request.get("messages", []))
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", "test"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": count_words(text),
                  "total_tokens": prompt_words + count_words(text)},
    }


def echo_responder(request: RecordedRequest) -> str:
    """Replies with the last message's content."""
    return request.body["messages"][-1]["content"]


def llava_format_responder(request: RecordedRequest) -> str:
    """A well-formed reply for the instruction-data type the system message asks for, built from the query's
    first caption: a paragraph for detailed description, one Question/Answer pair otherwise."""
    system = request.body["messages"][0]["content"]
    query = request.body["messages"][-1]["content"]
    first_caption = query.strip().splitlines()[0] if query.strip() else "Nothing is described."
    if "describe the scene in a detailed manner" in system:
        return f"The image shows the following. {first_caption} The scene is described from the captions."
    complex_reasoning = "create a plausible question" in system
    question = "What challenges might this scene pose?" if complex_reasoning else "What is shown here?"
    return f"Question:\n{question}\n===\nAnswer:\n{first_caption}\n==="


class OpenAIServer:
    """The server; a context manager. `base_url` ends in /v1; `requests` records every request received."""

    def __init__(self, responder: Callable[[RecordedRequest], str | dict | Fault] = echo_responder, *,
                 host: str = "127.0.0.1", port: int = 0, api_key: str | None = None):
        self.responder, self.api_key = responder, api_key
        self.requests: list[RecordedRequest] = []
        self._faults: deque = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a Slow handler must not hold up stop()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def inject(self, *faults: Fault) -> None:
        """Queue faults for the next requests, one per request, in order."""
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:  # shutdown() waits for serve_forever, so only when it runs
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _next_reply(self, request: RecordedRequest) -> str | dict | Fault:
        with self._lock:
            self.requests.append(request)
            if self._faults:
                return self._faults.popleft()
        return self.responder(request)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def send(self, code: int, body: str, headers: dict | None = None) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, str(value))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self.send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self.send(401, json.dumps({"error": {"message": "invalid api key"}}))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self.send(400, json.dumps({"error": {"message": "request body is not JSON"}}))
                request = RecordedRequest(self.path, httpx.Headers(dict(self.headers)), body)
                try:
                    reply = server._next_reply(request)
                    if isinstance(reply, Slow):
                        if server._stopping.wait(reply.seconds):
                            return
                        reply = server.responder(request)
                except Exception as error:  # a broken responder shows up as a 500 naming the error
                    reply = Status(500, json.dumps({"error": {"message": f"responder raised {error!r}"}}))
                if isinstance(reply, Disconnect):
                    self.close_connection = True
                    self.connection.close()
                elif isinstance(reply, Status):
                    headers = {} if reply.retry_after is None else {"Retry-After": reply.retry_after}
                    self.send(reply.code, reply.body, headers)
                elif isinstance(reply, Garbage):
                    self.send(200, reply.body)
                elif isinstance(reply, Malformed):
                    self.send(200, json.dumps(reply.body))
                elif isinstance(reply, dict):
                    self.send(200, json.dumps(reply))
                else:
                    self.send(200, json.dumps(completion(str(reply), body)))

        return Handler


@pytest.fixture
def openai_server():
    """An `OpenAIServer` (echo responder; set `.responder` to script it) running for one test."""
    with OpenAIServer() as server:
        yield server


def failing_every(n: int, responder: Callable, faults=(Status(429, retry_after=1), Status(500), Garbage())):
    """`responder`, except that every n-th request gets the next of `faults` (in turn) instead."""
    count = itertools.count(1)
    cycle = itertools.cycle(faults)
    lock = threading.Lock()

    def reply(request: RecordedRequest):
        with lock:
            fault = next(cycle) if n and next(count) % n == 0 else None
        return fault or responder(request)

    return reply


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--fail-every", type=int, default=0,
                        help="answer every N-th request with 429 / 500 / garbage in turn (0: never)")
    args = parser.parse_args(argv)
    responder = failing_every(args.fail_every, llava_format_responder)
    with OpenAIServer(responder, host=args.host, port=args.port) as server:
        print(f"serving OpenAI-compatible chat completions at {server.base_url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
