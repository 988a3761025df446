"""Parse GPT responses in the released formats; a response that does not parse is rejected with the reason.

    conversation, complex_reasoning:  Question:\\n<q>\\n===\\nAnswer:\\n<a>\\n===\\n...  (last `===` optional)
    detail_description:               one or more paragraphs of description

    parse_response("conversation", text)  -> [(question, answer), ...]
    parse_response("detail_description", text)  -> [(None, description)]   (the question is sampled separately)
    ResponseRejected.reason says why not, e.g. "block 3 ('Sure! Here ...') is neither 'Question:' nor 'Answer:'".
"""

import re

SEPARATOR = re.compile(r"^[ \t]*===[ \t]*$", re.MULTILINE)
MARKER = re.compile(r"^\s*(question|answer)\s*:\s*", re.IGNORECASE)
SINGLE_PAIR_TYPES = {"complex_reasoning"}  # the release's complex-reasoning samples are one question, one answer


class ResponseRejected(ValueError):
    """A response that is not in its type's format; `reason` is a short human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def excerpt(text: str, length: int = 40) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[:length] + "..."


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """`Question:/Answer:` blocks separated by `===` lines -> [(question, answer), ...] in order."""
    blocks = [block.strip() for block in SEPARATOR.split(text.replace("\r\n", "\n"))]
    blocks = [block for block in blocks if block]
    if not blocks:
        raise ResponseRejected("empty response")
    pairs, question = [], None
    for number, block in enumerate(blocks, start=1):
        marker = MARKER.match(block)
        if marker is None:
            raise ResponseRejected(f"block {number} ({excerpt(block)!r}) is neither 'Question:' nor 'Answer:'")
        kind, body = marker.group(1).lower(), block[marker.end():].strip()
        if not body:
            raise ResponseRejected(f"block {number} is an empty {kind}")
        if kind == "question":
            if question is not None:
                raise ResponseRejected(f"block {number}: question {len(pairs) + 2} follows a question with no answer")
            question = body
        else:
            if question is None:
                raise ResponseRejected(f"block {number}: an answer with no question before it")
            pairs.append((question, body))
            question = None
    if question is not None:
        raise ResponseRejected(f"the last question ({excerpt(question)!r}) has no answer")
    return pairs


def parse_description(text: str) -> str:
    """A detailed-description response: its paragraphs, stripped; rejected when empty or in the Q/A format."""
    description = text.replace("\r\n", "\n").strip()
    if not description:
        raise ResponseRejected("empty response")
    if SEPARATOR.search(description) or MARKER.match(description):
        raise ResponseRejected("a detailed description came back in the Question/Answer format")
    return description


def parse_response(data_type: str, text: str, finish_reason: str | None = None) -> list[tuple[str | None, str]]:
    """The (question, answer) turns of one response of `data_type`; ResponseRejected when it does not parse."""
    if finish_reason == "length":
        raise ResponseRejected("cut off at the token limit (finish_reason=length)")
    if data_type == "detail_description":
        return [(None, parse_description(text))]
    pairs = parse_qa_pairs(text)
    if data_type in SINGLE_PAIR_TYPES and len(pairs) != 1:
        raise ResponseRejected(f"{data_type} expects 1 question-answer pair, got {len(pairs)}")
    return pairs
