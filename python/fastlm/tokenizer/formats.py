"""The fastlm tokenizer file format (versioned text) and `.tiktoken` ranks files: save and load.

``tokenizer.fastlm``: line 1 is a JSON header
``{"format": "fastlm-tokenizer", "version": 1, "backend": "bpe", "pattern": "gpt4" | null,
"pat_str": "...", "n_mergeable": N, "n_vocab": M, "special_tokens": {"<|bos|>": N, ...}}``;
then one ``base64(token) rank`` line per mergeable token (the `.tiktoken` layout, so the body is
a valid tiktoken ranks file). Ranks must be exactly ``0..N-1`` and include all 256 single bytes.
The sentencepiece backend writes the same header with ``"backend": "sentencepiece"`` and one line
holding the base64 of its serialized model. Every load error names the file and line.
A tokenizer directory (``tok/``) holds ``tokenizer.fastlm`` (and, from the CLI, ``tokenizer.json``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from fastlm.data.io import atomic_write
from fastlm.tokenizer.patterns import PATTERNS

FORMAT_NAME = "fastlm-tokenizer"
FORMAT_VERSION = 1
FILE_NAME = "tokenizer.fastlm"


class TokenizerFileError(ValueError):
    """A malformed tokenizer file; the message starts with ``path:line:``."""

    def __init__(self, path: str, line: int, message: str):
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}")


def resolve_path(path: str) -> str:
    """``path`` itself, or ``path/tokenizer.fastlm`` for a directory."""
    return os.path.join(path, FILE_NAME) if os.path.isdir(path) else path


def header_of(tok) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "backend": "bpe",
        "pattern": tok.pattern_name,
        "pat_str": tok.pat_str,
        "n_mergeable": tok.n_mergeable,
        "n_vocab": tok.n_vocab,
        "special_tokens": tok.special_tokens,
    }


def save(tok, path: str) -> str:
    """Write ``tok`` atomically to ``path`` (or ``path/tokenizer.fastlm`` for a directory); returns the file."""
    if os.path.isdir(path) or path.endswith(os.sep):
        path = os.path.join(path, FILE_NAME)
    if getattr(tok, "backend", "bpe") == "sentencepiece":
        header, body = tok.header(), [base64.b64encode(tok.model_proto()).decode("ascii")]
    else:
        header = header_of(tok)
        body = (f"{base64.b64encode(t).decode('ascii')} {r}" for r, t in enumerate(tok.tokens))
    with atomic_write(path) as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for line in body:
            f.write(line + "\n")
    return path


def _parse_ranks(lines, path: str, first_line: int) -> list[bytes]:
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, first_line):
        line = line.rstrip("\r\n")
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerFileError(path, lineno, f"expected 'base64 rank', got {line[:60]!r}")
        try:
            token = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            raise TokenizerFileError(path, lineno, f"bad base64 {parts[0][:40]!r}") from None
        try:
            rank = int(parts[1])
        except ValueError:
            raise TokenizerFileError(path, lineno, f"bad rank {parts[1][:20]!r}") from None
        if rank < 0:
            raise TokenizerFileError(path, lineno, f"negative rank {rank}")
        if rank in by_rank:
            raise TokenizerFileError(path, lineno, f"duplicate rank {rank}")
        if token in seen:
            raise TokenizerFileError(path, lineno, f"duplicate token {token!r} (also at line {seen[token]})")
        by_rank[rank] = token
        seen[token] = lineno
    end = first_line + len(by_rank)
    n = len(by_rank)
    for r in range(n):
        if r not in by_rank:
            raise TokenizerFileError(path, end, f"ranks are not 0..{n - 1}: rank {r} is missing")
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise TokenizerFileError(
            path, end, f"missing single-byte tokens: {len(missing)} of 256 absent (first {missing[0]:#04x})"
        )
    return [by_rank[r] for r in range(n)]


def _text_lines(f, path: str, first_line: int):
    """The lines of a binary file as text; a line that is not UTF-8 is an error naming it."""
    for lineno, raw in enumerate(f, first_line):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TokenizerFileError(path, lineno, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_ranks_file(path: str) -> list[bytes]:
    """Tokens by rank from a ``.tiktoken`` file (``base64 rank`` per line)."""
    with open(path, "rb") as f:
        return _parse_ranks(_text_lines(f, path, 1), path, 1)


def _header(line: str, path: str) -> dict:
    try:
        header = json.loads(line)
    except json.JSONDecodeError as e:
        hint = " (a .tiktoken ranks file? load it with Tokenizer.from_tiktoken_file(path, pattern=...))"
        raise TokenizerFileError(path, 1, f"header is not JSON ({e.msg}){hint if ' ' in line.strip() else ''}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise TokenizerFileError(path, 1, f"not a {FORMAT_NAME} file (header 'format' is not {FORMAT_NAME!r})")
    if header.get("version") != FORMAT_VERSION:
        raise TokenizerFileError(path, 1, f"unsupported version {header.get('version')!r} (this fastlm reads {FORMAT_VERSION})")
    for key, kind in (("pat_str", str), ("special_tokens", dict), ("n_vocab", int)):
        if not isinstance(header.get(key), kind):
            raise TokenizerFileError(path, 1, f"header field {key!r} is missing or not a {kind.__name__}")
    return header


def load(path: str):
    """Load a tokenizer: a fastlm file or directory, or a HF ``tokenizer.json``."""
    from fastlm.tokenizer.core import Tokenizer

    path = resolve_path(path)
    if path.endswith(".json"):
        from fastlm.tokenizer import hf

        return hf.load_hf(path)
    with open(path, "rb") as f:
        lines = _text_lines(f, path, 1)
        header = _header(next(lines, ""), path)
        if header.get("backend", "bpe") == "sentencepiece":
            from fastlm.tokenizer.spm import SentencePieceTokenizer

            line = next(lines, "")
            try:
                proto = base64.b64decode(line.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise TokenizerFileError(path, 2, "bad base64 sentencepiece model") from None
            try:
                return SentencePieceTokenizer.from_proto(proto, header)
            except (RuntimeError, ValueError) as e:  # sentencepiece's parse errors are RuntimeErrors
                raise TokenizerFileError(path, 2, f"bad sentencepiece model: {e}") from None
        if header.get("backend", "bpe") != "bpe":
            raise TokenizerFileError(path, 1, f"unknown backend {header.get('backend')!r}")
        tokens = _parse_ranks(lines, path, 2)
    if "n_mergeable" in header and header["n_mergeable"] != len(tokens):
        raise TokenizerFileError(path, 1, f"header says {header['n_mergeable']!r} tokens, file has {len(tokens)}")
    name = header.get("pattern")
    # a name we lack would otherwise be taken as a regex string
    if name is not None and (not isinstance(name, str) or PATTERNS.get(name) != header["pat_str"]):
        raise TokenizerFileError(path, 1, f"header pattern {name!r} is not a known pattern name with that pat_str "
                                          f"(known: {', '.join(PATTERNS)}; use null for a custom pat_str)")
    try:
        tok = Tokenizer(tokens, pattern=name or header["pat_str"], special_tokens=header["special_tokens"])
    except ValueError as e:
        raise TokenizerFileError(path, 1, str(e)) from None
    if tok.n_vocab != header["n_vocab"]:
        raise TokenizerFileError(path, 1, f"header n_vocab {header['n_vocab']} != {tok.n_vocab} from its tokens")
    return tok
