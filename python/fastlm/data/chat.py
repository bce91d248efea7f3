"""Instruction and chat record formats: detect, parse into one internal form, convert between them.

Formats recognised (first match wins, in this order):

- ``messages``: OpenAI style, ``{"messages": [{"role": ..., "content": ...}, ...]}``; ``content``
  may also be a list of ``{"type": "text", "text": ...}`` parts.
- ``sharegpt``: Vicuna/ShareGPT, ``{"conversations" | "conversation": [...]}`` whose items use
  ``from``/``value`` or ``role``/``content``.
- ``alpaca``: ``{"instruction", "input" (optional), "output"}``, optional ``system``.
- ``prompt_completion``: ``{"prompt", "completion"}``.

Roles map to system/user/assistant: system; human, user, prompter -> user; gpt, assistant, chatgpt,
bing, bard, bot, model, gpt4 -> assistant. Any other role (tool, function, ...) is reported as
``unknown_role`` rather than guessed.

Conversion layouts:

- to ``alpaca``: one record per assistant turn. ``instruction`` is the user turn just before it,
  ``input`` is every earlier turn (system included) rendered as ``"System: ...\\n\\nUser: ...\\n\\n
  Assistant: ..."`` (empty when there are none), ``output`` is the assistant turn. An assistant turn
  marked ``"weight": 0`` (not trained on, see `untrained`) gets no record of its own: it stays in the
  later records' ``input``, as SFT keeps it in context without training on it. A chat whose last
  user turn has no answer, or an assistant turn with no user turn before it, raises ConversionError
  instead of losing text. An Alpaca record's user turn is ``instruction + "\\n\\n" + input``, so
  alpaca -> messages -> alpaca moves ``input`` into ``instruction``; alpaca -> alpaca is exact. Alpaca has
  no per-turn fields, so a turn's extra keys (``name``, ``weight``...) are not in the output:
  `convert_records` counts each such record (``turn_keys_dropped``, naming the keys) in its ``dropped`` log.
- to ``messages``: ``{"messages": [{"role", "content"}, ...]}``; to ``sharegpt``:
  ``{"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}``. Extra keys of each turn
  (``name``, ``weight``...) are kept on that turn; one that would overwrite the turn's role or content
  key (a ShareGPT turn that also has ``role``) raises ConversionError("field_conflict").

Every other field of the record (ids, metadata, ``text``) is copied into every output record; an
output key that would overwrite one raises ConversionError("field_conflict"). A ``system`` field of a
non-Alpaca record (ShareGPT's top-level system prompt) becomes the Alpaca record's system prompt; one that
is not a string raises ConversionError("wrong_type").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional

from fastlm.data.records import ErrorLog, Record

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
TARGETS = ("alpaca", "messages", "sharegpt")
ROLE_ALIASES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "gpt4": "assistant",
}
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


class ConversionError(ValueError):
    """A chat/instruction record that cannot be parsed or converted; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclasses.dataclass
class Turn:
    role: str  # "system", "user" or "assistant"
    content: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # other keys of the turn object


@dataclasses.dataclass
class Chat:
    """The internal form of every chat/instruction record."""

    turns: list[Turn]
    fields: dict[str, Any]  # every field of the record not consumed by the format, in order
    fmt: str  # the format it was parsed from
    alpaca: Optional[dict[str, str]] = None  # original instruction/input/output when fmt == "alpaca"


def detect_format(data: Any) -> Optional[str]:
    """The chat format of a record, or None when it is not a chat/instruction record.

    >>> detect_format({"instruction": "Say hi", "output": "hi"})
    'alpaca'
    """
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("messages"), list):
        return "messages"
    if isinstance(data.get("conversations"), list) or isinstance(data.get("conversation"), list):
        return "sharegpt"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if "prompt" in data and "completion" in data:
        return "prompt_completion"
    return None


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for part in value:
            if _is_text_part(part):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConversionError("non_text_content", f"{where}: content part of type {kind!r}")
        return "".join(parts)
    raise ConversionError("wrong_type", f"{where}: content is {type(value).__name__}, expected a string")


