"""`transformers-llava convert`: one command between original LLaVA releases, llava-hf and this package's format.

    transformers-llava convert llava-v1.5-7b llava-v1.5-7b-hf --to llava-hf --vision-tower clip-vit-large-patch14-336
    transformers-llava convert LLaVA-7b-delta-v0 llava-7b-v0 --to ours --base-model llama-7b --vision-tower clip-l-14
    transformers-llava convert llava-v1.5-7b-lora merged-hf --to llava-hf --base-model vicuna-7b-v1.5 ...
    transformers-llava convert llava-1.5-7b-hf ours-7b --to ours
    transformers-llava convert ours-7b llava-v1.5-7b --to original --vision-tower-name openai/clip-vit-large-patch14-336

SRC may be in any layout `detect_layout` knows (this package's, llava-hf, an original release, delta, LoRA,
projector-only); DST is written as safetensors shards with a progress bar. llava-hf output loads in vanilla
transformers (`LlavaForConditionalGeneration`) and has the layout of the llava-hf Hub repositories that vLLM, SGLang
and TGI read (written so that vLLM serves it as we do: see docs/checkpoints.md); original is the layout of the
original releases (the original repo's scripts, SGLang's `LlavaLlamaForCausalLM`); ours loads with this package or
with `trust_remote_code=True`.
"""

import argparse
import sys
import time

import torch

from ..chat_templates import FORMATS
from .detect import detect_layout
from .hub import resolve_directory
from .safe_load import CheckpointError
from .original_writer import save_original
from .writer import save_llava_hf, save_ours

WRITERS = {"ours": save_ours, "llava-hf": save_llava_hf, "original": save_original}
DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformers-llava convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint directory or Hub repository in any supported layout")
    parser.add_argument("dst", help="output directory (created; must hold no weights yet)")
    parser.add_argument("--to", required=True, choices=sorted(WRITERS), help="output layout")
    parser.add_argument("--base-model", help="base language model (directory or Hub repository) of a delta / LoRA / "
                        "projector-only release")
    parser.add_argument("--vision-tower", help="local copy of the CLIP tower an original release names")
    parser.add_argument("--vision-tower-name", help="--to original: the CLIP tower config.json names "
                        "(mm_vision_tower), e.g. openai/clip-vit-large-patch14-336; default: the one the model was "
                        "built from")
    parser.add_argument("--conversation-format", choices=FORMATS, help="override the chat template of the release")
    parser.add_argument("--dtype", default="auto", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load .bin files that need more than plain tensors (runs pickle code: trusted files only)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the source")
    return parser


def load_source(args):
    """(model, processor or None, detected layout kind) for the source directory."""
    from .. import LlavaForConditionalGeneration, LlavaProcessor

    directory = resolve_directory(args.src, {})
    if directory is None:
        raise CheckpointError(f"{args.src} is neither a local directory nor a Hub repository that could be fetched.")
    kind = detect_layout(directory, args.base_model).kind
    options = dict(base_model=args.base_model, vision_tower=args.vision_tower, allow_pickle=args.allow_pickle,
                   conversation_format=args.conversation_format, trust_remote_code=args.trust_remote_code)
    options = {k: v for k, v in options.items() if v not in (None, False)}
    model = LlavaForConditionalGeneration.from_pretrained(args.src, dtype=DTYPES[args.dtype], **options)
    try:
        processor = LlavaProcessor.from_pretrained(args.src, **options)
    except OSError as err:  # a model saved without its processor: convert the weights alone
        print(f"note: no processor in {args.src} ({str(err).splitlines()[0]}); converting the model only.")
        processor = None
    return model, processor, kind


def human_size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        model, processor, kind = load_source(args)
        loaded = time.perf_counter()
        n_params = sum(p.numel() for p in model.parameters())
        print(f"Read {args.src} ({kind}): {n_params:,} parameters, {model.dtype}, "
              f"projector {model.config.projector_type}, {loaded - start:.1f} s")
        extra = {"vision_tower_name": args.vision_tower_name} if args.to == "original" else {}
        directory = WRITERS[args.to](model, processor, args.dst, args.max_shard_size, progress=True, **extra)
    except CheckpointError as err:
        print(f"transformers-llava convert: error: {err}", file=sys.stderr)
        return 1
    shards = sorted(directory.glob("*.safetensors"))
    size = sum(path.stat().st_size for path in shards)
    print(f"Wrote {directory} ({args.to}): {len(shards)} shard(s), {human_size(size)}, "
          f"{time.perf_counter() - loaded:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
