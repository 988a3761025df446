"""An OpenAI-compatible HTTP server for a LLaVA: `/v1/chat/completions` (streamed as SSE or not) over `LlavaEngine`.

    transformers-llava serve runs/demo/llava/model --port 8000 [--allow-remote-images]

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="runs/demo/llava/model", temperature=0, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
        {"type": "text", "text": "What is unusual about this image?"}]}])

Routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` with `temperature` (0 = greedy; default 0.2,
the LLaVA demo's), `top_p` (default 0.7), `max_tokens` / `max_completion_tokens` (default 512), `stop`, `seed`,
`stream` and `stream_options.include_usage`. Images are `image_url` parts holding `data:` URLs; `http(s)` URLs are
fetched only with `--allow-remote-images` (a server that fetches any URL for anyone is an SSRF hole). Parameters
this server cannot honour (`n > 1`, tools, logprobs, penalties, ...) are refused, never ignored. Every bad request
gets a 4xx OpenAI-shaped error `{"error": {"message", "type", "param", "code"}}` naming the problem, and the server
keeps serving. Requests arriving together are batched by the engine; a client that disconnects mid-stream cancels
its generation.

Why not transformers' own `transformers serve` layer (`transformers.cli.serving`, transformers 5.23): its model
manager resolves `getattr(transformers, config.architectures[0])`, which cannot name a plugin's class, and it offers
no public, documented way to hand it a loaded model or our conversation encoding — its handlers are internals of the
CLI, not an extension API. So this server follows its stack (FastAPI + uvicorn) and keeps to the engine.
"""

import argparse
import asyncio
import base64
import binascii
import json
import sys
import time
import uuid

from ..image_processing_llava import ImageLoadError, open_image
from .engine import LlavaEngine, RequestError, add_engine_arguments, engine_from_args

MAX_REMOTE_IMAGE_BYTES = 20 * 1024 * 1024
REMOTE_IMAGE_TIMEOUT = 10.0
# Parameters that change what a completion is: refused unless they hold their no-op value.
UNSUPPORTED = {
    "n": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
    "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}), "audio": (None,), "modalities": (None, ["text"]),
}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def decode_data_url(url: str, where: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or ";base64" not in header:
        raise BadRequest(f"{where} is a data: URL without base64 content (expected data:image/...;base64,...)",
                         where, "invalid_image_url")
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"{where} holds invalid base64 ({err})", where, "invalid_base64") from err


def fetch_image_bytes(url: str, where: str) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=REMOTE_IMAGE_TIMEOUT, follow_redirects=True) as response:
            response.raise_for_status()
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_REMOTE_IMAGE_BYTES:
                    raise BadRequest(f"{where}: {url} is larger than {MAX_REMOTE_IMAGE_BYTES:,} bytes", where,
                                     "image_too_large")
            return bytes(data)
    except httpx.HTTPError as err:
        raise BadRequest(f"{where}: could not fetch {url}: {err}", where, "image_fetch_failed") from err


def load_image_part(part: dict, where: str, engine: LlavaEngine, allow_remote: bool):
    """An `image_url` part -> a PIL image, or a BadRequest naming the part."""
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    where = f"{where}.image_url"
    if not isinstance(url, str):
        raise BadRequest(f"{where} must hold a url", where, "invalid_image_url")
    if url.startswith("data:"):
        data = decode_data_url(url, where)
    elif url.startswith(("http://", "https://")):
        if not allow_remote:
            raise BadRequest(f"{where}: remote image URLs are disabled on this server; send the image as a data: "
                             "URL, or start the server with --allow-remote-images", where, "remote_images_disabled")
        data = fetch_image_bytes(url, where)
    else:
        raise BadRequest(f"{where}: unsupported URL scheme in {url[:40]!r}; use a data: URL", where,
                         "invalid_image_url")
    try:
        return open_image(data, max_pixels=engine.max_image_pixels)
    except ImageLoadError as err:
        code = "image_too_large" if "max_image_pixels" in str(err) else "invalid_image"
        raise BadRequest(f"{where}: {str(err).replace('Image <bytes>', 'the image')}", where, code) from err


def to_engine_messages(messages, engine: LlavaEngine, allow_remote: bool) -> list[dict]:
    """OpenAI chat messages -> the engine's chat-format messages: each `image_url` part decoded into an image part.
    Everything else passes through as it is; the engine's own checks name what is wrong with it."""
    if not isinstance(messages, list):
        return messages
    converted = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            converted.append(message)
            continue
        content = message.get("content")
        if content is None:  # OpenAI allows a null content (an assistant turn that only called tools)
            content = ""
        elif isinstance(content, list):
            content = [image_part(part, f"messages[{i}].content[{j}]", engine, allow_remote)
                       for j, part in enumerate(content)]
        converted.append({**message, "content": content})
    return converted


