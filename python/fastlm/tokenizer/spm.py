"""The sentencepiece backend (BPE or unigram) behind the Tokenizer interface.

Trained with sentencepiece's Python API from any text iterator (documents are fed line by line),
with settings that make it lossless: identity normalization, no dummy prefix, whitespace kept,
byte fallback for unseen characters. Special tokens are user-defined symbols; as with the BPE
backend they are only produced when allowed (``encode``'s policy), never from ordinary text.
Saved in the fastlm file format: the JSON header plus one line of base64 serialized model.
"""

from __future__ import annotations

import io
import os
from typing import AbstractSet, Collection, Iterable, Literal, Union

import numpy as np

from fastlm.data.io import MissingDependencyError
from fastlm.tokenizer._backend import fix_surrogates
from fastlm.tokenizer.core import Tokenizer

_META = "\u2581"  # sentencepiece's whitespace symbol: U+2581 in a piece stands for a space


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
            if line.strip():
                yield line


def _train(spm, texts, model, vocab_size, model_type, special_tokens, num_threads) -> None:
    # lossless settings: identity normalization, no dummy prefix, whitespace kept, byte fallback
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        user_defined_symbols=list(special_tokens), byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=False, allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16, hard_vocab_limit=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        num_threads=num_threads or (os.cpu_count() or 1), minloglevel=2,
    )


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
        self._specials = {s: self._sp.piece_to_id(s) for s in special_tokens}
        for s, i in self._specials.items():
            if self._sp.id_to_piece(i) != s:
                raise ValueError(f"sentencepiece model lacks the special token {s!r}")
        self._special_by_id = {i: s.encode("utf-8") for s, i in self._specials.items()}
        self._special_re_cache = {}
        # a literal U+2581 in text is encoded as its UTF-8 byte pieces (sentencepiece reads it as a space)
        self._meta_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode("utf-8")]
        if not all(self._sp.is_byte(i) for i in self._meta_ids):
            self._meta_ids = None  # a model without byte fallback: such text cannot round-trip

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int, *, special_tokens: Collection[str] = (),
                            model_type: str = "bpe", num_threads: int = 0, **_ignored) -> "SentencePieceTokenizer":
        """Train a sentencepiece model (``model_type`` "bpe" or "unigram") on texts from an iterator."""
        spm = _require()
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        model = io.BytesIO()
        try:
            _train(spm, texts, model, vocab_size, model_type, special_tokens, num_threads)
        except RuntimeError as e:  # sentencepiece reports bad settings (e.g. vocab too small) this way
            raise ValueError(f"sentencepiece training failed: {e}") from None
        return cls(model.getvalue(), special_tokens, model_type)

    @classmethod
    def from_proto(cls, proto: bytes, header: dict) -> "SentencePieceTokenizer":
        return cls(proto, list(header.get("special_tokens", {})), header.get("model_type", "bpe"))

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
        return [self.token_bytes(i) for i in range(self.n_vocab)]

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        raise NotImplementedError("a sentencepiece model has no byte-level ranks")

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is not in the vocabulary (n_vocab {self.n_vocab})")
        if self._sp.is_byte(token_id):
            return bytes([int(self._sp.id_to_piece(token_id)[1:-1], 16)])
        if token_id in self._special_by_id:
            return self._special_by_id[token_id]
        return self._sp.id_to_piece(token_id).replace(_META, " ").encode("utf-8")

    def token_to_id(self, token: Union[str, bytes]) -> int:
        piece = token.decode("utf-8") if isinstance(token, bytes) else token
        i = self._sp.piece_to_id(piece.replace(" ", _META))
        if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i):
            raise KeyError(token)
        return i

    def encode_ordinary(self, text: str) -> list[int]:
        # user-defined symbols always match inside sentencepiece: cut each special string after its
        # first character so that its text is encoded as ordinary pieces
        text = fix_surrogates(text)  # lone surrogates -> U+FFFD, as the BPE backend (sentencepiece refuses them)
        if not self._specials:
            return self._sp_encode(text)
        out: list[int] = []
        start = 0
        for m in self._special_regex(set(self._specials)).finditer(text):
            out.extend(self._sp_encode(text[start : m.start() + 1]))
            start = m.start() + 1
        out.extend(self._sp_encode(text[start:]))
        return out

    def _sp_encode(self, text: str) -> list[int]:
        """sentencepiece's ids of ``text``, except that each literal U+2581 (which sentencepiece takes
        for its whitespace symbol and would decode as a space) becomes its three byte pieces."""
        if _META not in text:
            return self._sp.encode(text)
        if self._meta_ids is None:
            raise ValueError("this sentencepiece model has no byte pieces, so it cannot encode U+2581 losslessly")
        out: list[int] = []
        for i, part in enumerate(text.split(_META)):
            if i:
                out.extend(self._meta_ids)
            if part:
                out.extend(self._sp.encode(part))
        return out

    def encode_batch(self, texts: list[str], *, num_threads: int = 0,
                     allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
                     disallowed_special: Union[Literal["all"], Collection[str]] = "all", as_numpy: bool = False) -> list:
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        for t in texts:
            self._check_disallowed(t, disallowed)
        out = [self._encode_one(t, allowed) for t in texts]
        return [np.array(o, dtype=np.uint32) for o in out] if as_numpy else out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def save_hf(self, path: str) -> None:
        raise NotImplementedError("HF export is for byte-level BPE tokenizers; save the sentencepiece model instead")

    def to_tiktoken(self, name: str = "fastlm"):
        raise NotImplementedError("tiktoken export is for byte-level BPE tokenizers")

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(n_vocab={self.n_vocab}, model_type={self.model_type!r})"
