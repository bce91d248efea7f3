"""The sentencepiece backend (BPE or unigram) behind the Tokenizer interface.

Trained with sentencepiece's Python API from any text iterator (documents are fed line by line,
a line longer than sentencepiece's sentence limit in pieces), with settings that make it lossless:
identity normalization, no dummy prefix, whitespace kept, byte fallback for unseen characters.
Special tokens are user-defined symbols; as with the BPE backend they are only produced when
allowed (``encode``'s policy), never from ordinary text.
Saved in the fastlm file format: the JSON header plus one line of base64 serialized model.

Ids and decodes equal those of a ``sentencepiece.SentencePieceProcessor`` loaded from
``model_proto()``, except, deliberately:
- a literal U+2581 (sentencepiece's whitespace symbol, which it would decode as a space) is
  encoded as its three byte pieces, so that it round-trips;
- special-token text in ordinary text (``encode_ordinary``, or not allowed) is encoded as ordinary
  pieces: split after its first character, or as byte pieces for a one-character special token
  (sentencepiece always matches user-defined symbols); an allowed special token that contains a
  space is produced, though sentencepiece never matches one;
- lone surrogates become U+FFFD, as in the BPE backend (sentencepiece refuses them).
"""

from __future__ import annotations

import io
import os
import re
from typing import AbstractSet, Collection, Iterable, Literal, Union

import numpy as np

from fastlm.data.io import MissingDependencyError
from fastlm.tokenizer._backend import fix_surrogates
from fastlm.data.records import check_num_threads
from fastlm.tokenizer.core import Tokenizer, _check_text, _text_list, flat_ids

_META = "\u2581"  # sentencepiece's whitespace symbol: U+2581 in a piece stands for a space
_MAX_LINE_BYTES = 1 << 16  # sentencepiece's max_sentence_length: longer lines would be dropped from training
# sentencepiece decodes each byte of invalid UTF-8 to its own U+FFFD; Python's "replace" gives one
# per maximal invalid subpart (b"\xe2\x82" is one, not two): decode with surrogateescape, then map
_ESCAPED_TO_FFFD = {0xDC00 + b: "\ufffd" for b in range(0x80, 0x100)}


def _require():
    try:
        import sentencepiece
    except ImportError as e:
        raise MissingDependencyError(
            "the sentencepiece backend needs the sentencepiece package: pip install sentencepiece"
        ) from e
    return sentencepiece


def _lines(texts: Iterable[str]):
    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"train_from_iterator expects str items, got {type(t).__name__}")
        for line in fix_surrogates(t).splitlines():
            if not line.strip():
                continue
            # sentencepiece silently skips a line past max_sentence_length bytes: feed it in pieces
            # of at most _MAX_LINE_BYTES // 4 characters (4 UTF-8 bytes at most each)
            step = _MAX_LINE_BYTES // 4
            for i in range(0, len(line), step):
                yield line[i : i + step]


def _check_special(s) -> None:
    if not isinstance(s, str) or not s:
        raise ValueError(f"special token {s!r} must be a non-empty string")
    if _META in s:  # sentencepiece would match it against spaces in text and decode it with spaces
        raise ValueError(f"special token {s!r} contains U+2581, sentencepiece's whitespace symbol; rename it")


def _train(spm, texts, model, vocab_size, model_type, special_tokens, num_threads) -> None:
    # lossless settings: identity normalization, no dummy prefix, whitespace kept, byte fallback
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        user_defined_symbols=list(special_tokens), byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=False, allow_whitespace_only_pieces=True,
        max_sentence_length=_MAX_LINE_BYTES, hard_vocab_limit=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        num_threads=num_threads or (os.cpu_count() or 1), minloglevel=2,
    )


def _training_error(e: RuntimeError, vocab_size: int, n_special: int) -> ValueError:
    """sentencepiece's training errors (internal CHECKs) in words where we know what they mean."""
    msg = str(e)
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return ValueError(f"vocab_size {vocab_size} is too small for this text: sentencepiece needs at least "
                          f"{m.group(2)} ids (<unk>, 256 byte pieces, {n_special} special tokens and each "
                          "character of the text)")
    if "!sentences_.empty()" in msg:
        return ValueError("no text to train on: the texts have no non-blank line")
    return ValueError(f"sentencepiece training failed: {msg}")


