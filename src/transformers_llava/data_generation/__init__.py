"""GPT-assisted instruction data (paper section 3) and stage-1 data with CC3M concept-balanced filtering.

    symbolic.py       images as text: captions + normalised boxes (COCO annotations or caps_boxes JSONL)
    prompts.py        the released system messages and few-shot pairs -> chat messages
    parsing.py        responses -> (question, answer) turns, or a rejection with the reason
    instruct.py       the instruction-data run: build requests, query concurrently, record, export
    captions.py       streaming image-caption readers (.jsonl, CC3M .tsv)
    stage1.py         a caption file -> stage-1 LLaVA JSON (Table 11 questions)
    noun_phrases.py   noun-phrase extractors (spaCy noun chunks, or a stop-word fallback)
    cc3m_filter.py    the paper's noun-phrase-frequency filter, streaming
    np_statistics.py  before/after frequency tables and plot (Figure 7)
    cli.py            `transformers-llava generate instruct | stage1 | filter-cc3m`

The LLM backends live in `transformers_llava.chat_client`; the LLaVA JSON records, the stage-1 conversion and the
instruction lists (Tables 11/12) in `transformers_llava.formats`.
"""

from .cc3m_filter import filter_cc3m
from .instruct import generate_instructions
from .noun_phrases import SimpleNounPhrases, SpacyNounChunks, get_extractor
from .parsing import ResponseRejected, parse_response
from ..formats.instructions import load_instructions
from .prompts import DATA_TYPES, build_messages, load_prompt_set
from .stage1 import build_stage1
from .symbolic import format_context, read_caps_boxes_jsonl, read_coco

__all__ = [
    "DATA_TYPES", "ResponseRejected", "SimpleNounPhrases", "SpacyNounChunks", "build_messages", "build_stage1",
    "filter_cc3m", "format_context", "generate_instructions", "get_extractor", "load_instructions",
    "load_prompt_set", "parse_response", "read_caps_boxes_jsonl", "read_coco",
]
