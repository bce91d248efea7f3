"""Hugging Face ``tokenizer.json`` interop for byte-level BPE: export (identical ids) and import.

Export: a BPE model whose vocab is the ranks in GPT-2's byte-to-unicode alphabet and whose merges
are derived from the ranks the way tiktoken would build each token (for rank r >= 256, run
tiktoken's merge on the token's bytes with only ranks < r; the last two parts are the merge).
Pre-tokenizer: ``ByteLevel`` (its built-in GPT-2 regex) for the gpt2 pattern, otherwise
``Split(pattern, Isolated)`` followed by ``ByteLevel(use_regex=False)``; decoder ``ByteLevel``.
Special tokens become ``added_tokens`` with ``special: true`` and are also model ``vocab`` entries
at their ids, as in GPT-2's own file: ``tokenizers`` gives an added token that is not in the vocab
the next free id after the vocab, whatever id the file says, so a special id past a gap (cl100k's
``<|endoftext|>`` is 100257, after 100256 mergeable ranks) would otherwise change.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Optional

from fastlm.data.io import atomic_write
from fastlm.tokenizer.patterns import GPT2_PATTERN, PATTERNS


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _to_str(token: bytes) -> str:
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def derive_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """For each token of rank >= 256, the (left, right) split tiktoken's merge reaches with lower ranks."""
    ranks = {t: i for i, t in enumerate(tokens)}
    merges = []
    for rank in range(256, len(tokens)):
        token = tokens[rank]
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_i = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def onig_pattern(pat_str: str) -> str:
    """``pat_str`` for HF's Oniguruma regex: there ``X{1,3}+`` means ``(X{1,3})+``, not possessive
    as in the ``regex`` module, so a possessive interval that ends an alternative loses its ``+``
    (equivalent there: nothing after it in that alternative could make it backtrack)."""
    import re

    return re.sub(r"(\{\d+(?:,\d*)?\})\+(?=\||\)|$)", r"\1", pat_str)


def to_hf_json(tok) -> dict:
    """The ``tokenizer.json`` document for a byte-level BPE Tokenizer."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if tok.pattern_name == "gpt2":
        pre = dict(byte_level, use_regex=True)
    else:
        split = {"type": "Split", "pattern": {"Regex": onig_pattern(tok.pat_str)}, "behavior": "Isolated", "invert": False}
        pre = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for s, i in specials
    ]
    vocab = {_to_str(t): i for i, t in enumerate(tok.tokens)}
    for s, i in specials:
        # one string, one id in tokenizer.json: tokenizers would give the special the token's id
        if s in vocab:
            raise ValueError(
                f"special token {s!r} (id {i}) is spelled like mergeable token {tok.tokens[vocab[s]]!r} (id {vocab[s]}) "
                "in tokenizer.json's byte-level vocab, which maps a string to one id; rename the special token"
            )
        vocab[s] = i
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[_to_str(a), _to_str(b)] for a, b in derive_merges(tok.tokens)],
        },
    }


def save_hf(tok, path: str) -> None:
    """Write ``tokenizer.json`` atomically."""
    doc = to_hf_json(tok)  # before opening: a tokenizer that cannot be exported leaves no file
    with atomic_write(path) as f:
        json.dump(doc, f, ensure_ascii=False)


def _pattern_of(pre: Optional[dict], path: str) -> str:
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return GPT2_PATTERN  # HF's built-in GPT-2 regex; same pieces as r50k's pattern
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (
            isinstance(steps, list)
            and len(steps) == 2
            and all(isinstance(step, dict) for step in steps)
            and steps[0].get("type") == "Split"
            and isinstance(steps[0].get("pattern"), dict)
            and "Regex" in steps[0]["pattern"]
            and isinstance(steps[0]["pattern"]["Regex"], str)
            and steps[0].get("behavior") == "Isolated"
            and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)
        ):
            regex = steps[0]["pattern"]["Regex"]
            for known in PATTERNS.values():  # our own export of a published pattern
                if onig_pattern(known) == regex:
                    return known
            return regex
    raise ValueError(
        f"{path}: unsupported pre_tokenizer {json.dumps(pre)[:120]}; fastlm reads ByteLevel BPE files "
        "(ByteLevel, or Split(Regex, Isolated) + ByteLevel(use_regex=False))"
    )


def load_hf(path: str):
    """A Tokenizer from a HF ByteLevel BPE ``tokenizer.json`` (ids preserved)."""
    from fastlm.tokenizer.core import Tokenizer

    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a tokenizer.json document (a JSON {type(doc).__name__}, not an object)")
    model = doc.get("model") or {}
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: model is not a BPE model with a vocab")
    pattern = _pattern_of(doc.get("pre_tokenizer"), path)
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    specials = {}
    for t in doc.get("added_tokens") or []:
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and type(t.get("id")) is int):
            raise ValueError(f"{path}: added_tokens entry {json.dumps(t)[:80]} lacks a string 'content' and an int 'id'")
        specials[t["content"]] = t["id"]
    by_id: dict[int, bytes] = {}
    for s, i in model["vocab"].items():
        if s in specials:
            continue
        if type(i) is not int:
            raise ValueError(f"{path}: vocab entry {s!r} has id {i!r}, not an int")
        try:
            by_id[i] = bytes(inverse[c] for c in s)
        except KeyError:
            raise ValueError(f"{path}: vocab entry {s!r} is not in the ByteLevel alphabet") from None
    n = len(by_id)
    holes = [i for i in range(n) if i not in by_id]
    if holes:
        raise ValueError(f"{path}: byte-level token ids are not 0..{n - 1} (id {holes[0]} is not a byte token)")
    try:
        return Tokenizer([by_id[i] for i in range(n)], pattern=pattern, special_tokens=specials)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
