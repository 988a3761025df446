"""The project's chat-completions client: one `.complete(messages) -> ChatResult` for every text-only LLM call.

Two backends share that interface — any OpenAI-compatible `/chat/completions` endpoint through the `openai`
client (which does the HTTP, the timeouts, the retries with backoff and `Retry-After`), and a local transformers
text-generation model — plus what a batch of calls needs: a thread-safe rate limiter, token accounting with a cost
estimate, and `run_concurrently` to fan a stream of items out to threads. The instruction-data pipeline
(`transformers_llava.data_generation`) and the evaluation judge both use it, each with its resumable record store
above it.

    from transformers_llava.chat_client import OpenAIChatClient
    client = OpenAIChatClient(requests_per_minute=60)   # OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL
    result = client.complete([{"role": "user", "content": "Hi"}], temperature=0.2, max_tokens=64)
    print(result.text, client.usage.summary(prompt_price=2.5, completion_price=10.0))

Environment: `OPENAI_BASE_URL` (default https://api.openai.com/v1), `OPENAI_API_KEY` (sent as a Bearer token; local
servers usually need none, and get the placeholder `EMPTY`) and `OPENAI_MODEL` (required when `model=` is not given).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import openai

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV, API_KEY_ENV, MODEL_ENV = "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"
BODY_EXCERPT = 300  # characters of a failing response body quoted in errors
NO_API_KEY = "EMPTY"  # what OpenAI-compatible local servers (vLLM, SGLang, ...) expect when they check no key


@dataclass
class ChatResult:
    """One assistant reply: its text, the token counts the backend reported, and the raw response body."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    raw: dict


class ChatClientError(RuntimeError):
    """A request that failed for good: a non-retryable status, or every retry used up."""


class MalformedResponse(Exception):
    """A 200 response that is no chat completion (a proxy's HTML page, no choices, null content): worth a retry."""


