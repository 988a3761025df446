"""The web demo: chat with a LLaVA about an image in the browser, as the original LLaVA demo offered it (Gradio).

    transformers-llava web runs/demo/llava/model                         # the model runs in this process
    transformers-llava web llava --base-url http://127.0.0.1:8000/v1    # a model served elsewhere (ours, vLLM, ...)

then open http://127.0.0.1:7860. MODEL is a checkpoint path (anything our `from_pretrained` loads), or with
`--base-url` the model's name on that OpenAI-compatible server. The page has an image upload with the original's
"preprocess for non-square image" choice (`image_modes.py`), the two example photos of the original demo, temperature /
top-p / max-output-token controls (0.2 / 0.7 / 512), a streamed answer, Regenerate and Clear. As in the original, a new
image starts a new conversation. Needs the `[web]` extra: `pip install 'transformers-llava[web]'`.

The page is a thin shell: each answer is one `stream(messages, ...)` call on the one chat engine (`engine.py`), or on
`RemoteEngine` (`remote.py`), which has the same interface; nothing here renders prompts or tokenises.
"""

import argparse
import os
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..image_processing_llava import DEFAULT_MAX_IMAGE_PIXELS, ImageLoadError, open_image
from .engine import add_engine_arguments, engine_from_args
from .image_modes import MODES, prepare_image, processor_geometry

