"""`Tokenizer`: byte-level BPE training, encoding with tiktoken's special-token policy, decoding."""

from __future__ import annotations

import os
import sys
import time
from typing import AbstractSet, Collection, Iterable, Iterator, Literal, Optional, Union

import numpy as np

from fastlm.data.records import check_num_threads
from fastlm.tokenizer import _backend
from fastlm.tokenizer.patterns import resolve_pattern

# The chat-template control tokens (see fastlm.tokenizer.chat_template); <|bos|> also separates
# documents in token shards; <|mask|> is the MLM [MASK], <|pad|> pads SFT/MLM batches. New ones go at
# the end so that the ids of the earlier ones stay put.
DEFAULT_SPECIALS: tuple[str, ...] = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|system_start|>",
    "<|system_end|>",
    "<|mask|>",
    "<|pad|>",
)

_TRAIN_CHUNK_BYTES = 8 << 20  # texts are pre-tokenized and counted this many bytes at a time


def _chunks(texts: Iterable[str], chunk_bytes: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"train_from_iterator expects str items, got {type(t).__name__}")
        chunk.append(t)
        size += len(t)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _check_text(text, name: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _text_list(texts) -> list[str]:
    """``texts`` as a list of str (an iterator is read once); a single str is refused, since iterating
    it would encode each character as a document."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of documents, not a single str/bytes")
    texts = list(texts)
    for i, t in enumerate(texts):
        _check_text(t, f"texts[{i}]")
    return texts


def flat_ids(ids) -> np.ndarray:
    """``ids`` as a 1-D array; nested or 2-D ids (a batch) are refused: decoded, they would run together."""
    try:
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    except ValueError:  # ragged nesting: [[1], [2, 3]]
        arr = None
    if arr is None or arr.ndim != 1:
        raise ValueError("ids must be one flat sequence of token ids (use decode_batch for many sequences)")
    return arr


class Tokenizer:
    """A byte-level BPE tokenizer: ``tokens[rank]`` bytes, a pre-tokenization pattern, special tokens.

    >>> tok = Tokenizer.train_from_iterator(["hello world"] * 10, 300, special_tokens=["<|bos|>"])
    >>> tok.decode(tok.encode("hello world"))
    'hello world'
    """

    def __init__(self, tokens: list[bytes], *, pattern: str = "gpt4", special_tokens: Optional[dict[str, int]] = None):
        """``tokens[rank]`` are the mergeable tokens (all 256 single bytes among them);
        ``special_tokens`` maps each special string to its id (default: none)."""
        self.pattern_name, self.pat_str = resolve_pattern(pattern)
        self.pattern = self.pattern_name or self.pat_str
        tokens = [bytes(t) for t in tokens]
        ranks = {t: i for i, t in enumerate(tokens)}
        if len(ranks) != len(tokens):
            raise ValueError("tokens contain duplicates")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"tokens lack {len(missing)} single bytes (first: {missing[0]:#04x}); byte-level BPE needs all 256")
        self._tokens = tokens
        self._ranks = ranks
        specials = dict(special_tokens or {})
        for s, i in specials.items():
            if not isinstance(s, str) or not s:
                raise ValueError(f"special token {s!r} must be a non-empty string")
            if not isinstance(i, int) or i < len(tokens):
                raise ValueError(f"special token {s!r} has id {i!r}, but ids below {len(tokens)} are mergeable ranks")
        if len(set(specials.values())) != len(specials):
            raise ValueError("two special tokens share an id")
        self._specials = specials
        self._special_by_id = {i: s.encode("utf-8") for s, i in specials.items()}
        self._encoder = _backend.Encoder(tokens, self.pattern)
        self._special_re_cache: dict[frozenset, object] = {}

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train_from_iterator(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        special_tokens: Collection[str] = DEFAULT_SPECIALS,
        min_frequency: int = 2,
        num_threads: int = 0,
        progress: bool = False,
        backend: str = "bpe",
        model_type: str = "bpe",
    ) -> "Tokenizer":
        """Train on texts pulled from any iterator; ``vocab_size`` counts bytes, merges and specials.

        ``backend="sentencepiece"`` trains a sentencepiece model (``model_type`` bpe or unigram)
        behind the same interface instead.

        >>> tok = Tokenizer.train_from_iterator(["abab abab"] * 5, 260, special_tokens=())
        >>> [tok.id_to_token(i) for i in tok.encode("abab")]
        ['abab']
        """
        if isinstance(texts, (str, bytes)):  # would train on its characters, one document each
            raise TypeError("texts must be an iterable of documents, not a single str/bytes")
        if isinstance(special_tokens, str):  # would make each character a special token
            raise TypeError(f"special_tokens must be a collection of strings, not the string {special_tokens!r}")
        special_tokens = list(dict.fromkeys(special_tokens))
        if backend == "sentencepiece":
            from fastlm.tokenizer.spm import SentencePieceTokenizer

            ignored = [f"{k}={v!r}" for k, v, default in (("pattern", pattern, "gpt4"), ("min_frequency", min_frequency, 2),
                                                          ("progress", progress, False)) if v != default]
            if ignored:  # sentencepiece has its own pre-tokenization and counts: say so rather than drop them
                raise ValueError(f"{', '.join(ignored)} apply to the byte-level BPE backend, not to "
                                 "backend='sentencepiece'")

            return SentencePieceTokenizer.train_from_iterator(
                texts, vocab_size, special_tokens=special_tokens, model_type=model_type, num_threads=num_threads
            )
        if backend not in ("bpe", "native"):
            raise ValueError(f"backend must be 'bpe' (alias 'native') or 'sentencepiece', got {backend!r}")
        if model_type != "bpe":
            raise ValueError(f"model_type={model_type!r} applies to backend='sentencepiece' (this backend is byte-level BPE)")
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        resolve_pattern(pattern)
        counts: dict[bytes, int] = {}
        t0, nbytes = time.perf_counter(), 0
        for chunk in _chunks(texts, _TRAIN_CHUNK_BYTES):
            chunk = [_backend.fix_surrogates(t) for t in chunk]
            pieces, c = _backend.count_pieces(chunk, pattern, num_threads)
            for p, n in zip(pieces, c.tolist()):
                counts[p] = counts.get(p, 0) + n
            nbytes += sum(len(t) for t in chunk)
            if progress:
                print(f"\rcounted {nbytes / 1e6:.1f} MB of text, {len(counts)} distinct pieces", end="", file=sys.stderr)
        if progress:
            print(f"\rcounted {nbytes / 1e6:.1f} MB, {len(counts)} distinct pieces in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        pieces = sorted(counts)

        def report(done: int, total: int) -> None:
            print(f"\rmerges {done}/{total}", end="", file=sys.stderr)

        t1 = time.perf_counter()
        merges = _backend.train(pieces, np.array([counts[p] for p in pieces], dtype=np.uint64),
                                vocab_size - len(special_tokens), min_frequency, report if progress else None)
        if progress:
            print(f"\rmerges {len(merges)} in {time.perf_counter() - t1:.1f} s", file=sys.stderr)
        tokens = [bytes([b]) for b in range(256)]
        for left, right in merges.tolist():
            tokens.append(tokens[left] + tokens[right])
        specials = {s: len(tokens) + i for i, s in enumerate(special_tokens)}
        return cls(tokens, pattern=pattern, special_tokens=specials)

    # ---- properties ---------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of ids: the largest id + 1 (mergeable ranks and special tokens)."""
        return max([len(self._tokens) - 1, *self._specials.values()]) + 1

    @property
    def n_mergeable(self) -> int:
        """Number of mergeable (byte) tokens: ids ``0..n_mergeable-1``."""
        return len(self._tokens)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (a copy)."""
        return dict(self._specials)

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._specials)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank, as tiktoken's ``mergeable_ranks`` (a copy)."""
        return dict(self._ranks)

    @property
    def tokens(self) -> list[bytes]:
        """Mergeable tokens indexed by rank (a copy)."""
        return list(self._tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a special token's UTF-8 text for special ids).

        >>> Tokenizer([bytes([b]) for b in range(256)]).token_bytes(104)
        b'h'
        """
        if 0 <= token_id < len(self._tokens):
            return self._tokens[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id]
        raise ValueError(f"token id {token_id} is not in the vocabulary (n_vocab {self.n_vocab})")

    def id_to_token(self, token_id: int) -> str:
        """One id as text (invalid UTF-8 replaced), e.g. for showing the longest tokens."""
        return self.token_bytes(token_id).decode("utf-8", "replace")

    def token_to_id(self, token: Union[str, bytes]) -> int:
        """The id of a special token string or of mergeable token bytes; KeyError if absent."""
        if isinstance(token, str):
            if token in self._specials:
                return self._specials[token]
            token = token.encode("utf-8")
        return self._ranks[token]

    def special_id(self, token: str) -> int:
        """The id of a special token, with a clear error when the tokenizer lacks it."""
        try:
            return self._specials[token]
        except KeyError:
            raise ValueError(f"tokenizer has no special token {token!r} (it has {sorted(self._specials)})") from None

    # ---- encoding -----------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as ordinary text.

        >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256})
        >>> tok.encode_ordinary("<|")
        [60, 124]
        """
        _check_text(text)
        return self._encoder.encode_ordinary(text, as_lists=True)

    def _special_regex(self, specials: AbstractSet[str]):
        key = frozenset(specials)
        pat = self._special_re_cache.get(key)
        if pat is None:
            import regex

            pat = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))
            self._special_re_cache[key] = pat
        return pat

    def _policy(self, allowed_special, disallowed_special) -> tuple[set[str], set[str]]:
        for name, value in (("allowed_special", allowed_special), ("disallowed_special", disallowed_special)):
            if isinstance(value, str) and value != "all":  # set("<|bos|>") would be its characters
                raise ValueError(f"{name} must be 'all' or a set of special tokens, got the str {value!r} "
                                 f"(a set of one: {{{value!r}}})")
        allowed = self.special_tokens_set if allowed_special == "all" else set(allowed_special)
        unknown = allowed - self.special_tokens_set
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer lacks: {sorted(unknown)}")
        disallowed = self.special_tokens_set - allowed if disallowed_special == "all" else set(disallowed_special)
        return allowed, disallowed

    def _check_disallowed(self, text: str, disallowed: set[str]) -> None:
        if disallowed:
            prefix = os.path.commonprefix(list(disallowed))  # "<|" for the default specials
            if prefix and prefix not in text:  # one fast substring scan rules most texts out
                return
            m = self._special_regex(disallowed).search(text)
            if m:
                tok = m.group()
                raise ValueError(
                    f"Encountered text corresponding to disallowed special token {tok!r}.\n"
                    f"To encode it as a special token, pass allowed_special={{{tok!r}}} (or allowed_special='all').\n"
                    f"To encode it as normal text, pass disallowed_special=() "
                    f"(or disallowed_special=tokenizer.special_tokens_set - {{{tok!r}}}), or use encode_ordinary."
                )

    def _encode_one(self, text: str, allowed: set[str]) -> list[int]:
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in self._special_regex(allowed).finditer(text):
            if m.start() > start:
                out.extend(self.encode_ordinary(text[start : m.start()]))
            out.append(self._specials[m.group()])
            start = m.end()
        if start < len(text):
            out.extend(self.encode_ordinary(text[start:]))
        return out

    def encode(
        self,
        text: str,
        *,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
    ) -> list[int]:
        """Encode text with tiktoken's policy: special-token text is an error unless allowed.

        >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256})
        >>> tok.encode("<|bos|>hi", allowed_special={"<|bos|>"})
        [256, 104, 105]
        """
        _check_text(text)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        self._check_disallowed(text, disallowed)
        return self._encode_one(text, allowed)

    def encode_batch(
        self,
        texts: list[str],
        *,
        num_threads: int = 0,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = "all",
        as_numpy: bool = False,
    ) -> list:
        """Encode many texts in parallel (``num_threads`` 0 = all cores); equals a loop of encode.

        >>> tok = Tokenizer([bytes([b]) for b in range(256)])
        >>> tok.encode_batch(["a", "bc"])
        [[97], [98, 99]]
        """
        texts = _text_list(texts)  # the checks below and the encoding each read every text
        check_num_threads(num_threads)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        for t in texts:
            self._check_disallowed(t, disallowed)
        if allowed:  # cut at allowed specials, encode all ordinary segments as one parallel batch
            special_re = self._special_regex(allowed)
            segments: list[str] = []
            plans: list[list] = []  # per text: segment index (int) or special id (tuple)
            for t in texts:
                plan, start = [], 0
                for m in special_re.finditer(t):
                    if m.start() > start:
                        plan.append(len(segments))
                        segments.append(t[start : m.start()])
                    plan.append((self._specials[m.group()],))
                    start = m.end()
                if start < len(t):
                    plan.append(len(segments))
                    segments.append(t[start:])
                plans.append(plan)
            encoded = self._encoder.encode_ordinary_batch(segments, num_threads)
            out = [[x for step in plan for x in (step if isinstance(step, tuple) else encoded[step].tolist())]
                   for plan in plans]
            return [np.array(o, dtype=np.uint32) for o in out] if as_numpy else out
        if as_numpy:
            return self._encoder.encode_ordinary_batch(texts, num_threads)
        return self._encoder.encode_ordinary_batch(texts, num_threads, as_lists=True)

    def encode_ordinary_batch(self, texts: list[str], *, num_threads: int = 0, as_numpy: bool = False) -> list:
        """encode_ordinary over many texts in parallel."""
        return self.encode_batch(texts, num_threads=num_threads, disallowed_special=(), as_numpy=as_numpy)

    # ---- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of ids (special tokens as their text).

        >>> Tokenizer([bytes([b]) for b in range(256)]).decode_bytes([104, 105])
        b'hi'
        """
        ids = flat_ids(ids)
        if ids.size and ids.dtype == np.uint64 and ids.max() > np.iinfo(np.int64).max:
            raise ValueError(f"token id {int(ids.max())} is out of range (n_vocab {self.n_vocab})")
        if ids.size and ids.dtype.kind not in "iu":  # floats, strings, Python ints past int64
            for i in ids.ravel().tolist():
                if not isinstance(i, int) or isinstance(i, bool):
                    raise ValueError(f"token ids must be integers, got {i!r}")
                if not 0 <= i < self.n_vocab:
                    raise ValueError(f"token id {i} is out of range (n_vocab {self.n_vocab})")
        ids = ids.astype(np.int64, copy=False).ravel()
        n = len(self._tokens)
        if ids.size == 0:
            return b""
        special = ids >= n
        if not special.any():
            if ids.min() < 0:
                raise ValueError(f"token id {int(ids.min())} is out of range (n_vocab {self.n_vocab})")
            return self._encoder.decode(ids)
        parts, start = [], 0
        for pos in np.flatnonzero(special).tolist():
            if pos > start:
                parts.append(self.decode_bytes(ids[start:pos]))
            parts.append(self.token_bytes(int(ids[pos])))
            start = pos + 1
        if start < ids.size:
            parts.append(self.decode_bytes(ids[start:]))
        return b"".join(parts)

    def decode(self, ids: Iterable[int], *, errors: str = "replace") -> str:
        """Decode ids to text; invalid UTF-8 is replaced (``errors="strict"`` raises).

        >>> Tokenizer([bytes([b]) for b in range(256)]).decode([104, 105])
        'hi'
        """
        return self.decode_bytes(ids).decode("utf-8", errors)

    def decode_batch(self, batch: Iterable[Iterable[int]], *, errors: str = "replace") -> list[str]:
        """decode over many id sequences."""
        return [self.decode(ids, errors=errors) for ids in batch]

    # ---- persistence and interop (implemented in fastlm.tokenizer.formats / .hf) ----------------

    def save(self, path: str) -> None:
        """Save atomically in the fastlm text format (a directory gets ``tokenizer.fastlm`` inside).

        >>> import os, tempfile
        >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256})
        >>> p = os.path.join(tempfile.mkdtemp(), "t.fastlm"); tok.save(p)
        >>> Tokenizer.from_file(p).special_tokens
        {'<|bos|>': 256}
        """
        from fastlm.tokenizer import formats

        formats.save(self, path)

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        """Load a fastlm tokenizer file, a ``tok/`` directory, or a ``tokenizer.json`` (HF)."""
        from fastlm.tokenizer import formats

        return formats.load(path)

    @classmethod
    def from_tiktoken_file(cls, path: str, *, pattern: str, special_tokens: Optional[dict[str, int]] = None) -> "Tokenizer":
        """Load a ``.tiktoken`` ranks file (``base64 rank`` lines) with the given pattern and specials."""
        from fastlm.tokenizer import formats

        return cls(formats.read_ranks_file(path), pattern=pattern, special_tokens=special_tokens)

    def to_tiktoken(self, name: str = "fastlm"):
        """A ``tiktoken.Encoding`` with the same ranks, pattern and special tokens (identical ids)."""
        import tiktoken

        return tiktoken.Encoding(name, pat_str=self.pat_str, mergeable_ranks=self.mergeable_ranks,
                                 special_tokens=self.special_tokens)

    @classmethod
    def from_tiktoken(cls, enc) -> "Tokenizer":
        """From a ``tiktoken.Encoding`` (its ranks, pattern and special tokens)."""
        ranks = enc._mergeable_ranks
        tokens = [b""] * len(ranks)
        for t, r in ranks.items():
            if not 0 <= r < len(ranks):
                raise ValueError(f"tiktoken ranks are not contiguous 0..{len(ranks) - 1} (rank {r})")
            tokens[r] = t
        return cls(tokens, pattern=enc._pat_str, special_tokens=dict(enc._special_tokens))

    def save_hf(self, path: str) -> None:
        """Write a Hugging Face ``tokenizer.json`` (ByteLevel BPE) giving identical ids."""
        from fastlm.tokenizer import hf

        hf.save_hf(self, path)

    @classmethod
    def from_hf(cls, path: str) -> "Tokenizer":
        """Load a Hugging Face ByteLevel BPE ``tokenizer.json`` (GPT-2 style: vocab + merges)."""
        from fastlm.tokenizer import hf

        return hf.load_hf(path)

    def __repr__(self) -> str:
        return f"Tokenizer(n_vocab={self.n_vocab}, pattern={self.pattern_name or 'custom'!r}, specials={len(self._specials)})"


def load(path: str) -> Tokenizer:
    """Load a tokenizer from a file or ``tok/`` directory (fastlm, HF tokenizer.json or sentencepiece)."""
    from fastlm.tokenizer import formats

    return formats.load(path)
