"""The shared chat client over real HTTP against tests/openai_server.py (faults included), the local transformers
backend on a tiny Llama, the rate limiter, token accounting and `run_concurrently`.

    python -m pytest tests/test_chat_client.py -q
"""

import threading
import time

import pytest
from openai_server import (  # noqa: F401  (openai_server is a fixture)
    Disconnect,
    Garbage,
    Malformed,
    OpenAIServer,
    Slow,
    Status,
    failing_every,
    openai_server,
)
from tiny_chat_model import build_tiny_chat_model

from transformers_llava import chat_client
from transformers_llava.chat_client import (
    ChatClientError,
    ChatResult,
    OpenAIChatClient,
    RateLimiter,
    TokenUsage,
    TransformersChatClient,
    run_concurrently,
)
from transformers_llava.demo.tiny import BASE_CORPUS, train_tokenizer

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say three words please"}]


def client_for(server, **kwargs) -> OpenAIChatClient:
    options = {"model": "test-model", "timeout": 5.0, "max_retries": 3}
    return OpenAIChatClient(base_url=server.base_url, **{**options, **kwargs})


def test_complete_sends_model_messages_params_and_key(openai_server):
    openai_server.responder = lambda request: "one two three"
    client = client_for(openai_server, api_key="sk-test")
    result = client.complete(MESSAGES, temperature=0.2, max_tokens=16)
    assert result.text == "one two three"
    assert (result.prompt_tokens, result.completion_tokens) == (7, 3)  # the server counts words
    assert result.raw["choices"][0]["finish_reason"] == "stop"
    (request,) = openai_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == {"model": "test-model", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 16}
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert (client.usage.requests, client.usage.prompt_tokens, client.usage.completion_tokens) == (1, 7, 3)


def test_settings_come_from_the_environment(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url + "/")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert OpenAIChatClient().complete(MESSAGES).text == "Say three words please"
    (request,) = openai_server.requests
    assert request.body["model"] == "env-model" and request.headers["Authorization"] == "Bearer sk-env"


def test_no_model_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_MODEL"):
        OpenAIChatClient(base_url="http://127.0.0.1:9/v1")


@pytest.mark.parametrize("fault", [Status(500), Status(503), Status(429), Garbage(), Malformed(), Disconnect(),
                                   Malformed({"choices": [{"message": {"content": None}}]})],
                         ids=["500", "503", "429", "garbage", "no-choices", "disconnect", "null-content"])
def test_transient_faults_are_retried(openai_server, fault):
    openai_server.inject(fault, fault)
    client = client_for(openai_server)
    assert client.complete(MESSAGES).text == "Say three words please"
    assert len(openai_server.requests) == 3
    assert client.usage.requests == 1 and client.usage.retries == 2  # failed attempts cost no tokens


def test_slow_response_times_out_and_is_retried(openai_server):
    openai_server.inject(Slow(3.0))
    client = client_for(openai_server, timeout=1.0)
    assert client.complete(MESSAGES).text == "Say three words please"
    assert len(openai_server.requests) == 2