@dataclass
class TokenUsage:
    """Running totals over many calls (thread-safe); prices are per 1M tokens, as providers quote them.
    `retries` counts failed attempts that were tried again (timeouts, connection errors, 429, 5xx, malformed
    responses)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> "TokenUsage":
        with self._lock:
            return TokenUsage(self.requests, self.prompt_tokens, self.completion_tokens, self.retries)

    def since(self, earlier: "TokenUsage") -> "TokenUsage":
        """The usage added after `earlier` (a snapshot of this one)."""
        now = self.snapshot()
        return TokenUsage(now.requests - earlier.requests, now.prompt_tokens - earlier.prompt_tokens,
                          now.completion_tokens - earlier.completion_tokens, now.retries - earlier.retries)

    def add(self, result: ChatResult) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens

    def add_retries(self, count: int) -> None:
        with self._lock:
            self.retries += count

    def cost(self, prompt_price: float, completion_price: float) -> float:
        """Estimated cost in the prices' currency, given prices per 1M prompt / completion tokens."""
        return (self.prompt_tokens * prompt_price + self.completion_tokens * completion_price) / 1_000_000

    def summary(self, prompt_price: float | None = None, completion_price: float | None = None) -> str:
        text = (f"{self.requests} requests, {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                f"tokens")
        if self.retries:
            text += f" ({self.retries} failed attempts retried)"
        if prompt_price is not None and completion_price is not None:
            text += (f", estimated cost {self.cost(prompt_price, completion_price):.4f} "
                     f"(at {prompt_price}/{completion_price} per 1M tokens)")
        return text


class RateLimiter:
    """At most `requests_per_minute` request starts per minute, evenly spaced, shared by all threads."""

    def __init__(self, requests_per_minute: float | None):
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive or None, got {requests_per_minute}")
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next_slot = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:  # reserve the next free slot, then sleep outside the lock
            slot = max(time.monotonic(), self._next_slot)
            self._next_slot = slot + self.interval
        time.sleep(max(0.0, slot - time.monotonic()))


def parse_completion(body: str) -> ChatResult:
    """A chat-completions response body -> ChatResult; MalformedResponse when it is not one (garbage, no choices)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise MalformedResponse(f"response is not JSON ({error}): {body[:BODY_EXCERPT]!r}") from None
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise MalformedResponse(f"response has no choices[0].message.content: {body[:BODY_EXCERPT]!r}") from None
    if not isinstance(text, str):
        raise MalformedResponse(f"choices[0].message.content is {type(text).__name__}, not text: "
                                f"{body[:BODY_EXCERPT]!r}")
    usage = data.get("usage") or {}
    return ChatResult(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), data)


class OpenAIChatClient:
    """An OpenAI-compatible chat-completions endpoint through the `openai` client, with a rate limit.

    The `openai` client sends the request with `timeout` and retries timeouts, connection errors, 408/409/429 and 5xx
    with its exponential backoff, or after the server's `Retry-After` (up to two minutes; a longer one is not waited
    for). On top of it, a 200 response that is not a chat completion is retried here. `max_retries` retries follow
    the first attempt, in all; other 4xx (bad key, bad request) fail at once. Every attempt waits its turn in the
    rate limit. Extra `complete` parameters go into the request body as they are.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 5, requests_per_minute: float | None = None):
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or os.environ.get(MODEL_ENV)
        if not self.model:
            raise ValueError(f"no model name: pass model=... or set {MODEL_ENV}")
        if max_retries < 0 or timeout <= 0:
            raise ValueError(f"max_retries must be >= 0 and timeout > 0, got {max_retries} and {timeout}")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.model_name = self.model  # the name both backends expose, for reports and run records
        self.url = f"{self.base_url}/chat/completions"
        self.timeout, self.max_retries = timeout, max_retries
        self.usage = TokenUsage()
        self.rate_limiter = RateLimiter(requests_per_minute)
        self._attempts = threading.local()  # attempts of the call running on this thread
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_attempt]})
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or NO_API_KEY, timeout=timeout,
                                     max_retries=max_retries, http_client=http)

    def _on_attempt(self, request) -> None:
        """Runs on the calling thread before every HTTP attempt, the `openai` client's retries included."""
        self.rate_limiter.acquire()
        self._attempts.count += 1

    def complete(self, messages: list[dict], **params: Any) -> ChatResult:
        """Send `messages` (OpenAI format) with extra body `params` (temperature, max_tokens, ...)."""
        self._attempts.count = 0
        budget = self.max_retries + 1
        try:
            while True:
                try:
                    result = parse_completion(self._post(messages, params, retries=budget - 1 - self._attempts.count))
                    break
                except MalformedResponse as failure:
                    if self._attempts.count >= budget:
                        raise ChatClientError(f"POST {self.url} failed after {self._attempts.count} attempts; "
                                              f"last: {failure}") from None
                    time.sleep(min(0.5 * 2 ** (self._attempts.count - 1), 8.0))  # as the openai client backs off
        finally:
            self.usage.add_retries(max(self._attempts.count - 1, 0))
        self.usage.add(result)
        return result

    def _post(self, messages: list[dict], params: dict, retries: int) -> str:
        """The response body of one request (with up to `retries` retries by the `openai` client)."""
        client = self._client.with_options(max_retries=retries)
        try:
            response = client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, extra_body=params)
        except openai.APIStatusError as error:
            body = error.response.text[:BODY_EXCERPT]
            code = error.status_code
            if code in (408, 409, 429) or code >= 500:
                retry_after = error.response.headers.get("retry-after")
                hint = f" (the server asked to wait {retry_after} s)" if retry_after else ""
                raise ChatClientError(f"POST {self.url} failed after {self._attempts.count} attempts; last: "
                                      f"HTTP {code}{hint}: {body!r}") from None
            raise ChatClientError(f"POST {self.url} -> HTTP {code} (not retried): {body!r}") from None
        except openai.APITimeoutError:
            raise ChatClientError(f"POST {self.url} failed after {self._attempts.count} attempts; last: timed out "
                                  f"after {self.timeout}s") from None
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            raise ChatClientError(f"POST {self.url} failed after {self._attempts.count} attempts; last: connection "
                                  f"error: {type(cause).__name__}: {cause}") from None
        return response.http_response.text

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class TransformersChatClient:
    """A local transformers causal LM behind the same `.complete` interface (prompt from the tokenizer's chat
    template; token counts from the real tokenization). Calls are serialised: one model, one generation at a time.

    `temperature` 0 or None decodes greedily; `max_tokens` overrides `max_new_tokens` per call.
    """

    def __init__(self, model_path_or_model, tokenizer=None, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float | None = None, device: str | None = None, dtype=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model_path_or_model, (str, os.PathLike)):
            self.model = AutoModelForCausalLM.from_pretrained(model_path_or_model, dtype=dtype or "auto")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path_or_model)
        else:
            self.model = model_path_or_model
        if tokenizer is None:
            raise ValueError("a model object needs its tokenizer: pass tokenizer=...")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; set one before use")
        self.tokenizer = tokenizer
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self.model_name = str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)
        self.defaults = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.usage = TokenUsage()
        self._lock = threading.Lock()

    def complete(self, messages: list[dict], **params: Any) -> ChatResult:
        import torch

        options = {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
        unknown = set(options) - {"max_tokens", "temperature", "top_p", "seed"}
        if unknown:
            raise ValueError(f"TransformersChatClient.complete got unsupported parameters {sorted(unknown)}")
        input_ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True, return_tensors="pt")["input_ids"]
        sample = bool(options["temperature"])
        generation = {"max_new_tokens": int(options["max_tokens"]), "do_sample": sample,
                      "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                      else self.tokenizer.eos_token_id}
        if sample:
            generation.update(temperature=float(options["temperature"]), top_p=options["top_p"] or 1.0)
        with self._lock, torch.inference_mode():
            if "seed" in options:
                torch.manual_seed(int(options["seed"]))
            output = self.model.generate(input_ids.to(self.model.device),
                                         attention_mask=torch.ones_like(input_ids).to(self.model.device),
                                         **generation)
        new_tokens = output[0, input_ids.shape[1]:]  # [T_new], eos included when generation stopped on it
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        stopped = self.tokenizer.eos_token_id is not None and int(new_tokens[-1]) == self.tokenizer.eos_token_id
        raw = {"model": self.model_name, "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop" if stopped else "length"}],
               "usage": {"prompt_tokens": int(input_ids.shape[1]), "completion_tokens": int(new_tokens.numel()),
                         "total_tokens": int(input_ids.shape[1] + new_tokens.numel())}}
        result = ChatResult(text, int(input_ids.shape[1]), int(new_tokens.numel()), raw)
        self.usage.add(result)
        return result


