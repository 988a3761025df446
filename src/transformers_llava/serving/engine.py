"""The one chat engine every serving surface calls: conversation -> ids -> batched, streamed `generate`.

    from transformers_llava.serving import LlavaEngine
    engine = LlavaEngine.from_pretrained("runs/demo/llava/model")
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open("photo.jpg")},
                                             {"type": "text", "text": "What is unusual about this image?"}]}]
    for delta in engine.stream(messages, temperature=0):   # the answer's text as it is generated
        print(delta, end="", flush=True)
    answer = engine.complete(messages, temperature=0)       # a str; .prompt_tokens, .completion_tokens, .finish_reason

Messages are transformers chat-format dicts: roles system / user / assistant, content a string or a list of
`{"type": "text", "text": ...}` and `{"type": "image", "image": PIL.Image}` parts. A conversation is rendered by the
processor's chat template and encoded once, when it is submitted, so a bad one fails at once with a `RequestError`
naming the message, the part and the numbers. `temperature=0` is greedy decoding.

Requests from many threads are batched continuously (`batching.DecodeBatch`): one scheduler thread runs a decode
loop, and between two decoding steps the rows whose answer ended (EOS, stop string, own `max_new_tokens`, or
cancellation) leave the batch and its KV cache, and waiting requests join it, prefilled together (images encoded,
prompts left-padded) and merged into the running cache. An idle engine collects requests for `batch_window` seconds
before its first prefill; at most `max_batch_size` rows run at once. Each row samples with its own settings (greedy,
temperature / top_p, its own seeded generator), so any requests share a batch. Greedy rows answer in a batch what
they answer alone (tests pin it). Each row decodes its tokens, cuts stop strings and streams its text; closing a
`stream()` generator (a client that went away) cancels its row.

Multi-turn chats that keep their KV cache between turns (the CLI) run through `LlavaChat` with the same streamer:
`chat = engine.chat()` then `engine.stream_turn(chat, text, images)`.
"""

from __future__ import annotations

import atexit
import os
import sys
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jinja2.exceptions import TemplateError
from PIL import Image
from transformers import StoppingCriteriaList

from ..chat import LlavaChat
from .batching import DecodeBatch, check_supported
from .requests import Completion, Generation, RequestError, RowsFinished, RowStreamer, Sampling
from ..chat_templates import FORMATS, STOP_STRINGS, load_chat_template
from ..image_processing_llava import DEFAULT_MAX_IMAGE_PIXELS

ROLES = ("system", "user", "assistant")


@dataclass
class _Request:
    ids: torch.Tensor  # [L] prompt ids, images expanded
    pixel_values: torch.Tensor | None  # [N_img, 3, H, W]
    generation: Generation


