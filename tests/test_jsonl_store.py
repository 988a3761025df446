"""The resumable JSONL store every evaluation step writes: torn last lines are cut, keys are never duplicated."""

import json

import pytest

from transformers_llava.evaluation.jsonl_store import JsonlStore


def test_append_then_load_round_trip(tmp_path):
    store = JsonlStore(tmp_path / "sub" / "answers.jsonl")
    with store.appender() as append:
        append({"question_id": 0, "text": "a"})
        append({"question_id": "7", "text": "é"})
    assert JsonlStore(store.path).load() == {"0": {"question_id": 0, "text": "a"}, "7": {"question_id": "7", "text": "é"}}


def test_a_torn_last_line_is_cut_and_the_record_can_be_written_again(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"question_id": 0, "text": "a"}) + "\n" + '{"question_id": 1, "te')
    store = JsonlStore(path)
    assert list(store.load()) == ["0"]
    assert path.read_text() == json.dumps({"question_id": 0, "text": "a"}) + "\n"
    with store.appender() as append:
        append({"question_id": 1, "text": "b"})
    assert list(JsonlStore(path).load()) == ["0", "1"]


def test_a_key_is_never_written_twice(tmp_path):
    store = JsonlStore(tmp_path / "answers.jsonl")
    with store.appender() as append:
        append({"question_id": 3, "text": "a"})
    with pytest.raises(ValueError, match="question_id 3 is already recorded"):
        with JsonlStore(store.path).appender() as append:
            append({"question_id": 3, "text": "again"})
    assert len(store.path.read_text().splitlines()) == 1


def test_damage_a_kill_cannot_cause_is_reported_with_its_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 0}\nnot json\n{"question_id": 2}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl line 2 is not JSON"):
        JsonlStore(path).load()
    path.write_text('{"question_id": 0}\n{"question_id": 0}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:2: question_id 0 appears a second time"):
        JsonlStore(path).load()