@dataclass
class Outcome:
    """One item's fate in `run_concurrently`: its result, or the exception its call raised."""

    item: Any
    result: Any = None
    error: BaseException | None = None


def run_concurrently(fn: Callable[[Any], Any], items: Iterable, concurrency: int = 4, *, total: int | None = None,
                     desc: str | None = None, progress: bool = True) -> Iterator[Outcome]:
    """Call `fn(item)` on up to `concurrency` threads and yield an `Outcome` per item as each finishes.

    Items are pulled lazily (at most 2 x concurrency in flight), so a stream of millions stays in bounded memory;
    results arrive in completion order, so the caller (one thread) can write each as it comes. An exception in
    `fn` becomes `Outcome.error` rather than stopping the others. A tqdm bar counts finished items.
    """
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    iterator = iter(items)
    pending: dict[Future, Any] = {}
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="item", dynamic_ncols=True)
    executor = ThreadPoolExecutor(max_workers=concurrency)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * concurrency:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending[executor.submit(fn, item)] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                error = future.exception()
                bar.update(1)
                yield Outcome(item, None if error else future.result(), error)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()


__all__ = [
    "ChatResult", "ChatClientError", "TokenUsage", "RateLimiter", "OpenAIChatClient", "TransformersChatClient",
    "Outcome", "run_concurrently", "parse_completion",
]
