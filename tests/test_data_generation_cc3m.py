"""Stage-1 data: CC3M concept-balanced filtering (checked against an in-memory reading of the paper's rule), its
before/after statistics, the noun-phrase extractors, caption readers, and caption -> instruction conversion.

    python -m pytest tests/test_data_generation_cc3m.py -q
"""

import json
import logging
import sys
from collections import Counter, defaultdict

import pytest

from transformers_llava.cli import main as transformers_llava_main
from transformers_llava.data_generation import noun_phrases
from transformers_llava.data_generation.captions import read_captions
from transformers_llava.data_generation.cc3m_filter import filter_cc3m, phrase_key
from transformers_llava.data_generation.cli import main
from transformers_llava.data_generation.noun_phrases import SimpleNounPhrases, find_english_pipeline, get_extractor
from transformers_llava.formats.instructions import load_instructions
from transformers_llava.data_generation.stage1 import build_stage1


def synthetic_captions() -> list[str]:
    """Captions with known noun-phrase frequencies (the phrases SimpleNounPhrases finds are in the comments)."""
    captions = ["an okapi in the mud"] * 2  # okapi 2, mud 2: rare, these captions must go
    captions += ["a zebra near the giraffe"] * 3  # zebra 3 (kept: frequency 3 is not < 3)
    captions += ["a giraffe"] * 4  # giraffe 7 in all
    captions += [f"a camel {n}" for n in range(100)]  # camel 100 (numbers are no phrase): every one kept
    captions += ["a dog on the grass"] * 180 + ["a dog with a cat"] * 70  # dog 250, grass 180, cat 70
    captions += ["an old lighthouse"] * 1  # rare and alone: must go
    return captions


def write_jsonl(path, captions: list[str]) -> None:
    with open(path, "w") as out:
        for n, caption in enumerate(captions):
            out.write(json.dumps({"id": f"c{n:04d}", "image": f"c{n:04d}.jpg", "caption": caption}) + "\n")


def paper_selection(captions: list[str], seed: int, min_frequency: int = 3, per_phrase: int = 100) -> set[str]:
    """The paper's rule, in memory: from the least frequent phrase up, add its captions (a random `per_phrase`
    when it has more)."""
    ids = [f"c{n:04d}" for n in range(len(captions))]
    holders = defaultdict(list)
    for caption_id, phrases in zip(ids, SimpleNounPhrases()(captions)):
        for phrase in phrases:
            holders[phrase].append(caption_id)
    pool = set()
    for phrase in sorted(holders, key=lambda p: (len(holders[p]), p)):
        if len(holders[phrase]) < min_frequency:
            continue
        ranked = sorted(holders[phrase], key=lambda caption_id: phrase_key(seed, phrase, caption_id))
        pool.update(ranked[:per_phrase])
    return pool


def run_filter(tmp_path, name="out", seed=0, **kwargs):
    source = tmp_path / "captions.jsonl"
    if not source.exists():
        write_jsonl(source, synthetic_captions())
    report = filter_cc3m(source, tmp_path / name, SimpleNounPhrases(), seed=seed, progress=False, **kwargs)
    kept = [json.loads(line) for line in (tmp_path / name / "cc3m_filtered.jsonl").read_text().splitlines()]
    return report, kept


def test_filter_follows_the_paper(tmp_path):
    report, kept = run_filter(tmp_path)
    kept_ids = [sample["id"] for sample in kept]
    assert set(kept_ids) == paper_selection(synthetic_captions(), seed=0)
    assert kept_ids == sorted(kept_ids)  # input order
    assert set(kept[0]) == {"id", "image", "caption"}
    texts = Counter(sample["caption"] for sample in kept)
    assert texts["an okapi in the mud"] == 0 and texts["an old lighthouse"] == 0  # only rare phrases
    assert texts["a zebra near the giraffe"] == 3 and texts["a giraffe"] == 4
    assert sum(caption.startswith("a camel") for caption in texts.elements()) == 100
    assert texts["a dog with a cat"] == 70  # cat (70 captions) brings all of them
    # dog and grass (250 / 180 captions) each contribute a random 100; their union is what is left
    assert 100 <= texts["a dog on the grass"] <= 180 and report.after["dog"] == 70 + texts["a dog on the grass"]
    assert report.captions_before == 360 and report.captions_after == len(kept)
    assert report.before["dog"] == 250 and report.before["okapi"] == 2 and "okapi" not in report.after


def test_filter_is_seeded_and_independent_of_batching(tmp_path):
    _, first = run_filter(tmp_path, "a", seed=0)
    _, again = run_filter(tmp_path, "b", seed=0, batch_size=7)
    _, other = run_filter(tmp_path, "c", seed=1)
    assert first == again
    assert {s["id"] for s in other} == paper_selection(synthetic_captions(), seed=1) != {s["id"] for s in first}


