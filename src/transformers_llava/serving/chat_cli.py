"""`transformers-llava chat`: talk to a LLaVA in the terminal, the answer streamed token by token.

    transformers-llava chat runs/demo/llava/model --image photo.jpg
    transformers-llava chat runs/demo/llava/model --image photo.jpg < questions.txt   # one turn per line; EOF ends
    transformers-llava chat --base-url http://127.0.0.1:8000/v1 [MODEL]              # any OpenAI-compatible server

In-chat commands:
    !image PATH              a new image, which starts a new conversation (as the original LLaVA CLI did)
    !clear                   start the conversation again (about the same image, if there is one)
    !save FILE               write the conversation as a LLaVA-JSON sample (loadable by training.data.load_llava_json)
    !set temperature=0.7     also top_p=..., max_new_tokens=...
    !help, !exit

Locally the conversation keeps its KV cache between turns (`LlavaChat` through `LlavaEngine.stream_turn`), so a
follow-up question runs only its own tokens. With `--base-url` the same conversation is sent to the server through
the `openai` client, the image as a data: URL. Answers go to stdout as `ASSISTANT: ...` lines; prompts, notices and
errors go to stderr. Ctrl-C stops the answer being written; Ctrl-D (EOF) ends the chat with exit status 0, or 1
when a command or turn failed while reading from a pipe.
"""

import argparse
import base64
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..formats.llava_json import write_llava_json
from ..image_processing_llava import ImageLoadError, open_image
from .engine import RequestError, add_engine_arguments, engine_from_args

COMMANDS = "!image PATH, !clear, !save FILE, !set NAME=VALUE, !help, !exit"
COMMAND_HELP = __doc__.split("In-chat commands:")[1].split("\n\n")[0]


class CommandError(ValueError):
    """A command the user mistyped: said on stderr, and the chat goes on."""