def _parse_turns(items: list, key: str) -> list[Turn]:
    turns = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConversionError("wrong_type", f"{where} is {type(item).__name__}, expected an object")
        if "from" in item or "value" in item:
            role_key, content_key = "from", "value"
        else:
            role_key, content_key = "role", "content"
        if role_key not in item or content_key not in item:
            raise ConversionError("missing_field", f"{where} has no {role_key!r}/{content_key!r}")
        raw_role = item[role_key]
        role = ROLE_ALIASES.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise ConversionError("unknown_role", f"{where}: role {raw_role!r}")
        extra = {k: v for k, v in item.items() if k not in (role_key, content_key)}
        turns.append(Turn(role, _content(item[content_key], where), extra))
    if not turns:
        raise ConversionError("empty_conversation", f"{key} has no turns")
    return turns


def _str_field(data: dict, key: str, *, optional: bool = False) -> str:
    value = data.get(key)
    if value is None and (optional or key not in data):
        if optional:
            return ""
        raise ConversionError("missing_field", f"no {key!r} field")
    if not isinstance(value, str):
        raise ConversionError("wrong_type", f"{key!r} is {type(value).__name__}, expected a string")
    return value


def parse(data: Any) -> Chat:
    """Parse a chat/instruction record into turns plus its other fields; raises ConversionError.

    >>> parse({"id": 7, "prompt": "2+2?", "completion": "4"}).turns[1].content
    '4'
    """
    fmt = detect_format(data)
    if fmt is None:
        raise ConversionError("not_chat", "no messages/conversations/instruction+output/prompt+completion fields")
    if fmt == "messages":
        turns, consumed = _parse_turns(data["messages"], "messages"), {"messages"}
    elif fmt == "sharegpt":
        key = "conversations" if isinstance(data.get("conversations"), list) else "conversation"
        turns, consumed = _parse_turns(data[key], key), {key}
    elif fmt == "alpaca":
        instruction, inp = _str_field(data, "instruction"), _str_field(data, "input", optional=True)
        output, system = _str_field(data, "output"), _str_field(data, "system", optional=True)
        turns = [Turn("system", system)] if system else []
        turns.append(Turn("user", instruction + ("\n\n" + inp if inp else "")))
        turns.append(Turn("assistant", output))
        consumed = {"instruction", "input", "output", "system"}
        fields = {k: v for k, v in data.items() if k not in consumed}
        alpaca = {"instruction": instruction, "input": inp, "output": output}
        if system:
            alpaca["system"] = system
        return Chat(turns, fields, fmt, alpaca)
    else:
        turns = [Turn("user", _str_field(data, "prompt")), Turn("assistant", _str_field(data, "completion"))]
        consumed = {"prompt", "completion"}
    return Chat(turns, {k: v for k, v in data.items() if k not in consumed}, fmt)


def render_turns(turns: list[Turn]) -> str:
    """Turns as a transcript: ``"User: ...\\n\\nAssistant: ..."`` (the Alpaca ``input`` context layout)."""
    return "\n\n".join(f"{ROLE_LABELS[t.role]}: {t.content}" for t in turns)