class LlavaEngine:
    """A LLaVA model and its processor behind a request queue; see the module docstring."""

    def __init__(self, model, processor, *, max_image_pixels: int | None = None, max_batch_size: int = 8,
                 batch_window: float = 0.005):
        self.model, self.processor, self.tokenizer = model.eval(), processor, processor.tokenizer
        check_supported(model.generation_config)
        self.max_image_pixels = max_image_pixels or getattr(processor.image_processor, "max_image_pixels", None) \
            or DEFAULT_MAX_IMAGE_PIXELS
        self.max_batch_size, self.batch_window = max_batch_size, batch_window
        self.tokenizer.padding_side = "left"
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:  # padded positions are masked out: any id will do
            self.pad_token_id = self.tokenizer.eos_token_id
        self.context_length = model.config.get_text_config().max_position_embeddings
        self._queue: queue.Queue = queue.Queue()
        self._generating = threading.Lock()  # one `generate` at a time on the model
        self._starting = threading.Lock()
        self._scheduler: threading.Thread | None = None
        self._running: list[Generation] = []  # the rows of the `generate` in progress
        # chat-turn threads, joined by `close`: one still freeing its tensors while Python shuts down aborts it
        self._workers: set[threading.Thread] = set()
        self.closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    @classmethod
    def from_pretrained(cls, model_path, *, device=None, dtype=None, conversation_format: str | None = None,
                        max_image_pixels: int | None = None, **kwargs) -> "LlavaEngine":
        """Load anything the package's `from_pretrained` loads (ours, llava-hf, original releases); `kwargs` go to
        both `from_pretrained` calls. dtype defaults to float32 on CPU and to the checkpoint's own elsewhere;
        `conversation_format` (llava_v0, llava_v1, ...) replaces the checkpoint's chat template and stop strings."""
        from .. import TransformersLlavaForConditionalGeneration, TransformersLlavaProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        dtype = dtype or (torch.float32 if str(device) == "cpu" else "auto")
        model = TransformersLlavaForConditionalGeneration.from_pretrained(model_path, dtype=dtype, **kwargs)
        processor = TransformersLlavaProcessor.from_pretrained(model_path, **kwargs)
        engine = cls(model.to(device), processor, max_image_pixels=max_image_pixels)
        if conversation_format:
            engine.set_conversation_format(conversation_format)
        return engine

    def set_conversation_format(self, name: str) -> None:
        """Chat in one of the paper's formats (llava_v0, llava_v1, vicuna_v1, llava_llama_2, plain) and stop where
        it ends a turn."""
        self.processor.chat_template = load_chat_template(name)
        self.model.generation_config.stop_strings = STOP_STRINGS.get(name)

    @property
    def model_stops(self) -> list[str]:
        return list(self.model.generation_config.stop_strings or [])

    @property
    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    # -- conversation -> ids
    def check_image(self, image, where: str) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise RequestError(f"{where} is not an image (got {type(image).__name__})", where, "invalid_image")
        width, height = image.size
        if width * height > self.max_image_pixels:
            raise RequestError(
                f"{where} has {width} x {height} = {width * height:,} pixels, more than this server's "
                f"max_image_pixels={self.max_image_pixels:,}", where, "image_too_large")
        if width == 0 or height == 0:
            raise RequestError(f"{where} is empty ({width} x {height} pixels)", where, "invalid_image")
        return image

    def _validated(self, messages) -> tuple[list[dict], list[Image.Image]]:
        """(messages with image parts reduced to placeholders for the template, the images in order)."""
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list of chat messages", "messages", "invalid_value")
        plain, images = [], []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or "role" not in message:
                raise RequestError(f"{where} must be an object with a role and a content", where, "invalid_value")
            if message["role"] not in ROLES:
                raise RequestError(f"{where} has role {message['role']!r}; this model's conversations know the roles "
                                   f"{', '.join(ROLES)}", f"{where}.role", "invalid_role")
            content = message.get("content")
            if isinstance(content, str):
                plain.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
                continue
            if not isinstance(content, list):
                raise RequestError(f"{where}.content must be a string or a list of parts", f"{where}.content",
                                   "invalid_value")
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image":
                    images.append(self.check_image(part.get("image"), f"{where}.content[{j}]"))
                    parts.append({"type": "image"})
                else:
                    raise RequestError(f"{where}.content[{j}] must be a text part or an image part, got "
                                       f"{str(part)[:80]}", f"{where}.content[{j}]", "invalid_value")
            plain.append({"role": message["role"], "content": parts})
        if plain[-1]["role"] != "user":
            raise RequestError(f"the last message must be the user's turn to answer, not {plain[-1]['role']!r}",
                               f"messages[{len(plain) - 1}].role", "invalid_value")
        return plain, images

    def encode(self, messages) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt ids [L] with every image expanded to its tokens, pixel values [N_img, 3, H, W] or None), through
        `processor.encode_conversation`, the package's one path from a conversation to ids."""
        plain, images = self._validated(messages)
        try:
            encoded = self.processor.encode_conversation(plain, add_generation_prompt=True)
        except TemplateError as err:
            raise RequestError(f"the conversation does not fit the chat template: {err}", "messages",
                               "invalid_conversation") from err
        placed = encoded.text.count(self.processor.image_token)
        if placed != len(images):
            more = placed > len(images)
            raise RequestError(
                f"{len(images)} image(s) were sent but the chat template placed {placed} {self.processor.image_token} "
                "placeholder(s)" + ("; the text itself contains the placeholder" if more else
                                    " (it drops images it cannot place, e.g. outside user turns)"),
                "messages", "image_placeholder_mismatch" if more else "too_many_images")
        ids = torch.from_numpy(encoded.input_ids)
        if len(ids) >= self.context_length:
            raise RequestError(
                f"the prompt is {len(ids)} tokens ({len(images)} image(s) of {self.processor.tokens_per_image} tokens "
                f"each) but the model's context is {self.context_length} tokens", "messages",
                "context_length_exceeded")
        if not images:
            return ids, None
        return ids, self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    # -- requests
    def submit(self, messages, *, temperature: float = 0.2, top_p: float = 0.7, max_new_tokens: int | None = 512,
               stop=None, seed: int | None = None) -> Generation:
        """Queue one answer; returns its `Generation` at once (raises `RequestError` for a bad request)."""
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        ids, pixel_values = self.encode(messages)
        room = self.context_length - len(ids)
        if max_new_tokens is None:
            max_new_tokens = room
        elif isinstance(max_new_tokens, int) and max_new_tokens > room:
            raise RequestError(
                f"the prompt is {len(ids)} tokens and {max_new_tokens} new tokens were asked for, but the model's "
                f"context is {self.context_length} tokens (at most {room} new tokens fit)", "max_tokens",
                "context_length_exceeded")
        sampling = Sampling(temperature, top_p, max_new_tokens, stop, seed)
        generation = Generation(self.tokenizer, len(ids), sampling, list(stop) + self.model_stops, self.eos_ids)
        self._start_scheduler()
        self._queue.put(_Request(ids, pixel_values, generation))
        return generation

    def stream(self, messages, **sampling) -> Iterator[str]:
        """The answer's text deltas; closing the iterator early cancels the generation."""
        generation = self.submit(messages, **sampling)

        def deltas():
            try:
                yield from generation
            finally:
                generation.cancel()

        return deltas()

    def complete(self, messages, **sampling) -> Completion:
        return self.submit(messages, **sampling).result()

    # -- the scheduler
    def close(self) -> None:
        """Cancel the generation in progress and keep the model idle from now on. Also run at interpreter exit: a
        thread still inside torch while Python shuts down aborts the process."""
        self.closed = True
        for row in list(self._running):
            row.cancel()
        if self._scheduler is not None:
            self._queue.put(None)
            self._scheduler.join(timeout=60)
        self._generating.acquire(timeout=60)  # held for good: nothing generates after close
        for worker in list(self._workers):
            worker.join(timeout=10)

    def _start_scheduler(self) -> None:
        if self.closed:
            raise RuntimeError("this LlavaEngine is closed")
        with self._starting:
            if self._scheduler is None:
                self._scheduler = threading.Thread(target=self._schedule, name="llava-engine", daemon=True)
                self._scheduler.start()

    def _schedule(self) -> None:
        """The decode loop (continuous batching, see `batching`): between decoding steps, finished rows leave the
        batch and waiting requests join it. An idle engine waits for a request, then `batch_window` seconds for
        more to prefill together."""
        batch = DecodeBatch(self.model, self.pad_token_id)
        while True:
            waiting, stopping = self._waiting(idle=not batch.rows, room=self.max_batch_size - len(batch.rows))
            self._end([r for r in waiting if r.generation.cancelled])
            waiting = [r for r in waiting if not r.generation.cancelled]
            try:
                with self._generating:  # all torch work under the lock, which `close` takes for good
                    if self.closed:
                        raise RuntimeError("this LlavaEngine is closed")
                    if waiting:
                        try:
                            batch.admit(waiting)
                        except Exception as error:  # a bad newcomer fails alone; the running rows go on
                            for request in waiting:
                                request.generation.fail(error)
                        self._running = batch.generations
                    self._end(batch.drop_finished())
                    if batch.rows:
                        batch.step()
                        self._end(batch.drop_finished())
            except Exception as error:  # the callers hear of it (a cancelled row just ends); the loop keeps serving
                self._end([r for r in batch.rows if r.generation.cancelled])
                for request in batch.rows + waiting:
                    request.generation.fail(error)
                batch.clear()
            self._running = batch.generations
            del waiting
            if stopping:
                for row in batch.generations:
                    row.cancel()
                self._end(batch.rows)
                batch.clear()
                return

    def _waiting(self, idle: bool, room: int) -> tuple[list[_Request], bool]:
        """(requests to admit now, whether `close` asked the loop to stop). Idle: block for the first request,
        then collect for `batch_window`; busy: take what is queued, without waiting."""
        requests, deadline = [], None
        while len(requests) < room:
            try:
                if idle and not requests:
                    request = self._queue.get()
                    deadline = time.monotonic() + self.batch_window
                elif idle:
                    request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:  # `close`
                return requests, True
            requests.append(request)
        return requests, False

    @staticmethod
    def _end(requests: list[_Request]) -> None:
        for request in requests:
            request.generation.finish("cancelled" if request.generation.cancelled else "length")

    # -- multi-turn chat with a kept KV cache (the CLI)
    def chat(self, system: str | None = None) -> LlavaChat:
        return LlavaChat(self.model, self.processor, system=system)

    def stream_turn(self, chat: LlavaChat, text: str, images=None, *, temperature: float = 0.2, top_p: float = 0.7,
                    max_new_tokens: int = 512, seed: int | None = None) -> Generation:
        """Ask `chat` one more turn in a worker thread; returns its `Generation` (iterate for the deltas)."""
        images = [self.check_image(image, f"image {i}") for i, image in enumerate(images or [])]
        sampling = Sampling(temperature, top_p, max_new_tokens, (), seed)
        generation = Generation(self.tokenizer, 0, sampling, self.model_stops, self.eos_ids)

        def work():
            try:
                with self._generating:
                    if self.closed:
                        raise RuntimeError("this LlavaEngine is closed")
                    self._running = [generation]
                    if seed is not None:
                        torch.manual_seed(seed)
                    chat.ask(text, images=images, streamer=RowStreamer([generation]), max_new_tokens=max_new_tokens,
                             stopping_criteria=StoppingCriteriaList([RowsFinished([generation])]),
                             tokenizer=self.tokenizer, pad_token_id=self.pad_token_id, **sampling.generate_kwargs())
                generation.prompt_tokens = chat.prompt_length
            except Exception as error:
                generation.fail(error)
            finally:
                generation.finish("cancelled" if generation.cancelled else "length")

        if self.closed:
            raise RuntimeError("this LlavaEngine is closed")
        worker = threading.Thread(target=work, name="llava-chat-turn", daemon=True)
        self._workers = {w for w in self._workers if w.is_alive()} | {worker}
        worker.start()
        return generation