def test_retry_after_is_honoured(openai_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr(chat_client.time, "sleep", sleeps.append)
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    openai_server.inject(Status(429, retry_after=7), Status(503, retry_after=http_date))
    client = client_for(openai_server)
    client.complete(MESSAGES)
    assert sleeps[0] == 7.0 and 55 < sleeps[1] <= 60  # the server's hint, in seconds or as an HTTP date
    assert client.usage.retries == 2


def test_a_retry_after_beyond_two_minutes_is_reported_not_waited(openai_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr(chat_client.time, "sleep", sleeps.append)
    openai_server.inject(Status(429, retry_after=600))
    with pytest.raises(ChatClientError, match=r"after 1 attempts; last: HTTP 429 \(the server asked to wait 600 s\)"):
        client_for(openai_server).complete(MESSAGES)
    assert sleeps == []


def test_backoff_grows_between_retries(openai_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr(chat_client.time, "sleep", sleeps.append)
    openai_server.inject(*[Status(500)] * 3, Garbage())
    client_for(openai_server, max_retries=4).complete(MESSAGES)
    assert len(sleeps) == 4 and all(0 < a < b <= 8 for a, b in zip(sleeps, sleeps[1:]))


def test_exhausted_retries_name_the_failure(openai_server):
    openai_server.inject(*[Status(500, body='{"error": "db on fire"}')] * 3)
    with pytest.raises(ChatClientError, match=r"failed after 3 attempts; last: HTTP 500: .*db on fire"):
        client_for(openai_server, max_retries=2).complete(MESSAGES)
    assert len(openai_server.requests) == 3


def test_client_errors_fail_at_once():
    with OpenAIServer(api_key="sk-right") as server:
        with pytest.raises(ChatClientError, match=r"HTTP 401 \(not retried\).*invalid api key"):
            client_for(server, api_key="sk-wrong").complete(MESSAGES)
        assert len(server.requests) == 0  # rejected before the responder saw it
        server.inject(Status(400, body='{"error": "bad max_tokens"}'))
        with pytest.raises(ChatClientError, match="HTTP 400.*bad max_tokens"):
            client_for(server, api_key="sk-right").complete(MESSAGES)
        assert len(server.requests) == 1


def test_unreachable_server_is_retried_then_reported():
    server = OpenAIServer()
    base_url = server.base_url
    server.stop()  # the port is closed now: connection refused
    with pytest.raises(ChatClientError, match="after 2 attempts; last: connection error"):
        OpenAIChatClient(base_url=base_url, model="m", max_retries=1).complete(MESSAGES)


def test_rate_limit_spaces_requests_across_threads(openai_server):
    client = client_for(openai_server, requests_per_minute=600)  # one request per 0.1 s
    client.complete(MESSAGES)  # the client's one-time setup (platform headers, ...) is not part of the spacing
    threads = [threading.Thread(target=client.complete, args=(MESSAGES,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arrivals = sorted(request.received_at for request in openai_server.requests[1:])
    # 5 starts 0.1 s apart span 0.4 s; single gaps may jitter with scheduling, the span cannot shrink much
    assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] > 0.35, arrivals


def test_rate_limiter_rejects_nonsense():
    with pytest.raises(ValueError, match="requests_per_minute must be positive"):
        RateLimiter(0)


def test_token_usage_cost_and_summary():
    usage = TokenUsage()
    usage.add(ChatResult("a", 1_500_000, 200_000, {}))
    usage.add(ChatResult("b", 500_000, 300_000, {}))
    assert usage.cost(prompt_price=2.5, completion_price=10.0) == pytest.approx(5.0 + 5.0)
    assert usage.summary(2.5, 10.0) == ("2 requests, 2,000,000 prompt + 500,000 completion tokens, estimated cost "
                                        "10.0000 (at 2.5/10.0 per 1M tokens)")


def test_run_concurrently_yields_every_item_and_keeps_errors():
    def work(n):
        if n % 7 == 3:
            raise ValueError(f"bad item {n}")
        time.sleep(0.001 * (n % 3))
        return n * n

    outcomes = {o.item: o for o in run_concurrently(work, range(40), concurrency=4, progress=False)}
    assert sorted(outcomes) == list(range(40))
    assert all(o.result == o.item ** 2 for o in outcomes.values() if o.error is None)
    assert sorted(n for n, o in outcomes.items() if o.error is not None) == [3, 10, 17, 24, 31, 38]
    assert str(outcomes[3].error) == "bad item 3"


def test_run_concurrently_pulls_items_lazily():
    pulled, finished, lock = [0], [0], threading.Lock()
    most_in_flight = [0]

    def items():
        for n in range(100):
            with lock:
                pulled[0] += 1
                most_in_flight[0] = max(most_in_flight[0], pulled[0] - finished[0])
            yield n

    def work(n):
        time.sleep(0.001)
        with lock:
            finished[0] += 1
        return n

    for outcome in run_concurrently(work, items(), concurrency=3, progress=False):
        if outcome.item == 10:
            break  # stopping early leaves the rest of the stream unread
    assert most_in_flight[0] <= 2 * 3 + 1 and pulled[0] < 100


def test_run_concurrently_against_the_server(openai_server):
    openai_server.inject(Status(500), Garbage())
    client = client_for(openai_server)
    prompts = [f"item {n}" for n in range(12)]
    outcomes = list(run_concurrently(lambda p: client.complete([{"role": "user", "content": p}]), prompts,
                                     concurrency=4, progress=False))
    assert sorted(o.result.text for o in outcomes) == sorted(prompts)
    assert client.usage.requests == 12 and len(openai_server.requests) == 14


@pytest.fixture(scope="module")
def tiny_lm():
    return build_tiny_chat_model()


def test_transformers_backend_counts_real_tokens(tiny_lm):
    model, tokenizer = tiny_lm
    client = TransformersChatClient(model, tokenizer, max_new_tokens=12)
    result = client.complete(MESSAGES)
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    assert result.prompt_tokens == len(prompt_ids)
    assert 1 <= result.completion_tokens <= 12
    assert result.raw["choices"][0]["message"]["content"] == result.text
    assert result.raw["usage"]["total_tokens"] == result.prompt_tokens + result.completion_tokens
    assert client.complete(MESSAGES).text == result.text  # greedy by default
    shorter = client.complete(MESSAGES, max_tokens=3)
    assert shorter.completion_tokens <= 3
    assert client.usage.requests == 3
    assert client.usage.completion_tokens == 2 * result.completion_tokens + shorter.completion_tokens


def test_transformers_backend_sampling_is_seeded(tiny_lm):
    client = TransformersChatClient(*tiny_lm, max_new_tokens=8)
    first = client.complete(MESSAGES, temperature=1.0, seed=3).text
    assert client.complete(MESSAGES, temperature=1.0, seed=3).text == first


def test_transformers_backend_rejects_what_it_cannot_do(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="unsupported parameters"):
        TransformersChatClient(model, tokenizer).complete(MESSAGES, logit_bias={"1": 5})
    bare = train_tokenizer(BASE_CORPUS, vocab_size=300)
    with pytest.raises(ValueError, match="no chat_template"):
        TransformersChatClient(model, bare)


def test_failing_every_nth_request_is_absorbed_by_retries():
    with OpenAIServer(failing_every(3, lambda request: "fine")) as server:
        client = client_for(server)
        assert [client.complete(MESSAGES).text for _ in range(6)] == ["fine"] * 6
        assert len(server.requests) == 8  # requests 3 and 6 of the server's count were faults
        assert client.usage.summary().endswith("(2 failed attempts retried)")