def _id_list(ids) -> list[int]:
    """``ids`` as a list of ints: one flat sequence of integers (no floats, bools or nesting)."""
    arr = flat_ids(ids)
    out = arr.tolist()
    if arr.size and arr.dtype.kind not in "iu":  # floats, bools, strings, Python ints past int64
        for i in out:
            if not isinstance(i, int) or isinstance(i, bool):
                raise ValueError(f"token ids must be integers, got {i!r}")
    return out


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model with the Tokenizer API (encode/decode/batch/special-token policy/save).

    >>> tok = SentencePieceTokenizer.train_from_iterator(["hello world"] * 50, 300, special_tokens=["<|bos|>"])
    >>> tok.decode(tok.encode("hello world"))
    'hello world'
    """

    backend = "sentencepiece"

    def __init__(self, proto: bytes, special_tokens: Collection[str], model_type: str):
        spm = _require()
        self._proto = bytes(proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.model_type = model_type
        self.pattern_name, self.pat_str, self.pattern = None, "", "sentencepiece"
        for s in special_tokens:
            _check_special(s)
        self._specials = {s: self._sp.piece_to_id(s) for s in special_tokens}
        sp = self._sp
        for s, i in self._specials.items():
            # a user-defined symbol: not <unk> (what an unknown piece maps to), a control or byte piece
            if sp.id_to_piece(i) != s or sp.is_unknown(i) or sp.is_control(i) or sp.is_byte(i) or sp.is_unused(i):
                raise ValueError(f"sentencepiece model lacks the special token {s!r} (as a user-defined symbol)")
        self._special_by_id = {i: s.encode("utf-8") for s, i in self._specials.items()}
        self._special_re_cache = {}
        # sentencepiece's surface of <unk> (" \u2047 " unless the model says otherwise): its decode
        self._unk_bytes = sp.decode([sp.unk_id()]).encode("utf-8")
        # characters that sentencepiece would not encode as themselves in ordinary text, encoded as
        # their UTF-8 byte pieces instead: U+2581 (read as a space) and, where special-token text is
        # ordinary text, one-character special tokens (user-defined symbols always match); longer
        # special tokens are cut after their first character there
        self._meta_re = re.compile(_META)
        self._byte_re = re.compile("|".join(map(re.escape, sorted({_META} | {s for s in self._specials if len(s) == 1}))))
        self._cut_specials = {s for s in self._specials if len(s) > 1}
        self._spaced_specials = {s for s in self._specials if " " in s}
        byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        self._byte_ids = byte_ids if all(sp.is_byte(i) for i in byte_ids) else None  # None: no byte fallback
        self._table = None  # each id's bytes, built on first use (_token_table)

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int, *, special_tokens: Collection[str] = (),
                            model_type: str = "bpe", num_threads: int = 0, **_ignored) -> "SentencePieceTokenizer":
        """Train a sentencepiece model (``model_type`` "bpe" or "unigram") on texts from an iterator."""
        spm = _require()
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        check_num_threads(num_threads)
        special_tokens = list(special_tokens)
        for s in special_tokens:
            _check_special(s)
        model = io.BytesIO()
        try:
            _train(spm, texts, model, int(vocab_size), model_type, special_tokens, num_threads)
        except RuntimeError as e:  # sentencepiece reports bad settings (e.g. vocab too small) this way
            raise _training_error(e, vocab_size, len(special_tokens)) from None
        return cls(model.getvalue(), special_tokens, model_type)

    @classmethod
    def from_proto(cls, proto: bytes, header: dict) -> "SentencePieceTokenizer":
        """From a serialized model and its fastlm header (special-token ids, n_vocab checked)."""
        model_type = header.get("model_type", "bpe")
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"header model_type must be 'bpe' or 'unigram', got {model_type!r}")
        specials = header.get("special_tokens", {})
        tok = cls(proto, list(specials), model_type)
        for s, i in specials.items():
            if tok._specials[s] != i:
                raise ValueError(f"header gives special token {s!r} id {i!r}, the model {tok._specials[s]}")
        if header.get("n_vocab", tok.n_vocab) != tok.n_vocab:
            raise ValueError(f"header n_vocab {header['n_vocab']!r} != {tok.n_vocab} pieces in the model")
        return tok

    def model_proto(self) -> bytes:
        return self._proto

    def header(self) -> dict:
        from fastlm.tokenizer.formats import FORMAT_NAME, FORMAT_VERSION

        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "backend": "sentencepiece",
                "model_type": self.model_type, "pattern": None, "pat_str": "", "n_vocab": self.n_vocab,
                "special_tokens": self.special_tokens}

    @property
    def n_vocab(self) -> int:
        return self._sp.get_piece_size()

    @property
    def n_mergeable(self) -> int:
        return self.n_vocab

    @property
    def tokens(self) -> list[bytes]:
        return list(self._token_table())

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        raise NotImplementedError("a sentencepiece model has no byte-level ranks")

    def _token_table(self) -> list[bytes]:
        """Each id's bytes as sentencepiece decodes it, built once (decode looks ids up here)."""
        if self._table is None:
            sp = self._sp
            table = []
            for i in range(self.n_vocab):
                if sp.is_byte(i):
                    table.append(bytes([int(sp.id_to_piece(i)[1:-1], 16)]))
                elif i in self._special_by_id:
                    table.append(self._special_by_id[i])
                elif sp.is_control(i):  # <s>, </s>: sentencepiece decodes them to nothing
                    table.append(b"")
                elif sp.is_unknown(i):  # decoded as its surface, " \u2047 ", not as "<unk>"
                    table.append(self._unk_bytes)
                else:
                    table.append(sp.id_to_piece(i).replace(_META, " ").encode("utf-8"))
            self._table = table
        return self._table

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id, as sentencepiece decodes it (``<unk>`` is its surface " \u2047 ")."""
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise ValueError(f"token ids must be integers, got {token_id!r}")
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is not in the vocabulary (n_vocab {self.n_vocab})")
        return self._token_table()[int(token_id)]

    def token_to_id(self, token: Union[str, bytes]) -> int:
        """The id of a piece (a space may stand for U+2581) or special token; one byte that is no
        piece of its own gives its byte piece; KeyError if absent."""
        try:
            piece = token.decode("utf-8") if isinstance(token, bytes) else token
        except UnicodeDecodeError:
            piece = None
        if piece is not None:
            i = self._sp.piece_to_id(piece.replace(" ", _META))
            if not (i == self._sp.unk_id() and piece != self._sp.id_to_piece(i)):
                return i
        if isinstance(token, bytes) and len(token) == 1 and self._byte_ids is not None:
            return self._byte_ids[token[0]]
        raise KeyError(token)

    # ---- encoding: a text becomes a plan, strings for sentencepiece and ids decided here ----------

    def _plan_bytes(self, text: str, byte_re, plan: list) -> None:
        """Append ``text`` to ``plan`` as strings for sentencepiece and, for each match of
        ``byte_re``, the list of its UTF-8 byte pieces."""
        pos = 0
        for m in byte_re.finditer(text):
            if m.start() > pos:
                plan.append(text[pos : m.start()])
            if self._byte_ids is None:
                raise ValueError(f"this sentencepiece model has no byte pieces, so it cannot encode {m.group()!r} losslessly")
            plan.append([self._byte_ids[b] for b in m.group().encode("utf-8")])
            pos = m.end()
        if pos < len(text):
            plan.append(text[pos:])

    def _plan_ordinary(self, text: str, plan: list) -> None:
        """Append ordinary ``text`` to ``plan``, cut after the first character of every special-token
        occurrence (overlapping ones too) so that no string for sentencepiece contains one, and with
        one-character special tokens as byte pieces."""
        cuts = [len(text)]
        if self._cut_specials:
            found = self._special_regex(self._cut_specials).finditer(text, overlapped=True)
            cuts = sorted({m.start() + 1 for m in found}) + cuts
        start = 0
        for cut in cuts:
            self._plan_bytes(text[start:cut], self._byte_re, plan)
            start = cut

    def _plan(self, text: str, allowed: AbstractSet[str]) -> list:
        """``text`` as a plan: strings that sentencepiece encodes, and lists of ids decided here."""
        text = fix_surrogates(text)  # lone surrogates -> U+FFFD, as the BPE backend (sentencepiece refuses them)
        plan: list = []
        # special tokens that sentencepiece must not match here: those not allowed, and those with a
        # space (sentencepiece compares them with text whose spaces are U+2581: it never matches them)
        others = (self._specials.keys() - allowed) | self._spaced_specials
        if not others or not self._special_regex(others).search(text):
            # the only special-token text is allowed: sentencepiece matches it (leftmost longest, as
            # _special_regex) in one call over the text, giving exactly sentencepiece's ids; encoding
            # the parts between special tokens one by one could break a unigram tie the other way
            self._plan_bytes(text, self._meta_re, plan)
            return plan
        start = 0
        if allowed:
            for m in self._special_regex(allowed).finditer(text):
                self._plan_ordinary(text[start : m.start()], plan)
                plan.append([self._specials[m.group()]])
                start = m.end()
        self._plan_ordinary(text[start:], plan)
        return plan

    def _run_plans(self, plans: list[list], num_threads: int) -> list[list[int]]:
        """Encode all plans' strings in one sentencepiece batch (its thread pool), then assemble."""
        strings = [p for plan in plans for p in plan if isinstance(p, str)]
        if len(strings) == 1:
            encoded = iter([self._sp.encode(strings[0])])
        else:
            encoded = iter(self._sp.encode(strings, num_threads=num_threads or (os.cpu_count() or 1)) if strings else [])
        return [[i for p in plan for i in (next(encoded) if isinstance(p, str) else p)] for plan in plans]

    def _encode_one(self, text: str, allowed: AbstractSet[str]) -> list[int]:
        return self._run_plans([self._plan(text, allowed)], 1)[0]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as ordinary text (sentencepiece's ids otherwise).

        >>> tok = SentencePieceTokenizer.train_from_iterator(["ab ab"] * 20, 300, special_tokens=["<|bos|>"])
        >>> tok.decode(tok.encode_ordinary("<|bos|>")) == "<|bos|>" and tok.special_id("<|bos|>") not in tok.encode_ordinary("<|bos|>")
        True
        """
        _check_text(text)
        return self._encode_one(text, frozenset())

    def encode_batch(self, texts: list[str], *, num_threads: int = 0,
                     allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
                     disallowed_special: Union[Literal["all"], Collection[str]] = "all", as_numpy: bool = False) -> list:
        """Encode many texts with sentencepiece's thread pool (``num_threads`` 0 = all cores); equals a loop of encode."""
        texts = _text_list(texts)
        check_num_threads(num_threads)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        for t in texts:
            self._check_disallowed(t, disallowed)
        out = self._run_plans([self._plan(t, allowed) for t in texts], int(num_threads))
        return [np.array(o, dtype=np.uint32) for o in out] if as_numpy else out

    # ---- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table, n = self._token_table(), self.n_vocab
        out = []
        for i in _id_list(ids):
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is not in the vocabulary (n_vocab {n})")
            out.append(table[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int], *, errors: str = "replace") -> str:
        """Decode ids to text as sentencepiece does: each byte of invalid UTF-8 becomes one U+FFFD
        (``errors`` other than "replace" are Python's: "strict" raises)."""
        data = self.decode_bytes(ids)
        if errors != "replace":
            return data.decode("utf-8", errors)
        return data.decode("utf-8", "surrogateescape").translate(_ESCAPED_TO_FFFD)

    def save_hf(self, path: str) -> None:
        raise NotImplementedError("HF export is for byte-level BPE tokenizers; save the sentencepiece model instead")

    def to_tiktoken(self, name: str = "fastlm"):
        raise NotImplementedError("tiktoken export is for byte-level BPE tokenizers")

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(n_vocab={self.n_vocab}, model_type={self.model_type!r})"
