"""Instruction-data filters: checks on whole chat/instruction records (they need the turns, not one text).

Each filter has ``check_record(data) -> "instruct:<rule>" | None`` and ignores records that are not
chat/instruction records (None). The prompt of an assistant turn is the user turn just before it;
the rules:

- ``instruct:empty_response``: an assistant turn that is empty or whitespace only.
- ``instruct:repeats_prompt``: an assistant turn that repeats its prompt: equal after normalization
  (case folded, punctuation dropped, whitespace collapsed), or word-sequence similarity at least
  ``repeat_overlap`` (difflib ratio on the word lists: 2 * matched words / total words; order
  matters, so "What is X?" -> "X is Y." is not a repeat). A response that mostly copies an Alpaca
  ``input`` (e.g. a small grammar fix of a long input) can be flagged: raise the threshold or
  switch the rule off for such data.
- ``instruct:too_long_chars`` / ``instruct:too_long_words``: the rendered record (``record_text``)
  exceeds ``max_chars`` / ``max_words`` (off by default).
- ``instruct:duplicate_prompt``: the record's prompt (system and user turns, normalized) was already
  seen in this stream; the first one is kept. Stateful: use one instance per pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from typing import Any, Iterable, Optional

from fastlm.data import chat

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Case-folded words joined by single spaces (punctuation and spacing ignored).

    >>> normalize("  Hello,   WORLD! ")
    'hello world'
    """
    return " ".join(_WORD.findall(text.casefold()))


def _parse(data: Any) -> Optional[chat.Chat]:
    if chat.detect_format(data) is None:
        return None
    try:
        return chat.parse(data)
    except chat.ConversionError:
        return None  # malformed chats are the reader's to report


def _pairs(c: chat.Chat) -> list[tuple[str, str]]:
    """(prompt, response) for every assistant turn (prompt "" when no user turn precedes it)."""
    out = []
    for i, t in enumerate(c.turns):
        if t.role == "assistant":
            prev = c.turns[i - 1] if i > 0 else None
            out.append((prev.content if prev is not None and prev.role == "user" else "", t.content))
    return out


class InstructFilter:
    """Base: subclasses set ``name`` and implement ``check_record``."""

    name = "instruct"

    def check_record(self, data: Any) -> Optional[str]:
        """The rejecting reason ("instruct:<rule>") or None to keep the record."""
        raise NotImplementedError

    def check_records(self, records: Iterable[Any]) -> list[Optional[str]]:
        return [self.check_record(d) for d in records]


class EmptyResponse(InstructFilter):
    """Reject a record with an empty or whitespace-only assistant turn.

    >>> EmptyResponse().check_record({"instruction": "Hi", "output": "  "})
    'instruct:empty_response'
    """

    def check_record(self, data: Any) -> Optional[str]:
        c = _parse(data)
        if c is not None and any(t.role == "assistant" and not t.content.strip() for t in c.turns):
            return "instruct:empty_response"
        return None


class RepeatsPrompt(InstructFilter):
    """Reject a record where an assistant turn repeats its prompt (exactly or nearly).

    >>> RepeatsPrompt().check_record({"instruction": "Name a colour.", "output": "name a colour"})
    'instruct:repeats_prompt'
    """

    def __init__(self, *, overlap: float = 0.8):
        if not 0.0 < overlap <= 1.0:
            raise ValueError(f"overlap must be in (0, 1], got {overlap}")
        self.overlap = overlap

    def repeats(self, prompt: str, response: str) -> bool:
        p, r = normalize(prompt).split(), normalize(response).split()
        if not p or not r:
            return False
        if p == r:
            return True
        # the bound is computed as difflib computes ratio(), so a ratio exactly at the threshold is not skipped
        if 2.0 * min(len(p), len(r)) / (len(p) + len(r)) < self.overlap:
            return False  # the ratio below cannot reach the threshold: skip the O(n*m) matcher
        return difflib.SequenceMatcher(None, p, r, autojunk=False).ratio() >= self.overlap

    def check_record(self, data: Any) -> Optional[str]:
        c = _parse(data)
        if c is not None and any(self.repeats(p, r) for p, r in _pairs(c)):
            return "instruct:repeats_prompt"
        return None


class TooLong(InstructFilter):
    """Reject a record whose rendered text has more than ``max_chars`` characters or ``max_words`` words.

    >>> TooLong(max_words=3).check_record({"prompt": "a b", "completion": "c d"})
    'instruct:too_long_words'
    """

    def __init__(self, *, max_chars: Optional[int] = None, max_words: Optional[int] = None):
        for label, value in (("max_chars", max_chars), ("max_words", max_words)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1 or None, got {value}")
        self.max_chars, self.max_words = max_chars, max_words

    def check_record(self, data: Any) -> Optional[str]:
        c = _parse(data)
        if c is None:
            return None
        text = "\n\n".join(t.content for t in c.turns)  # as chat.record_text renders a conversation
        if self.max_chars is not None and len(text) > self.max_chars:
            return "instruct:too_long_chars"
        if self.max_words is not None and len(text.split()) > self.max_words:
            return "instruct:too_long_words"
        return None


class DuplicatePrompt(InstructFilter):
    """Reject a record whose prompt (system + user turns, normalized) was seen before; keeps the first.

    >>> f = DuplicatePrompt()
    >>> [f.check_record({"instruction": q, "output": "x"}) for q in ("Hi!", "hi", "Bye")]
    [None, 'instruct:duplicate_prompt', None]
    """

    def __init__(self) -> None:
        self.seen: set[bytes] = set()  # 16-byte digests, not the prompts themselves

    def check_record(self, data: Any) -> Optional[str]:
        c = _parse(data)
        if c is None:
            return None
        prompt = "\n".join(f"{t.role}:{normalize(t.content)}" for t in c.turns if t.role != "assistant")
        key = hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()
        if key in self.seen:
            return "instruct:duplicate_prompt"
        self.seen.add(key)
        return None


@dataclasses.dataclass
class InstructConfig:
    empty_response: bool = True  # an empty answer teaches nothing
    repeats_prompt: bool = True  # echoing the prompt is a common scraping/generation failure
    repeat_overlap: float = 0.8  # near-verbatim echo (e.g. one word of ten dropped), not a rephrased answer
    max_chars: Optional[int] = None  # off: the right limit depends on the model's context length
    max_words: Optional[int] = None  # off, for the same reason
    duplicate_prompts: bool = True  # many datasets repeat the same prompt; keep the first answer


def build_instruct_filters(config: InstructConfig | None = None) -> list[InstructFilter]:
    """The filters a config enables, cheapest first (the duplicate check last, so it only sees kept records).

    >>> [type(f).__name__ for f in build_instruct_filters()]
    ['EmptyResponse', 'RepeatsPrompt', 'DuplicatePrompt']
    """
    config = config or InstructConfig()
    filters: list[InstructFilter] = []
    if config.empty_response:
        filters.append(EmptyResponse())
    if config.repeats_prompt:
        filters.append(RepeatsPrompt(overlap=config.repeat_overlap))
    if config.max_chars is not None or config.max_words is not None:
        filters.append(TooLong(max_chars=config.max_chars, max_words=config.max_words))
    if config.duplicate_prompts:
        filters.append(DuplicatePrompt())
    return filters


def check_instruct(data: Any, filters: list[InstructFilter]) -> Optional[str]:
    """The first rejecting reason among ``filters`` (in order), or None.

    >>> check_instruct({"instruction": "Hi", "output": ""}, build_instruct_filters())
    'instruct:empty_response'
    """
    for f in filters:
        reason = f.check_record(data)
        if reason is not None:
            return reason
    return None