def _with_fields(out: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    clash = sorted(set(out) & set(fields))
    if clash:
        raise ConversionError("field_conflict", f"record field(s) {clash} collide with the output format's keys")
    return {**fields, **out}


def untrained(turn: Turn) -> bool:
    """A turn marked not to be trained on: ShareGPT's per-turn ``"weight": 0`` (axolotl's convention)."""
    w = turn.extra.get("weight")
    return w is not None and not isinstance(w, str) and w == 0


def check_answers(chat: Chat) -> None:
    """Every assistant turn answers a user turn: ConversionError("no_user_turn") for an assistant turn
    with no user turn before it (a Vicuna conversation starting with "gpt"),
    ConversionError("consecutive_assistant_turns") for one right after another assistant turn.
    Used by SFT (no training on an answer to nothing) and by the Alpaca conversion."""
    seen_user = False
    for i, turn in enumerate(chat.turns):
        if turn.role == "assistant":
            if not seen_user:
                raise ConversionError("no_user_turn", f"assistant turn {i} has no user turn before it")
            if chat.turns[i - 1].role == "assistant":
                raise ConversionError("consecutive_assistant_turns", f"turn {i} follows another assistant turn")
        seen_user = seen_user or turn.role == "user"


def _to_alpaca(chat: Chat) -> list[dict[str, Any]]:
    if chat.alpaca is not None:  # alpaca -> alpaca: exact, keeps the instruction/input split
        return [_with_fields(dict(chat.alpaca), chat.fields)]
    system = chat.fields.get("system")  # e.g. ShareGPT's top-level "system": Alpaca reads it as the system prompt,
    if system is not None and not isinstance(system, str):  # which it is meant to be; not a string, unreadable
        raise ConversionError("wrong_type", f"record field 'system' is {type(system).__name__}; as the Alpaca "
                                            "system prompt it must be a string")
    check_answers(chat)
    out = []
    for i, turn in enumerate(chat.turns):
        if turn.role != "assistant":
            continue
        if chat.turns[i - 1].role != "user":  # user, system, assistant: the system turn would lose its place
            raise ConversionError("system_before_answer",
                                  f"assistant turn {i} follows a {chat.turns[i - 1].role} turn, not the user's")
        prev = i - 1
        if untrained(turn):  # context for the later turns, not an output to train on
            continue
        out.append(
            _with_fields(
                {"instruction": chat.turns[prev].content, "input": render_turns(chat.turns[:prev]),
                 "output": turn.content},
                chat.fields,
            )
        )
    if not out and any(t.role == "assistant" for t in chat.turns):
        raise ConversionError("no_trained_turn", 'every assistant turn has "weight": 0: no Alpaca output to '
                                                 "train on (--to messages or sharegpt keeps the weights)")
    if not out:
        raise ConversionError("no_assistant_turn", "the conversation has no assistant turn")
    last_assistant = max(i for i, t in enumerate(chat.turns) if t.role == "assistant")
    if last_assistant != len(chat.turns) - 1:
        raise ConversionError("unanswered_turn", f"turns after {last_assistant} have no assistant answer")
    return out


def convert(data: Any, to: str) -> list[dict[str, Any]]:
    """Convert one chat/instruction record to ``alpaca``, ``messages`` or ``sharegpt`` records.

    Returns a list (a multi-turn chat gives one Alpaca record per assistant turn); raises
    ConversionError with a ``reason`` when the record cannot be converted without losing text. The
    turns' extra keys have no place in Alpaca records (`lost_turn_keys` names them).

    >>> convert({"id": 1, "conversations": [{"from": "human", "value": "Hi"},
    ...                                     {"from": "gpt", "value": "Hello!"}]}, to="alpaca")
    [{'id': 1, 'instruction': 'Hi', 'input': '', 'output': 'Hello!'}]
    """
    if to not in TARGETS:
        raise ValueError(f"convert target must be one of {', '.join(TARGETS)}, got {to!r}")
    return _convert(parse(data), to)


def _convert(chat: Chat, to: str) -> list[dict[str, Any]]:
    if to == "alpaca":
        return _to_alpaca(chat)
    if to == "messages":
        turns = [_turn_with_extra({"role": t.role, "content": t.content}, t, i) for i, t in enumerate(chat.turns)]
        return [_with_fields({"messages": turns}, chat.fields)]
    turns = [_turn_with_extra({"from": SHAREGPT_ROLES[t.role], "value": t.content}, t, i)
             for i, t in enumerate(chat.turns)]
    return [_with_fields({"conversations": turns}, chat.fields)]


def lost_turn_keys(chat: Chat, to: str) -> str:
    """The turns' extra keys that converting ``chat`` to ``to`` leaves out ("turn 0: name; turn 1: weight"), or
    "" when none: Alpaca records have no per-turn fields; messages and ShareGPT keep them on their turn.

    >>> lost_turn_keys(parse({"messages": [{"role": "user", "content": "q", "name": "bob"},
    ...                                    {"role": "assistant", "content": "a"}]}), "alpaca")
    'turn 0: name'
    """
    if to != "alpaca":
        return ""
    return "; ".join(f"turn {i}: {', '.join(t.extra)}" for i, t in enumerate(chat.turns) if t.extra)


def _turn_with_extra(out: dict[str, Any], turn: Turn, i: int) -> dict[str, Any]:
    """An output turn plus the turn's extra keys; an extra key that would overwrite the role or content
    (e.g. a ShareGPT turn with both ``from`` and ``role``) raises ConversionError("field_conflict")."""
    clash = sorted(set(out) & set(turn.extra))
    if clash:
        raise ConversionError("field_conflict", f"turn {i}: key(s) {clash} collide with the output format's keys")
    return {**out, **turn.extra}


def get_field(data: dict[str, Any], field: str) -> Any:
    """A record's field by plain key, or by dotted path (``"meta.body"``) when no such plain key exists.

    Returns None when absent.

    >>> get_field({"meta": {"body": "x"}}, "meta.body")
    'x'
    """
    if field in data:
        return data[field]
    if "." not in field:
        return None
    value: Any = data
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def record_text(data: dict[str, Any], text_field: str = "text") -> str:
    """The text used by filters and dedup: the text field when it is a string, else the conversation.

    A conversation renders as its turn contents joined by blank lines (no role labels, so that they
    do not count as words or shingles). Raises ConversionError for a record that has neither.

    >>> record_text({"instruction": "Add 2 and 2.", "input": "", "output": "4"})
    'Add 2 and 2.\\n\\n4'
    """
    value = get_field(data, text_field)
    if isinstance(value, str):
        return value
    return "\n\n".join(t.content for t in parse(data).turns)


def map_contents(data: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of a chat/instruction record with ``fn`` applied to every text it holds, layout kept.

    Used by normalization, which must not change a record's format: message/turn contents (the text
    of ``{"type": "text"}`` content parts too), Alpaca instruction/input/output/system and
    prompt/completion are mapped; other fields are not.

    >>> map_contents({"id": 1, "messages": [{"role": "user", "content": " hi "}]}, str.strip)
    {'id': 1, 'messages': [{'role': 'user', 'content': 'hi'}]}
    """
    fmt = detect_format(data)
    out = dict(data)
    if fmt in ("messages", "sharegpt"):
        key = "messages" if fmt == "messages" else (
            "conversations" if isinstance(data.get("conversations"), list) else "conversation")  # as parse picks
        turns = []
        for turn in data[key]:
            turn = dict(turn) if isinstance(turn, dict) else turn
            if isinstance(turn, dict):
                for field in ("content", "value"):
                    if isinstance(turn.get(field), str):
                        turn[field] = fn(turn[field])
                    elif isinstance(turn.get(field), list):  # OpenAI content parts: map their text
                        turn[field] = [{**p, "text": fn(p["text"])} if _is_text_part(p) else p for p in turn[field]]
            turns.append(turn)
        out[key] = turns
    elif fmt is not None:
        for field in ("instruction", "input", "output", "system", "prompt", "completion"):
            if isinstance(out.get(field), str):
                out[field] = fn(out[field])
    return out


def convert_records(records: Iterable[Record], to: str, *, errors: ErrorLog,
                    dropped: Optional[ErrorLog] = None) -> Iterator[dict[str, Any]]:
    """Convert a stream of records, passing each unconvertible one to ``errors`` with its file:line.

    ``errors.counts`` then holds the failures per reason; with ``ErrorLog(strict=True)`` the first
    failure raises DataError instead. ``dropped`` receives each converted record whose turns had keys the
    target cannot hold (``turn_keys_dropped``, naming them; see `lost_turn_keys`): converted, not lost silently.

    >>> log = ErrorLog()
    >>> recs = [Record({"prompt": "a", "completion": "b"}, "x.jsonl", 1), Record({"text": "t"}, "x.jsonl", 2)]
    >>> list(convert_records(recs, "messages", errors=log)), str(log.samples[0])
    ([{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]}], 'x.jsonl:2: not_chat: no messages/conversations/instruction+output/prompt+completion fields')
    """
    if to not in TARGETS:
        raise ValueError(f"convert target must be one of {', '.join(TARGETS)}, got {to!r}")
    for record in records:
        try:
            chat = parse(record.data)
            out = _convert(chat, to)
        except ConversionError as e:
            errors.add(record.source, record.line, e.reason, e.detail)
            continue
        lost = lost_turn_keys(chat, to) if dropped is not None else ""
        if lost:
            dropped.add(record.source, record.line, "turn_keys_dropped",
                        f"{lost} (an Alpaca record has no per-turn fields; --to messages or sharegpt keeps them)")
        yield from out
