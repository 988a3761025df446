"""Streaming readers for image-caption files: `{"id", "image", "caption"}` per pair, one at a time.

    .jsonl   one JSON object per line; the caption / image / id field names are configurable
    .tsv     CC3M's `Train_GCC-training.tsv` layout: `caption<TAB>url`, no header. Pairs are named by their line
             number like the LLaVA release names them (`GCC_train_000000042`, image `GCC_train_000000042.jpg`).

    for pair in read_captions("cc3m.tsv"): ...
    pairs = caption_dataset("cc3m.tsv", cache_dir="work/")   # the same, as an on-disk datasets.Dataset
"""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..record_store import iter_jsonl


def read_captions(path: str | os.PathLike, caption_field: str = "caption", image_field: str = "image",
                  id_field: str = "id") -> Iterator[dict]:
    """Yield `{"id", "image", "caption"}` for every pair in `path` (.jsonl or .tsv), in file order."""
    path = Path(path)
    if path.suffix == ".tsv":
        yield from read_cc3m_tsv(path)
    elif path.suffix in (".jsonl", ".json"):
        yield from read_jsonl_captions(path, caption_field, image_field, id_field)
    else:
        raise ValueError(f"{path}: caption files are .jsonl (one object per line) or .tsv (CC3M caption<TAB>url)")


def read_cc3m_tsv(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            caption = line.rstrip("\n").split("\t", 1)[0].strip()
            if not caption:
                raise ValueError(f"{path} line {number + 1}: empty caption")
            name = f"GCC_train_{number:09d}"
            yield {"id": name, "image": f"{name}.jpg", "caption": caption}


def read_jsonl_captions(path: Path, caption_field: str, image_field: str, id_field: str) -> Iterator[dict]:
    for number, record in iter_jsonl(path):
        caption, image = record.get(caption_field), record.get(image_field)
        if not isinstance(caption, str) or not caption.strip() or not isinstance(image, str):
            raise ValueError(f"{path} line {number}: needs a non-empty string {caption_field!r} and a string "
                             f"{image_field!r}, got {caption!r:.80} and {image!r:.80}")
        identifier = record.get(id_field, Path(image).stem)
        yield {"id": str(identifier), "image": image, "caption": caption.strip()}


def caption_dataset(path: str | os.PathLike, *, caption_field: str = "caption", image_field: str = "image",
                    cache_dir: str | os.PathLike | None = None):
    """The pairs of `path` as a `datasets.Dataset` built by streaming into Arrow on disk (bounded memory). Its
    fingerprint includes the file's size and modification time, so an edited file is never served from cache."""
    from datasets import Dataset

    stat = Path(path).stat()
    fingerprint = hashlib.sha256(
        f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{caption_field}|{image_field}".encode()
    ).hexdigest()[:16]
    return Dataset.from_generator(
        read_captions, cache_dir=str(cache_dir) if cache_dir else None, fingerprint=fingerprint,
        gen_kwargs={"path": str(path), "caption_field": caption_field, "image_field": image_field},
    )