EXAMPLES_DIR = Path(__file__).parent / "examples"
EXAMPLES = [  # the original demo's two examples
    ("extreme_ironing.jpg", "What is unusual about this image?"),
    ("waterview.jpg", "What are the things I should be cautious about when I visit here?"),
]
DEFAULTS = {"temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512}
CSS = "#buttons button { min-width: min(120px, 100%); }"


@dataclass
class Turn:
    """One question of the conversation: its text, the image it brought (only a conversation's first turn has one)
    with the preprocessing chosen for it, and the answer (None until asked, "" while it streams)."""

    text: str
    image: Image.Image | None = None
    mode: str = "Default"
    answer: str | None = None
    image_path: str | None = None  # the uploaded file, which the chat shows


class WebChat:
    """What the page does, apart from its widgets: turns -> engine messages, and the chat as the page shows it."""

    def __init__(self, engine, side: int | None = None, background: tuple[int, int, int] | None = None):
        self.engine = engine
        processor = getattr(engine, "processor", None)  # in-process: crop exactly as the processor would
        if processor is not None and side is None:
            side, background = processor_geometry(processor)
        self.image_options = {"side": side, **({"background": background} if background else {})}

    def messages(self, turns: list[Turn]) -> list[dict]:
        """The conversation as transformers chat messages, the last turn's question last."""
        messages = []
        for turn in turns:
            content = [{"type": "text", "text": turn.text}]
            if turn.image is not None:
                image = prepare_image(turn.image, turn.mode, **self.image_options)
                content.insert(0, {"type": "image", "image": image})
            messages.append({"role": "user", "content": content})
            if turn.answer is not None and turn is not turns[-1]:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
        return messages

    def stream_answer(self, turns: list[Turn], temperature: float, top_p: float, max_new_tokens: int):
        """Answer the last turn, yielding after each new piece of text (the turn's answer holds the text so far)."""
        turn = turns[-1]
        messages = self.messages(turns)
        turn.answer = ""
        deltas = self.engine.stream(messages, temperature=float(temperature), top_p=float(top_p),
                                    max_new_tokens=int(max_new_tokens))
        with closing(deltas):  # a page that stops listening (Clear, a closed tab) stops the generation
            for delta in deltas:
                turn.answer += delta
                yield


def chat_view(turns: list[Turn]) -> list[dict]:
    """Chatbot messages: the image, then each question and its answer."""
    shown = []
    for turn in turns:
        if turn.image_path is not None:
            shown.append({"role": "user", "content": {"path": turn.image_path}})
        shown.append({"role": "user", "content": turn.text})
        if turn.answer is not None:
            shown.append({"role": "assistant", "content": turn.answer})
    return shown


def build_demo(engine, model_name: str = "", title: str = "LLaVA"):
    """The Gradio page around `engine` (anything with `stream(messages, temperature=, top_p=, max_new_tokens=)`)."""
    import gradio as gr

    from .engine import RequestError
    from .remote import RemoteError

    chat = WebChat(engine)

    def add_turn(text, image_path, mode, turns):
        if not text.strip():
            gr.Warning("Type a question about the image first.")
            return turns, chat_view(turns), text, image_path
        if image_path is not None:  # a new image starts a new conversation, as in the original demo
            try:
                image = open_image(image_path, getattr(engine, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
            except ImageLoadError as error:
                raise gr.Error(str(error)) from None
            turns = [Turn(text.strip(), image, mode, image_path=image_path)]
        else:
            turns = turns + [Turn(text.strip())]
        return turns, chat_view(turns), "", None

    def respond(turns, temperature, top_p, max_new_tokens):
        if not turns or turns[-1].answer is not None:  # nothing asked (an empty question was refused)
            yield turns, chat_view(turns)
            return
        try:
            for _ in chat.stream_answer(turns, temperature, top_p, max_new_tokens):
                yield turns, chat_view(turns)
        except (RequestError, RemoteError) as error:
            turns = turns[:-1]
            yield turns, chat_view(turns)
            raise gr.Error(str(error)) from None
        yield turns, chat_view(turns)

    def regenerate(turns, mode):
        if not turns:
            return turns, chat_view(turns)
        turns = list(turns)
        last = turns[-1]
        turns[-1] = Turn(last.text, last.image, mode if last.image is not None else last.mode,
                         image_path=last.image_path)
        return turns, chat_view(turns)

    def clear():
        return [], [], "", None

    textbox = gr.Textbox(show_label=False, placeholder="Enter text and press ENTER", container=False, scale=8,
                         elem_id="question", render=False)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nLarge Language and Vision Assistant: upload an image and ask about it."
                    + (f" Model: `{model_name}`" if model_name else ""))
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                # the uploaded file as it is (no re-encoding); `open_image` reads it with the package's checks
                imagebox = gr.Image(type="filepath", image_mode=None, label="Image", elem_id="imagebox")
                mode = gr.Radio(list(MODES[1:]) + [MODES[0]], value="Default", elem_id="image-mode",
                                label="Preprocess for non-square image")
                gr.Examples(examples=[[str(EXAMPLES_DIR / name), question] for name, question in EXAMPLES],
                            inputs=[imagebox, textbox])
                with gr.Accordion("Parameters", open=False, elem_id="parameters"):
                    temperature = gr.Slider(0.0, 1.0, value=DEFAULTS["temperature"], step=0.1, label="Temperature",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.1, 1.0, value=DEFAULTS["top_p"], step=0.1, label="Top P", elem_id="top-p")
                    max_new_tokens = gr.Slider(16, 1024, value=DEFAULTS["max_new_tokens"], step=16,
                                               label="Max output tokens", elem_id="max-new-tokens")
            with gr.Column(scale=8):
                chatbot = gr.Chatbot(label=f"{title} Chatbot", height=550, elem_id="chatbot", buttons=["copy_all"],
                                     feedback_options=None)
                with gr.Row():
                    textbox.render()
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Row(elem_id="buttons"):
                    regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
                    clear_button = gr.Button("Clear", elem_id="clear")

        sampling = [turns, temperature, top_p, max_new_tokens]
        asked = []
        for trigger in (textbox.submit, send.click):
            asked.append(trigger(add_turn, [textbox, imagebox, mode, turns], [turns, chatbot, textbox, imagebox])
                         .success(respond, sampling, [turns, chatbot]))
        asked.append(regenerate_button.click(regenerate, [turns, mode], [turns, chatbot])
                     .success(respond, sampling, [turns, chatbot]))
        clear_button.click(clear, None, [turns, chatbot, textbox, imagebox], cancels=asked)
        chatbot.clear(clear, None, [turns, chatbot, textbox, imagebox], cancels=asked)  # the chat's own trash icon
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="transformers-llava web", description=__doc__.split("\n\n")[0])
    add_engine_arguments(parser)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to be reachable from other machines")
    parser.add_argument("--base-url", help="an OpenAI-compatible server to answer instead of a local model, e.g. "
                                           "http://127.0.0.1:8000/v1; MODEL is then the model's name there "
                                           "(GET /v1/models); API key from OPENAI_API_KEY, if it needs one")
    args = parser.parse_args(argv)
    local_only = [f"--{name.replace('_', '-')}" for name in ("conv_mode", "max_image_pixels", "device", "dtype")
                  if getattr(args, name) is not None]
    if args.base_url and local_only:
        parser.error(f"{', '.join(local_only)}: for a local model only; the server at --base-url loads its own")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        print("transformers-llava web: the web demo needs Gradio: pip install 'transformers-llava[web]'",
              file=sys.stderr)
        return 2
    if args.base_url:
        from .remote import RemoteEngine

        engine, name = RemoteEngine(args.base_url, model=args.model), f"{args.model} at {args.base_url}"
    else:
        engine, name = engine_from_args(args, "web"), args.model
        if engine is None:
            return 2
    demo = build_demo(engine, model_name=name)
    demo.queue(default_concurrency_limit=8)  # concurrent visitors' answers run as one batch in the engine
    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Default(), css=CSS,
                footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