@dataclass
class Settings:
    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512

    def set(self, assignment: str) -> None:
        name, equals, value = assignment.partition("=")
        name, value = name.strip(), value.strip()
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        if not equals or name not in fields:
            raise CommandError(f"!set takes NAME=VALUE with NAME one of {', '.join(fields)}; got {assignment!r}")
        kind = float if fields[name] in (float, "float") else int
        try:
            setattr(self, name, kind(value))
        except ValueError:
            raise CommandError(f"!set {name}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None


class LocalBackend:
    """The model in this process; the conversation and its KV cache live in a `LlavaChat`."""

    def __init__(self, engine, system: str | None = None):
        self.engine, self.system = engine, system
        self.new_conversation()

    def new_conversation(self) -> None:
        self.chat = self.engine.chat(system=self.system)

    def answer(self, text: str, image, settings: Settings):
        """(text deltas, cancel) for one turn; `image` is a PIL image for the conversation's first turn, or None."""
        generation = self.engine.stream_turn(self.chat, text, images=[image] if image else None,
                                             temperature=settings.temperature, top_p=settings.top_p,
                                             max_new_tokens=settings.max_new_tokens)
        return iter(generation), generation.cancel


class RemoteBackend:
    """Any OpenAI-compatible server, through `RemoteEngine`; the conversation is kept here and sent whole each turn."""

    def __init__(self, base_url: str, model: str | None, system: str | None = None):
        from .remote import RemoteEngine

        self.engine = RemoteEngine(base_url, model or "")
        self.engine.model = model or self.engine.client.models.list().data[0].id
        self.system = system
        self.new_conversation()

    def new_conversation(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    def answer(self, text: str, image, settings: Settings):
        content = [{"type": "text", "text": text}]
        if image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": image}})
        question = {"role": "user", "content": content}
        stream = self.engine.stream_openai(  # a refused turn leaves the conversation as it was
            self.messages + [question], temperature=settings.temperature, top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens)
        first = next(stream, None)  # the request is sent here: a refusal raises before anything is printed

        def deltas():
            answer = [first] if first is not None else []
            if first is not None:
                yield first

            def keep():
                self.messages += [question, {"role": "assistant", "content": "".join(answer)}]

            try:
                for delta in stream:
                    answer.append(delta)
                    yield delta
            except Exception:
                if answer:  # cut short: keep what was said; refused (nothing said): the conversation stays as it was
                    keep()
                raise
            except BaseException:  # stopped by the user
                keep()
                raise
            keep()

        return deltas(), stream.close


def image_as_data_url(path: Path, image) -> str:
    """The file's own bytes as a data: URL (the server decodes exactly what a local chat would open)."""
    mime = f"image/{(image.format or 'png').lower()}"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


class ChatSession:
    """The loop: read a line, run a command or a turn, stream the answer."""

    def __init__(self, backend, settings: Settings, remote: bool, out=sys.stdout, err=sys.stderr):
        self.backend, self.settings, self.remote, self.out, self.err = backend, settings, remote, out, err
        self.image_path: Path | None = None
        self.image = None  # what the backend takes: a PIL image locally, a data: URL remotely
        self.turns: list[tuple[str, str]] = []

    def load_image(self, path: str) -> None:
        path = Path(path).expanduser()
        try:
            image = open_image(path)
        except ImageLoadError as err:
            raise CommandError(str(err)) from None
        self.image_path = path.resolve()
        self.image = image_as_data_url(path, image) if self.remote else image.convert("RGB")

    def clear(self) -> None:
        self.backend.new_conversation()
        self.turns = []

    def save(self, target: str) -> None:
        if not target:
            raise CommandError("!save takes a file name, e.g. !save chat.json")
        if not self.turns:
            raise CommandError("nothing to save yet: the conversation has no answered turn")
        conversations = []
        for i, (question, answer) in enumerate(self.turns):
            if i == 0 and self.image_path:
                question = "<image>\n" + question
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        sample = {"id": f"chat-{time.strftime('%Y%m%d-%H%M%S')}", "conversations": conversations}
        if self.image_path:
            sample["image"] = str(self.image_path)
        try:
            write_llava_json([sample], target)
        except OSError as err:
            raise CommandError(f"!save: cannot write {target}: {err}") from None
        print(f"[saved {len(self.turns)} turn(s) to {target}]", file=self.err)

    def command(self, line: str) -> bool:
        """Run one `!` command; False when the chat should end."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name in ("exit", "quit"):
            return False
        if name == "image":
            if not argument:
                raise CommandError("!image takes a path, e.g. !image photo.jpg")
            self.load_image(argument)
            self.clear()
            print(f"[new conversation about {self.image_path}]", file=self.err)
        elif name == "clear":
            self.clear()
            print("[new conversation" + (f" about {self.image_path}]" if self.image_path else "]"), file=self.err)
        elif name == "save":
            self.save(argument)
        elif name == "set":
            self.settings.set(argument)
            values = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.settings).items())
            print(f"[{values}]", file=self.err)
        elif name == "help":
            print(COMMAND_HELP, file=self.err)
        else:
            raise CommandError(f"unknown command !{name}; commands: {COMMANDS}")
        return True

    def turn(self, text: str) -> None:
        deltas, cancel = self.backend.answer(text, self.image if not self.turns else None, self.settings)
        print("ASSISTANT: ", end="", file=self.out, flush=True)
        answer = []
        try:
            for delta in deltas:
                answer.append(delta)
                print(delta, end="", file=self.out, flush=True)
        except KeyboardInterrupt:
            cancel()
            print(" [stopped]", end="", file=self.out)
        print(file=self.out, flush=True)
        self.turns.append((text, "".join(answer)))

    def run(self, lines, interactive: bool) -> int:
        failed = False
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("!"):
                    if not self.command(line):
                        break
                else:
                    self.turn(line)
            except (CommandError, RequestError) as err:
                print(f"error: {err}", file=self.err)
                failed = True
            except Exception as err:  # a server that is down or refuses: say so, keep chatting
                if not self.remote:
                    raise
                print(f"error: {type(err).__name__}: {err}", file=self.err)
                failed = True
        return 1 if failed and not interactive else 0


def prompted_lines(err):
    while True:
        try:
            yield input("USER: ")
        except EOFError:
            print(file=err)
            return
        except KeyboardInterrupt:
            print(file=err)
            return


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="transformers-llava chat", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="In-chat commands:" + COMMAND_HELP)
    add_engine_arguments(parser)
    parser.add_argument("--image", help="an image to talk about (the first turn carries it)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--base-url", help="chat with this OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) "
                                           "instead of loading MODEL; MODEL is then the server's model id (default: "
                                           "the first it lists)")
    parser.add_argument("--system", help="a system prompt (default: the chat template's own)")
    model_action = next(a for a in parser._actions if a.dest == "model")
    model_action.nargs = "?"
    args = parser.parse_args(argv)
    if args.model is None and not args.base_url:
        parser.error("MODEL is required (a checkpoint), unless --base-url names a server")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = Settings(args.temperature, args.top_p, args.max_new_tokens)
    if args.image:  # before loading anything: a mistyped path fails at once
        try:
            open_image(Path(args.image).expanduser())
        except ImageLoadError as err:
            print(f"transformers-llava chat: {err}", file=sys.stderr)
            return 2
    if args.base_url:
        try:
            backend = RemoteBackend(args.base_url, args.model, args.system)
        except ImportError:
            print("chat --base-url needs the openai package: pip install 'transformers-llava[serve]'", file=sys.stderr)
            return 2
        except Exception as err:
            print(f"transformers-llava chat: cannot reach {args.base_url}: {type(err).__name__}: {err}",
                  file=sys.stderr)
            return 2
    else:
        engine = engine_from_args(args, "chat")
        if engine is None:
            return 2
        backend = LocalBackend(engine, args.system)
    session = ChatSession(backend, settings, remote=bool(args.base_url))
    if args.image:
        session.load_image(args.image)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"[chatting with {args.model or backend.model}; commands: {COMMANDS}]", file=sys.stderr)
    return session.run(prompted_lines(sys.stderr) if interactive else sys.stdin, interactive)


if __name__ == "__main__":
    sys.exit(main())
