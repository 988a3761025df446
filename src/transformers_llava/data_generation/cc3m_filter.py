"""CC3M concept-balanced filtering (paper appendix), streaming over an on-disk `datasets.Dataset`.

The paper: extract the noun phrases of every caption; drop noun phrases with frequency < 3; starting from the
least frequent noun phrase, add its captions to the pool; a noun phrase with more than 100 captions contributes a
random 100 of them. A noun phrase's frequency is the number of captions that contain it.

The pool is the union of what each noun phrase contributes, so the order the noun phrases are visited in changes
nothing once each one's random 100 is fixed. We fix them order-independently: a frequent noun phrase contributes the
100 of its captions with the smallest hash of (seed, phrase, caption id) — a uniform random sample that depends only
on the seed and the data, not on batching or process count. So the whole filter is three streaming passes:
count frequencies; keep each frequent phrase's 100 smallest keys (its threshold); keep the captions that hold a
phrase of frequency 3..100 or fall under a frequent phrase's threshold. Memory grows with the number of distinct
noun phrases (plus 100 keys per frequent one), never with the number of captions, which stay in Arrow files.

    report = filter_cc3m("Train_GCC-training.tsv", "cc3m_work/", get_extractor("auto"))
"""

import hashlib
import heapq
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .captions import caption_dataset
from .noun_phrases import NounPhraseExtractor
from .np_statistics import write_statistics
from .progress import datasets_progress

FILTERED_FILE = "cc3m_filtered.jsonl"


