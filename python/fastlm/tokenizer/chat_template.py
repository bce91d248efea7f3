"""Chat template: render Alpaca / ShareGPT / messages records into token ids and a loss mask.

Layout (every special token is a single id; record text is always encoded as ordinary text, so a
user writing "<|assistant_start|>" gets the characters, never the control token)::

    <|bos|>
    <|system_start|> system text <|system_end|>          (when the record has a system turn)
    <|user_start|> user text <|user_end|>
    <|assistant_start|> assistant text <|assistant_end|>
    ... (more user / assistant turns)

The loss mask is 1 on assistant content tokens and their ``<|assistant_end|>`` (what the model
must learn to produce, including when to stop), 0 elsewhere and on an assistant turn marked
``"weight": 0`` (ShareGPT datasets' per-turn flag: context, not a target). ``render_prompt`` renders the turns
before the last assistant reply and ends with ``<|assistant_start|>`` for generation.
"""

from __future__ import annotations

from typing import Any

from fastlm.data.chat import Chat, Turn, parse, untrained

BOS = "<|bos|>"
ROLE_TOKENS = {
    "system": ("<|system_start|>", "<|system_end|>"),
    "user": ("<|user_start|>", "<|user_end|>"),
    "assistant": ("<|assistant_start|>", "<|assistant_end|>"),
}
CHAT_SPECIALS = (BOS, *(t for pair in ROLE_TOKENS.values() for t in pair))


def _turns(record: Any) -> list[Turn]:
    chat = record if isinstance(record, Chat) else parse(record.data if hasattr(record, "data") else record)
    return chat.turns


def _ids(tokenizer) -> dict[str, int]:
    return {name: tokenizer.special_id(name) for name in CHAT_SPECIALS}


def _render(tokenizer, turns: list[Turn]) -> tuple[list[int], list[int]]:
    sp = _ids(tokenizer)
    ids, mask = [sp[BOS]], [0]
    for turn in turns:
        start, end = ROLE_TOKENS[turn.role]
        body = tokenizer.encode_ordinary(turn.content)
        learn = 1 if turn.role == "assistant" and not untrained(turn) else 0
        ids.append(sp[start])
        mask.append(0)
        ids.extend(body)
        mask.extend([learn] * len(body))
        ids.append(sp[end])
        mask.append(learn)
    return ids, mask


def render_conversation(tokenizer, record: Any) -> tuple[list[int], list[int]]:
    """``(ids, loss_mask)`` for a chat record (dict, Record or parsed Chat).

    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})
    >>> ids, mask = render_conversation(tok, {"instruction": "hi", "output": "yo"})
    >>> tok.decode(ids), mask
    ('<|bos|><|user_start|>hi<|user_end|><|assistant_start|>yo<|assistant_end|>', [0, 0, 0, 0, 0, 0, 1, 1, 1])
    """
    return _render(tokenizer, _turns(record))


def render_prompt(tokenizer, record: Any) -> list[int]:
    """Ids of the conversation up to (not including) its last assistant reply, ending with
    ``<|assistant_start|>`` so that a model continues as the assistant.

    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})
    >>> tok.decode(render_prompt(tok, {"messages": [{"role": "user", "content": "hi"}]}))
    '<|bos|><|user_start|>hi<|user_end|><|assistant_start|>'
    """
    turns = list(_turns(record))
    if turns and turns[-1].role == "assistant":
        turns.pop()
    ids, _ = _render(tokenizer, turns)
    ids.append(tokenizer.special_id(ROLE_TOKENS["assistant"][0]))
    return ids
