"""The paper's instruction lists, bundled as `transformers_llava/data/instructions.json`.

    questions = load_instructions()["brief"]      # Table 11: stage-1 caption -> instruction
    questions = load_instructions()["detailed"]   # Table 12: the detailed-description data type
"""

import json
import os
from functools import cache
from pathlib import Path

INSTRUCTIONS_FILE = Path(__file__).resolve().parent.parent / "data" / "instructions.json"


@cache
def load_instructions(path: str | os.PathLike | None = None) -> dict[str, tuple[str, ...]]:
    """`{"brief": Table 11 questions, "detailed": Table 12 questions}`."""
    data = json.loads(Path(path or INSTRUCTIONS_FILE).read_text(encoding="utf-8"))
    return {name: tuple(data[name]) for name in ("brief", "detailed")}