def phrase_key(seed: int, phrase: str, caption_id: str) -> int:
    """A 64-bit pseudo-random rank of a caption within a phrase's captions, fixed by the seed."""
    digest = hashlib.blake2b(f"{seed}\x00{phrase}\x00{caption_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def add_noun_phrases(batch: dict, extractor: NounPhraseExtractor) -> dict:
    """Batched map: captions -> their distinct noun phrases."""
    return {"noun_phrases": extractor(batch["caption"])}


def count_phrases(dataset, desc: str, progress: bool, batch_size: int = 10_000) -> Counter:
    """Noun phrase -> number of captions containing it."""
    counts: Counter = Counter()
    with tqdm(total=len(dataset), desc=desc, disable=not progress, unit="caption") as bar:
        for batch in dataset.iter(batch_size=batch_size):
            for phrases in batch["noun_phrases"]:
                counts.update(phrases)
            bar.update(len(batch["noun_phrases"]))
    return counts


def sample_thresholds(dataset, frequent: set[str], per_phrase: int, seed: int, progress: bool,
                      batch_size: int = 10_000) -> dict[str, int]:
    """For each frequent phrase, the largest key among its `per_phrase` smallest caption keys."""
    smallest: dict[str, list[int]] = {phrase: [] for phrase in frequent}  # max-heaps (negated keys)
    with tqdm(total=len(dataset), desc="sampling frequent phrases", disable=not progress, unit="caption") as bar:
        for batch in dataset.iter(batch_size=batch_size):
            for caption_id, phrases in zip(batch["id"], batch["noun_phrases"]):
                for phrase in phrases:
                    heap = smallest.get(phrase)
                    if heap is None:
                        continue
                    key = -phrase_key(seed, phrase, caption_id)
                    if len(heap) < per_phrase:
                        heapq.heappush(heap, key)
                    elif key > heap[0]:
                        heapq.heapreplace(heap, key)
            bar.update(len(batch["id"]))
    return {phrase: -heap[0] for phrase, heap in smallest.items()}


def is_selected(batch: dict, frequencies: dict[str, int], thresholds: dict[str, int], seed: int) -> list[bool]:
    """Batched filter: does a kept phrase bring this caption into the pool?"""
    keep = []
    for caption_id, phrases in zip(batch["id"], batch["noun_phrases"]):
        keep.append(any(
            phrase in frequencies and (phrase not in thresholds
                                       or phrase_key(seed, phrase, caption_id) <= thresholds[phrase])
            for phrase in phrases
        ))
    return keep


@dataclass
class FilterReport:
    captions_before: int = 0
    captions_after: int = 0
    before: Counter = field(default_factory=Counter)
    after: Counter = field(default_factory=Counter)
    files: dict = field(default_factory=dict)  # what -> path written
    messages: list = field(default_factory=list)  # e.g. why the plot was skipped


def extract_noun_phrases(captions_path, extractor: NounPhraseExtractor, cache_dir: Path, *, caption_field: str,
                         image_field: str, num_proc: int | None, batch_size: int):
    """The caption file as a Dataset with a `noun_phrases` column, cached on disk per (file, extractor)."""
    pairs = caption_dataset(captions_path, caption_field=caption_field, image_field=image_field, cache_dir=cache_dir)
    extractor_name = getattr(extractor, "name", type(extractor).__name__)
    return pairs.map(add_noun_phrases, batched=True, batch_size=batch_size, num_proc=num_proc,
                     fn_kwargs={"extractor": extractor}, desc="noun phrases",
                     new_fingerprint=hashlib.sha256(f"{pairs._fingerprint}|{extractor_name}".encode()).hexdigest()[:16])


def select_captions(with_phrases, report: "FilterReport", *, min_frequency: int, max_per_phrase: int, seed: int,
                    num_proc: int | None, batch_size: int, progress: bool):
    """The paper's selection over a Dataset with `noun_phrases`; fills the report's before/after counts."""
    report.captions_before = len(with_phrases)
    report.before = count_phrases(with_phrases, "counting noun phrases", progress)
    frequencies = {phrase: n for phrase, n in report.before.items() if n >= min_frequency}
    frequent = {phrase for phrase, n in frequencies.items() if n > max_per_phrase}
    thresholds = sample_thresholds(with_phrases, frequent, max_per_phrase, seed, progress)
    fingerprint = f"{with_phrases._fingerprint}|{min_frequency}|{max_per_phrase}|{seed}"
    selected = with_phrases.filter(
        is_selected, batched=True, batch_size=batch_size, num_proc=num_proc, desc="selecting captions",
        fn_kwargs={"frequencies": frequencies, "thresholds": thresholds, "seed": seed},
        new_fingerprint=hashlib.sha256(fingerprint.encode()).hexdigest()[:16],
    )
    report.captions_after = len(selected)
    report.after = count_phrases(selected, "counting kept noun phrases", progress)
    return selected


def filter_cc3m(captions_path: str | os.PathLike, out_dir: str | os.PathLike, extractor: NounPhraseExtractor, *,
                min_frequency: int = 3, max_per_phrase: int = 100, seed: int = 0, caption_field: str = "caption",
                image_field: str = "image", num_proc: int | None = None, batch_size: int = 1000,
                plot: bool = True, progress: bool = True) -> FilterReport:
    """Filter the caption file into `out_dir/cc3m_filtered.jsonl` (input order) and write the before/after
    noun-phrase statistics (CSV, Markdown, PNG) beside it. Noun phrases are cached in `out_dir/cache/`, so a rerun
    with the same file and extractor skips the extraction."""
    if min_frequency < 1 or max_per_phrase < 1:
        raise ValueError(f"min_frequency and max_per_phrase must be >= 1, got {min_frequency}, {max_per_phrase}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = FilterReport()
    with datasets_progress(enabled=progress):
        with_phrases = extract_noun_phrases(captions_path, extractor, out_dir / "cache", caption_field=caption_field,
                                            image_field=image_field, num_proc=num_proc, batch_size=batch_size)
        selected = select_captions(with_phrases, report, min_frequency=min_frequency, max_per_phrase=max_per_phrase,
                                   seed=seed, num_proc=num_proc, batch_size=batch_size, progress=progress)
        filtered_path = out_dir / FILTERED_FILE
        temporary = filtered_path.with_name(filtered_path.name + ".tmp")
        selected.remove_columns("noun_phrases").to_json(temporary, lines=True, force_ascii=False)
        os.replace(temporary, filtered_path)
    report.files["filtered captions"] = filtered_path
    files, messages = write_statistics(report.before, report.after, report.captions_before, report.captions_after,
                                       out_dir, min_frequency=min_frequency, max_per_phrase=max_per_phrase,
                                       plot=plot)
    report.files.update(files)
    report.messages.extend(messages)
    return report
