"""The project's chat-completions client: one `.complete(messages) -> ChatResult` for every text-only LLM call.

Two backends share that interface — any OpenAI-compatible `/chat/completions` endpoint over HTTP, and a local
transformers text-generation model — plus what a batch of calls needs: a thread-safe rate limiter, retries with
backoff, token accounting with a cost estimate, and `run_concurrently` to fan a stream of items out to threads.
The instruction-data pipeline (`transformers_llava.data_generation`) and the evaluation judge both use it.

    from transformers_llava.chat_client import OpenAIChatClient
    client = OpenAIChatClient(requests_per_minute=60)   # OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL
    result = client.complete([{"role": "user", "content": "Hi"}], temperature=0.2, max_tokens=64)
    print(result.text, client.usage.summary(prompt_price=2.5, completion_price=10.0))

Environment: `OPENAI_BASE_URL` (default https://api.openai.com/v1), `OPENAI_API_KEY` (sent as a Bearer token when
set; local servers usually need none) and `OPENAI_MODEL` (required when `model=` is not given).
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV, API_KEY_ENV, MODEL_ENV = "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"
BODY_EXCERPT = 300  # characters of a failing response body quoted in errors


@dataclass
class ChatResult:
    """One assistant reply: its text, the token counts the backend reported, and the raw response body."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    raw: dict


class ChatClientError(RuntimeError):
    """A request that failed for good: a non-retryable status, or every retry used up."""


class RetryableResponse(Exception):
    """A failed attempt worth retrying; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class TokenUsage:
    """Running totals over many calls (thread-safe); prices are per 1M tokens, as providers quote them.
    `retries` counts failed attempts that were tried again (timeouts, 429, 5xx, malformed responses)."""

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

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

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


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse_completion(body: str) -> ChatResult:
    """A chat-completions response body -> ChatResult; RetryableResponse when it is not one (garbage, no choices)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise RetryableResponse(f"response is not JSON ({error}): {body[:BODY_EXCERPT]!r}") from None
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise RetryableResponse(f"response has no choices[0].message.content: {body[:BODY_EXCERPT]!r}") from None
    if not isinstance(text, str):
        raise RetryableResponse(f"choices[0].message.content is {type(text).__name__}, not text: "
                                f"{body[:BODY_EXCERPT]!r}")
    usage = data.get("usage") or {}
    return ChatResult(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), data)


class OpenAIChatClient:
    """An OpenAI-compatible chat-completions endpoint, with retries, backoff and a rate limit.

    Retried: timeouts, connection errors, 429, 5xx, and 200 responses that are not a chat completion. The wait
    before retry n (1-based) is `backoff * 2**(n-1)` with jitter, or the server's Retry-After, capped at
    `max_backoff`. Other 4xx (bad key, bad request) fail at once. `max_retries` retries follow the first attempt.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 30.0,
                 requests_per_minute: float | None = None):
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or os.environ.get(MODEL_ENV)
        if not self.model:
            raise ValueError(f"no model name: pass model=... or set {MODEL_ENV}")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError(f"max_retries, backoff and max_backoff must be >= 0, got {max_retries}, {backoff}, "
                             f"{max_backoff}")
        self.model_name = self.model  # the name both backends expose, for reports and run records
        self.url = f"{self.base_url}/chat/completions"
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.usage = TokenUsage()
        self.rate_limiter = RateLimiter(requests_per_minute)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)

    def complete(self, messages: list[dict], **params: Any) -> ChatResult:
        """Send `messages` (OpenAI format) with extra body `params` (temperature, max_tokens, ...)."""
        payload = {"model": self.model, "messages": messages, **params}
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            self.rate_limiter.acquire()
            try:
                result = self._attempt(payload)
                break
            except RetryableResponse as failure:
                if attempt == attempts:
                    raise ChatClientError(f"POST {self.url} failed after {attempts} attempts; last: {failure}"
                                          ) from None
                self.usage.add_retry()
                time.sleep(self._delay(attempt, failure.retry_after))
        self.usage.add(result)
        return result

    def _attempt(self, payload: dict) -> ChatResult:
        try:
            response = self._http.post(self.url, json=payload)
        except httpx.TimeoutException as error:
            raise RetryableResponse(f"timed out after {self._http.timeout.read}s ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise RetryableResponse(f"connection error: {type(error).__name__}: {error}") from None
        body = response.text
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableResponse(f"HTTP {response.status_code}: {body[:BODY_EXCERPT]!r}",
                                    parse_retry_after(response.headers.get("retry-after")))
        if response.status_code >= 400:
            raise ChatClientError(f"POST {self.url} -> HTTP {response.status_code} (not retried): "
                                  f"{body[:BODY_EXCERPT]!r}")
        return parse_completion(body)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff) * random.uniform(0.5, 1.0)

    def close(self) -> None:
        self._http.close()

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
    "Outcome", "run_concurrently", "parse_retry_after", "parse_completion",
]
