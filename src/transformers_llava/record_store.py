"""An append-only JSONL file of results that survives being killed at any moment, for resumable runs.

Each result is one JSON line, written with a single write and flushed as soon as it is known, so a `kill -9` loses
at most the line being written. Opening the file again drops such a torn last line (a line without its newline),
so every line left is complete; a run restarted with the same arguments skips the keys already present.
An exclusive lock stops two runs from appending to the same file at once.

    with RecordStore("out/records.jsonl") as store:
        done = {record["key"] for record in store.records()}
        store.append({"key": "000000296284/conversation", ...})
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, the rest works
    fcntl = None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """`(line number, record)` for every non-blank line of a JSONL file; a line that is not JSON is an error naming
    the file and the line."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not JSON ({error}): {line[:120]!r}") from None


class RecordStore:
    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        """Open (creating) `path` for appending; `fsync=True` also forces each line to disk (power loss, not only
        process death)."""
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab+")
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise RuntimeError(f"{self.path} is locked by another running process; wait for it to finish or "
                                   f"write somewhere else") from None
        self.dropped_bytes = self._drop_torn_tail()

    def _drop_torn_tail(self) -> int:
        """Truncate a last line that lacks its newline (a write cut short); returns the bytes dropped. Only the
        last line can be torn, so the file is read backwards from its end to the last newline."""
        size = self._file.seek(0, os.SEEK_END)
        complete = size
        while complete > 0:
            start = max(0, complete - 65536)
            self._file.seek(start)
            newline = self._file.read(complete - start).rfind(b"\n")
            if newline >= 0:
                complete = start + newline + 1
                break
            complete = start
        if complete < size:
            self._file.truncate(complete)
        self._file.seek(0, os.SEEK_END)
        return size - complete

    def records(self) -> Iterator[dict]:
        """Every record in the file, in the order written; a complete line that is not JSON is an error."""
        for _, record in iter_jsonl(self.path):
            yield record

    def append(self, record: dict) -> None:
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()  # closing releases the lock

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