def _close_at_exit(engine_ref) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.close()


def add_engine_arguments(parser) -> None:
    """The options every command that loads a model for chatting shares (chat, serve, web)."""
    parser.add_argument("model", help="a checkpoint directory or Hub id: ours, llava-hf or an original LLaVA release")
    parser.add_argument("--conv-mode", choices=FORMATS, help="conversation format (default: the checkpoint's own)")
    parser.add_argument("--max-image-pixels", type=int, help="refuse larger images (default: the processor's)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"),
                        help="default: float32 on CPU, the checkpoint's own elsewhere")


def engine_from_args(args, command: str) -> LlavaEngine | None:
    """Load the engine `add_engine_arguments` describes, or say on stderr why not and return None."""
    looks_like_hub_id = args.model.count("/") == 1 and not args.model.startswith((".", "/", "~"))
    if not os.path.exists(args.model) and not looks_like_hub_id:
        print(f"transformers-llava {command}: model path {args.model} does not exist", file=sys.stderr)
        return None
    try:
        return LlavaEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                           conversation_format=args.conv_mode, max_image_pixels=args.max_image_pixels)
    except (OSError, ValueError) as err:
        print(f"transformers-llava {command}: could not load a LLaVA from {args.model}: {err}", file=sys.stderr)
        return None


__all__ = ["LlavaEngine", "Generation", "Completion", "RequestError", "Sampling"]
