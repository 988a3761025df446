"""The data formats every layer shares; this package imports nothing else of transformers_llava.

    llava_json.py     LLaVA JSON records (`{id, image?, conversations: [{from, value}]}`): read, write, build
    stage1.py         an image-caption pair -> a single-turn stage-1 instruction (Table 11)
    scienceqa.py      ScienceQA problems -> LLaVA records in the paper's prompt formats (QCM-LEPA, ...)
    instructions.py   the paper's instruction lists (Tables 11/12)

`training/` loads these records, `data_generation/` writes them and `evaluation/` asks their questions.
"""

from .instructions import load_instructions
from .llava_json import read_llava_json, to_conversations, write_llava_json
from .scienceqa import load_scienceqa, to_llava_records
from .stage1 import caption_pair, to_stage1_sample

__all__ = ["load_instructions", "read_llava_json", "write_llava_json", "to_conversations", "load_scienceqa",
           "to_llava_records", "caption_pair", "to_stage1_sample"]
