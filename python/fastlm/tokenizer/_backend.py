"""The one internal seam between the Tokenizer and its engine: native ``_C`` when it has the
tokenizer functions, the pure-Python ``_reference`` otherwise (or for custom regex patterns).

Interface (kept tiny so the native work can be switched in by merging):
``count_pieces(texts, pattern, num_threads) -> (list[bytes], uint64 counts)``,
``train(pieces, counts, vocab_size, min_frequency) -> int32 (m, 2) merges``,
``Encoder(tokens, pattern)`` with ``encode_ordinary_batch(texts, num_threads) -> list[np.ndarray]``
and ``decode(ids) -> bytes``.

Unicode: the native pre-tokenizer classifies by Unicode 16.0, as tiktoken and HF tokenizers do
(``_C.TOK_UNICODE_VERSION``; tools/gen_unicode_tables.py). The Python path (custom patterns,
``FASTLM_TOKENIZER_BACKEND=python``) classifies by the installed ``regex`` module, which may know a newer
Unicode: the two differ only on text holding code points assigned after 16.0.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

from fastlm.tokenizer import _reference
from fastlm.tokenizer.patterns import PATTERN_IDS, resolve_pattern

from fastlm import _C

_FORCE_PYTHON = os.environ.get("FASTLM_TOKENIZER_BACKEND", "") == "python"


def _has(*names: str) -> bool:
    return not _FORCE_PYTHON and all(hasattr(_C, n) for n in names)


def native_pretokenizer() -> bool:
    """True when the native pre-tokenizer is available."""
    return _has("tok_pretokenize", "tok_count_pieces")


def native_bpe() -> bool:
    """True when the native BPE trainer and encoder are available."""
    return _has("bpe_train", "BpeEncoder")


def describe(pattern: str = "gpt4") -> str:
    """A short description of the engines used for ``pattern`` (for CLI output and benchmarks)."""
    name, _ = resolve_pattern(pattern)
    pre = "native" if name is not None and native_pretokenizer() else "python"
    return f"pretokenize={pre} bpe={'native' if native_bpe() else 'python'}"


def fix_surrogates(text: str) -> str:
    """Lone surrogates become U+FFFD, as tiktoken does, so ids match tiktoken's."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _threads(num_threads: int) -> int:
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


def count_pieces(texts: list[str], pattern: str, num_threads: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Distinct pre-tokenized pieces (UTF-8 bytes, sorted) of ``texts`` and their counts."""
    name, pat_str = resolve_pattern(pattern)
    if name is not None and native_pretokenizer():
        return _C.tok_count_pieces(texts, PATTERN_IDS[name], num_threads)
    counts = _reference.count_pieces(texts, pat_str)
    pieces = sorted(counts)
    return pieces, np.array([counts[p] for p in pieces], dtype=np.uint64)


def pretokenize(texts: list[str], pattern: str, num_threads: int = 0) -> list[list[str]]:
    """The pieces of each text under ``pattern``."""
    name, pat_str = resolve_pattern(pattern)
    if name is not None and native_pretokenizer():
        return _C.tok_pretokenize(texts, PATTERN_IDS[name], num_threads)
    return _reference.pretokenize(texts, pat_str)


def train(pieces: list[bytes], counts: np.ndarray, vocab_size: int, min_frequency: int, progress=None) -> np.ndarray:
    """Merges ``int32 (m, 2)`` for at most ``vocab_size - 256`` merges (token 256+i = merge i);
    ``progress(merges_done, merges_wanted)`` is called now and then when given."""
    if native_bpe():
        counts = np.asarray(counts, dtype=np.uint64)
        if progress is None:
            return np.asarray(_C.bpe_train(pieces, counts, vocab_size, min_frequency))
        total = max(0, vocab_size - 256)
        return np.asarray(_C.bpe_train(pieces, counts, vocab_size, min_frequency,
                                       progress=lambda done: progress(done, total), progress_every=1024))
    return _reference.train(pieces, counts, vocab_size, min_frequency, progress)


class Encoder:
    """Ordinary (no special tokens) encoding of texts and decoding of ids, on the best engine."""

    def __init__(self, tokens: list[bytes], pattern: str):
        self.name, self.pat_str = resolve_pattern(pattern)
        self.native_pre = self.name is not None and native_pretokenizer()
        if native_bpe():
            self._enc = _C.BpeEncoder(tokens)
            self._py: Optional[_reference.Encoder] = None
        else:
            self._enc = None
            self._py = _reference.Encoder(tokens, self.pat_str)

    def _pieces(self, texts: list[str], num_threads: int) -> list[list[bytes]]:
        if self.native_pre:  # bytes in -> bytes pieces
            data = [t.encode("utf-8", "surrogatepass") for t in texts]
            return _C.tok_pretokenize(data, PATTERN_IDS[self.name], num_threads)
        pieces = _reference.pretokenize(texts, self.pat_str)
        return [[p.encode("utf-8", "surrogatepass") for p in ps] for ps in pieces]

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 0, *, as_lists: bool = False) -> list:
        """uint32 arrays, or lists of int with ``as_lists`` (built natively: cheaper than tolist).
        Lone surrogates are encoded as U+FFFD, as tiktoken does."""
        if self._py is None and self.native_pre:
            # pre-tokenize + BPE in one GIL-free native call: no Python object per piece
            return self._enc.encode_ordinary_batch(texts, PATTERN_IDS[self.name], num_threads, not as_lists, True)
        texts = [fix_surrogates(t) for t in texts]
        if self._py is not None:
            out = self._py.encode_ordinary_batch(texts, _threads(num_threads))
        else:
            out = list(self._enc.encode_pieces_batch(self._pieces(texts, num_threads), num_threads))
        return [a.tolist() for a in out] if as_lists else out

    def encode_ordinary(self, text: str, *, as_lists: bool = False):
        if as_lists and self._py is None and self.native_pre:
            return self._enc.encode_ordinary(text, PATTERN_IDS[self.name])  # the one-text fast path
        return self.encode_ordinary_batch([text], 1, as_lists=as_lists)[0]

    def decode(self, ids: Iterable[int]) -> bytes:
        if self._py is not None:
            return self._py.decode(ids)
        return self._enc.decode(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.uint32))
