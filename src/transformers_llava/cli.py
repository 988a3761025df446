"""The `transformers-llava` command: one entry point, subcommands as a dispatch table.

    transformers-llava demo                 # the embedded default: tiny LLaVA, synthetic data, no downloads
    transformers-llava train ...            # the paper's two stages through TRL's SFTTrainer
    transformers-llava convert SRC DST ...  # original LLaVA / llava-hf / ours
    transformers-llava eval llava-bench|scienceqa ...
    transformers-llava generate ...         # GPT-assisted instruction data, CC3M filtering
    transformers-llava chat MODEL           # chat in the terminal (streams; `!image PATH`, `!save FILE`, ...)
    transformers-llava serve MODEL          # an OpenAI-compatible server (/v1/chat/completions)
    transformers-llava web MODEL            # the web demo: chat about images in the browser

Each subcommand lives in its own module exposing `main(argv=None) -> int`.
"""

import importlib
import sys

COMMANDS = {
    "demo": ("transformers_llava.demo.run", "build a tiny LLaVA locally and run the embedded default end to end"),
    "train": ("transformers_llava.training.cli", "train a LLaVA stage (stage1 / stage2 / lora) from a YAML recipe"),
    "convert": ("transformers_llava.checkpoints.cli", "convert checkpoints between original LLaVA, llava-hf and ours"),
    "eval": ("transformers_llava.evaluation.cli", "evaluate on LLaVA-Bench or ScienceQA"),
    "generate": ("transformers_llava.data_generation.cli", "generate instruction data / filter CC3M captions"),
    "chat": ("transformers_llava.serving.chat_cli", "chat with a LLaVA (or any OpenAI-compatible server) in the terminal"),
    "serve": ("transformers_llava.serving.server", "serve a LLaVA behind an OpenAI-compatible HTTP API"),
    "web": ("transformers_llava.serving.web", "chat about images in the browser (Gradio demo; extra [web])"),
}


def usage() -> str:
    lines = ["usage: transformers-llava <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"transformers-llava: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