def image_part(part, where: str, engine: LlavaEngine, allow_remote: bool):
    """An `image_url` part decoded into the engine's image part; text parts as they are; any other part refused."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "image_url":
        return {"type": "image", "image": load_image_part(part, where, engine, allow_remote)}
    if kind != "text":
        raise BadRequest(f"{where} has type {kind!r}; this server takes text and image_url parts", f"{where}.type",
                         "invalid_value")
    return part


def sampling_options(body: dict) -> dict:
    for name, allowed in UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            why = "send one request per choice (concurrent requests are batched)" if name == "n" else \
                "it is not supported by this server"
            raise BadRequest(f"{name}={json.dumps(body[name])[:60]} is not supported: {why}", name, "unsupported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise BadRequest("stop must be a string or a list of strings", "stop", "invalid_value")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest(f"seed must be an integer, got {seed!r}", "seed", "invalid_value")
    options = {"temperature": body.get("temperature"), "top_p": body.get("top_p"), "max_new_tokens": max_tokens,
               "stop": stop, "seed": seed}
    return {k: v for k, v in options.items() if v is not None}


def build_app(engine: LlavaEngine, model_name: str, allow_remote_images: bool = False):
    """The FastAPI application serving `engine` under the model id `model_name`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title="transformers-llava", description=__doc__.split("\n\n")[0])
    created = int(time.time())

    def error_response(err: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, exc.status_code),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "transformers-llava"}]}

    def submit(body: dict):
        """Validate and queue one request (runs in a worker thread: decoding and encoding images take CPU)."""
        if body.get("model") not in (None, model_name):
            raise BadRequest(f"model {body.get('model')!r} is not served here; this server serves {model_name!r}",
                             "model", "model_not_found", status=404)
        messages = to_engine_messages(body.get("messages"), engine, allow_remote_images)
        return engine.submit(messages, **sampling_options(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error_response(BadRequest(f"the request body is not valid JSON: {err}", None, "invalid_json"))
        if not isinstance(body, dict):
            return error_response(BadRequest("the request body must be a JSON object", None, "invalid_json"))
        try:
            generation = await run_in_threadpool(submit, body)
        except BadRequest as err:
            return error_response(err)
        except RequestError as err:
            return error_response(BadRequest(err.message, err.param, err.code))
        completion_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def usage() -> dict:
            return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
                    "total_tokens": generation.prompt_tokens + generation.completion_tokens}

        def finish_reason() -> str:
            return "length" if generation.finish_reason == "length" else "stop"

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            def chunk(delta: dict, reason=None, choices=True) -> str:
                data = {"id": completion_id, "object": "chat.completion.chunk", "created": now, "model": model_name,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
                        if choices else []}
                if not choices:
                    data["usage"] = usage()
                return f"data: {json.dumps(data)}\n\n"

            async def events():
                try:
                    yield chunk({"role": "assistant", "content": ""})
                    async for delta in generation.deltas():
                        yield chunk({"content": delta})
                    yield chunk({}, finish_reason())
                    if include_usage:
                        yield chunk({}, choices=False)
                except Exception as err:  # a failure mid-stream: the client hears of it, the server goes on
                    yield f"data: {json.dumps(error_body(f'{type(err).__name__}: {err}', 'server_error'))}\n\n"
                finally:  # also when the client went away: stop generating for it
                    generation.cancel()
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def watch_disconnect():
            while not generation.finished:
                if await request.is_disconnected():
                    generation.cancel()
                    return
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch_disconnect())
        try:
            async for _ in generation.deltas():
                pass
        except Exception as err:
            return error_response(BadRequest(f"{type(err).__name__}: {err}", status=500, type="server_error"))
        finally:
            watcher.cancel()
        return {"id": completion_id, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                             "logprobs": None, "finish_reason": finish_reason()}],
                "usage": usage()}

    return app


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="transformers-llava serve", description=__doc__.split("\n\n")[0])
    add_engine_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="fetch http(s) image URLs (off by default: a server fetching any URL is an SSRF hole)")
    parser.add_argument("--served-model-name", help="the model id clients send (default: MODEL as given)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long an idle engine collects requests arriving together before its first prefill "
                             "(a busy one admits waiting requests between decoding steps)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("transformers-llava serve needs FastAPI and uvicorn: pip install 'transformers-llava[serve]'",
              file=sys.stderr)
        return 2
    engine = engine_from_args(args, "serve")
    if engine is None:
        return 2
    engine.max_batch_size, engine.batch_window = args.max_batch_size, args.batch_window_ms / 1000
    app = build_app(engine, args.served_model_name or args.model, args.allow_remote_images)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


__all__ = ["build_app", "main"]