def test_statistics_table_csv_and_plot(tmp_path):
    report, kept = run_filter(tmp_path)
    rows = {row.split(",")[0]: row.split(",")[1:] for row in (tmp_path / "out" / "np_frequencies.csv")
            .read_text().splitlines()}
    assert rows["noun_phrase"] == ["before", "after"]
    assert rows["dog"] == ["250", str(report.after["dog"])] and rows["okapi"] == ["2", "0"]
    markdown = (tmp_path / "out" / "np_statistics.md").read_text()
    assert f"| captions | 360 | {len(kept)} |" in markdown
    assert f"| unique noun phrases | {len(report.before)} | {len(report.after)} |" in markdown
    assert "| noun phrases with frequency > 100 | 2 |" in markdown  # dog and grass; camel (100) is not
    assert "| 1 | dog (250) |" in markdown
    if "plot (PNG)" in report.files:
        assert report.files["plot (PNG)"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in report.messages[0]


def test_plot_is_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report, _ = run_filter(tmp_path)
    assert "plot (PNG)" not in report.files and not (tmp_path / "out" / "np_frequencies.png").exists()
    assert report.messages == ["matplotlib is not installed, so np_frequencies.png was not drawn (pip install "
                               "'transformers-llava[plot]'); the tables have the same numbers"]
    assert (tmp_path / "out" / "np_statistics.md").exists()


def test_simple_extractor_normalises_phrases():
    assert SimpleNounPhrases()(["A young man in a red shirt rides a bicycle.", "The dog and its owner, at sunset!"]
                               ) == [["young man", "red shirt", "bicycle"], ["dog", "owner", "sunset"]]


def test_spacy_noun_chunks_when_an_english_pipeline_is_installed():
    if find_english_pipeline() is None:
        pytest.skip("no spaCy English pipeline installed (pip install spacy + an en_core_web_* package)")
    extractor = get_extractor("auto")
    assert extractor.name.startswith("spacy:")
    assert extractor(["A young man in a red shirt rides a bicycle down the busy city street.", "It is his dog."]) == [
        ["young man", "red shirt", "bicycle", "busy city street"], ["dog"]]


def test_auto_falls_back_to_the_simple_extractor_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(noun_phrases, "find_english_pipeline", lambda: None)
    with caplog.at_level(logging.WARNING):
        assert isinstance(get_extractor("auto"), SimpleNounPhrases)
    assert "no spaCy English pipeline installed" in caplog.text
    with pytest.raises(ValueError, match="unknown noun-phrase extractor 'nltk'"):
        get_extractor("nltk")


def test_cc3m_tsv_pairs_are_named_like_the_release(tmp_path):
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_text("actor attends the premiere\thttp://x/1.jpg\nsunset over the sea\thttp://x/2.jpg\n")
    assert list(read_captions(path)) == [
        {"id": "GCC_train_000000000", "image": "GCC_train_000000000.jpg", "caption": "actor attends the premiere"},
        {"id": "GCC_train_000000001", "image": "GCC_train_000000001.jpg", "caption": "sunset over the sea"}]
    path.write_text("a caption\turl\n\turl\n")
    with pytest.raises(ValueError, match="Train_GCC-training.tsv line 2: empty caption"):
        list(read_captions(path))


def test_stage1_turns_captions_into_brief_description_instructions(tmp_path):
    write_jsonl(tmp_path / "captions.jsonl", [f"a caption number {n}" for n in range(40)])
    assert build_stage1(tmp_path / "captions.jsonl", tmp_path / "s1.json", seed=0, cache_dir=tmp_path) == 40
    samples = json.loads((tmp_path / "s1.json").read_text())
    brief = load_instructions()["brief"]
    for n, sample in enumerate(samples):
        human, gpt = sample["conversations"]
        assert sample["id"] == f"c{n:04d}" and sample["image"] == f"c{n:04d}.jpg"
        assert human["from"] == "human" and human["value"].replace("<image>", "").strip() in brief
        assert human["value"].count("<image>") == 1 and gpt == {"from": "gpt", "value": f"a caption number {n}"}
    assert len({s["conversations"][0]["value"] for s in samples}) > 11  # questions and both <image> placements
    build_stage1(tmp_path / "captions.jsonl", tmp_path / "again.json", seed=0, cache_dir=tmp_path)
    build_stage1(tmp_path / "captions.jsonl", tmp_path / "other.json", seed=1, cache_dir=tmp_path)
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "s1.json").read_bytes()
    assert (tmp_path / "other.json").read_bytes() != (tmp_path / "s1.json").read_bytes()


def test_cli_filters_then_builds_stage1(tmp_path, capsys):
    write_jsonl(tmp_path / "captions.jsonl", synthetic_captions())
    out = tmp_path / "cc3m"
    assert transformers_llava_main(["generate", "filter-cc3m", "--captions", str(tmp_path / "captions.jsonl"),
                                    "--out", str(out), "--extractor", "simple", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    kept = len((out / "cc3m_filtered.jsonl").read_text().splitlines())
    assert f"CC3M filtering (simple noun phrases): kept {kept:,} of 360 captions" in printed
    assert "| captions | 360 |" in printed and "frequency table (CSV)" in printed
    assert main(["stage1", "--captions", str(out / "cc3m_filtered.jsonl"), "--out", str(out / "stage1.json"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"stage-1 instructions -> {out / 'stage1.json'}: {kept} samples" in capsys.readouterr().out
    assert len(json.loads((out / "stage1.json").read_text())) == kept
