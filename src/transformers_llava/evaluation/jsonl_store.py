"""Records keyed by one field, on top of the project's append-only JSONL (`record_store.RecordStore`): what every
evaluation step writes and resumes from.

    store = JsonlStore("answers.jsonl", key="question_id")
    done = store.load()                      # {str(key): record}; a line torn by a kill is cut off first
    todo = [q for q in questions if str(q["question_id"]) not in done]
    with store.appender() as append:
        for record in work(todo):
            append(record)                   # one whole line per record, flushed and fsynced

A process killed mid-write can only leave its last line incomplete; it is cut off when the file is opened, so the
interrupted record is simply produced again. Keys already present are refused by the appender, so a re-run never
duplicates a record. A key that appears twice is not something a kill can cause, and is reported with its line
number instead of being guessed around.
"""

import contextlib
import os
from pathlib import Path

from ..record_store import RecordStore


class JsonlStore:
    def __init__(self, path: str | os.PathLike, key: str = "question_id"):
        self.path, self.key = Path(path), key

    def load(self) -> dict[str, dict]:
        """All complete records by `str(record[key])`, after cutting off a torn last line."""
        if not self.path.exists():
            return {}
        with RecordStore(self.path) as store:
            return self._read(store)

    def _read(self, store: RecordStore) -> dict[str, dict]:
        records = {}
        for number, record in enumerate(store.records(), 1):
            if self.key not in record:
                raise KeyError(f"{self.path}:{number}: record has no {self.key!r} field")
            key = str(record[self.key])
            if key in records:
                raise ValueError(f"{self.path}:{number}: {self.key} {key} appears a second time")
            records[key] = record
        return records

    @contextlib.contextmanager
    def appender(self):
        """A function that appends one record as one durable line; refuses a key already in the file (read under
        the same lock the appends hold, so another run cannot add a key in between)."""
        with RecordStore(self.path, fsync=True) as store:
            keys = set(self._read(store))

            def append(record: dict) -> None:
                key = str(record[self.key])
                if key in keys:
                    raise ValueError(f"{self.path}: {self.key} {key} is already recorded; records are never duplicated")
                store.append(record)
                keys.add(key)

            yield append
