"""The judge model from command-line arguments: an OpenAI-compatible endpoint, or a local transformers model.

    transformers-llava eval llava-bench review ... --judge-base-url http://127.0.0.1:8000/v1 --judge-model gpt-4
    transformers-llava eval llava-bench review ... --judge-local path/to/causal-lm   # any chat model on disk

Endpoint settings default to the environment (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `OPENAI_MODEL`), read by
`transformers_llava.chat_client`, whose `openai` client retries timeouts, 429 and 5xx with backoff (malformed
responses too).
"""

import os

from ..chat_client import MODEL_ENV, OpenAIChatClient, TransformersChatClient


def add_arguments(parser) -> None:
    group = parser.add_argument_group("judge (OpenAI-compatible endpoint, or --judge-local)")
    group.add_argument("--judge-base-url", help="chat-completions base URL (default: $OPENAI_BASE_URL or OpenAI)")
    group.add_argument("--judge-model", help="model name at the endpoint (default: $OPENAI_MODEL)")
    group.add_argument("--judge-api-key", help="API key (default: $OPENAI_API_KEY)")
    group.add_argument("--judge-local", help="a local transformers chat model directory to judge instead")
    group.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--judge-max-retries", type=int, default=5, help="retries of a failed request")
    group.add_argument("--judge-requests-per-minute", type=float, help="rate limit (default: none)")
    group.add_argument("--judge-temperature", type=float, default=0.2, help="the original used 0.2")
    group.add_argument("--judge-max-tokens", type=int, default=1024, help="the original used 1024")


def build_client(args):
    """The chat client the arguments name."""
    if args.judge_local:
        return TransformersChatClient(args.judge_local, max_new_tokens=args.judge_max_tokens)
    if not (args.judge_model or os.environ.get(MODEL_ENV)):
        raise ValueError(f"no judge model: pass --judge-model NAME (or --judge-local DIR) or set {MODEL_ENV}")
    return OpenAIChatClient(
        base_url=args.judge_base_url, model=args.judge_model, api_key=args.judge_api_key, timeout=args.judge_timeout,
        max_retries=args.judge_max_retries,
        requests_per_minute=args.judge_requests_per_minute,
    )


def request_params(args) -> dict:
    return {"temperature": args.judge_temperature, "max_tokens": args.judge_max_tokens}
