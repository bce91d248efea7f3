"""Token shards for pretraining: ``<prefix>-NNNNN.bin`` raw ids, ``.idx`` document offsets, ``.json`` header.

- ``.bin``: the token ids of consecutive documents, little-endian uint16 when the vocabulary has at
  most 65536 ids, else uint32 (read with ``numpy.memmap(path, dtype)``);
- ``.idx``: uint64 offsets (in tokens) of document boundaries, ``n_docs + 1`` values starting at 0;
- ``.json``: ``{"format": "fastlm-tokens", "version": 1, "dtype", "vocab_size", "tokenizer_sha256",
  "n_tokens", "n_docs", "bin", "idx"}``.

Every file is written atomically (temp file + rename), the header last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Callable, Iterable, Literal, Optional

import numpy as np

from fastlm.data.io import atomic_write

FORMAT_NAME = "fastlm-tokens"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32.

    >>> token_dtype(50000).name, token_dtype(70000).name
    ('uint16', 'uint32')
    """
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TokenShardWriter:
    """Append documents' ids; a shard is closed once it holds ``shard_tokens`` tokens (documents are
    never split) and at ``close()``.

    >>> import tempfile
    >>> w = TokenShardWriter(tempfile.mkdtemp(), vocab_size=300, tokenizer_sha256="x")
    >>> w.add([1, 2, 3]); paths = w.close(); len(paths)
    1
    """

    def __init__(self, out_dir: str, *, vocab_size: int, tokenizer_sha256: str, prefix: str = "tokens",
                 shard_tokens: int = 100_000_000):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        if not 1 <= vocab_size <= 1 << 32:  # ids beyond uint32 would wrap silently
            raise ValueError(f"vocab_size must be in [1, 2**32], got {vocab_size}")
        self.out_dir, self.prefix, self.shard_tokens = out_dir, prefix, shard_tokens
        self.vocab_size, self.sha = vocab_size, tokenizer_sha256
        self.dtype = token_dtype(vocab_size)
        self.parts: list[np.ndarray] = []
        self.offsets = [0]
        self.index = 0
        self.written: list[str] = []
        self.total_tokens = 0
        self.total_docs = 0
        os.makedirs(out_dir, exist_ok=True)

    def add(self, ids) -> None:
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):  # floats would be truncated silently
            raise ValueError(f"a document's ids must be a 1-D sequence of integers, got shape {arr.shape} {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        self.parts.append(arr.astype(self.dtype, copy=False))
        self.offsets.append(self.offsets[-1] + arr.size)
        if self.offsets[-1] >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if len(self.offsets) == 1:
            return
        stem = os.path.join(self.out_dir, f"{self.prefix}-{self.index:05d}")
        tokens = np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)
        with atomic_write(stem + ".bin", "wb") as f:
            f.write(tokens.tobytes())
        with atomic_write(stem + ".idx", "wb") as f:
            f.write(np.asarray(self.offsets, dtype="<u8").tobytes())
        header = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "dtype": self.dtype.name, "vocab_size": self.vocab_size,
            "tokenizer_sha256": self.sha, "n_tokens": int(tokens.size), "n_docs": len(self.offsets) - 1,
            "bin": os.path.basename(stem + ".bin"), "idx": os.path.basename(stem + ".idx"),
        }
        with atomic_write(stem + ".json") as f:
            json.dump(header, f, indent=1)
            f.write("\n")
        self.total_tokens += int(tokens.size)
        self.total_docs += len(self.offsets) - 1
        self.written.append(stem + ".json")
        self.parts, self.offsets = [], [0]
        self.index += 1

    def close(self) -> list[str]:
        """Write the last shard and remove this prefix's shards left from an earlier, longer run in
        the same directory (readers take every header there); returns the header paths."""
        self.flush()
        stale = re.compile(re.escape(self.prefix) + r"-(\d{5,})\.json")
        for name in sorted(os.listdir(self.out_dir)):
            m = stale.fullmatch(name)
            if m and int(m.group(1)) >= self.index:
                stem = os.path.join(self.out_dir, name[:-len(".json")])
                for ext in (".json", ".bin", ".idx"):  # the header first: no header, no shard
                    if os.path.exists(stem + ext):
                        os.remove(stem + ext)
        return self.written


def read_shard(header_path: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(header, tokens memmap, offsets)`` of one shard (by its ``.json`` header)."""
    with open(header_path, encoding="utf-8") as f:
        try:
            header = json.load(f)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{header_path}: not a {FORMAT_NAME} header (not JSON: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{header_path}: not a {FORMAT_NAME} header")
    for key, kind in (("dtype", str), ("n_tokens", int), ("n_docs", int), ("bin", str), ("idx", str)):
        if not isinstance(header.get(key), kind):
            raise ValueError(f"{header_path}: header field {key!r} is missing or not a {kind.__name__}")
    if header["dtype"] not in ("uint16", "uint32"):
        raise ValueError(f"{header_path}: dtype {header['dtype']!r} is not uint16 or uint32")
    d = os.path.dirname(header_path)
    dtype = np.dtype(header["dtype"]).newbyteorder("<")
    bin_path = os.path.join(d, header["bin"])
    if header["n_tokens"] and os.path.getsize(bin_path) != header["n_tokens"] * dtype.itemsize:
        raise ValueError(f"{header_path}: {header['bin']} holds {os.path.getsize(bin_path)} bytes, not "
                         f"{header['n_tokens']} {header['dtype']} tokens")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if header["n_tokens"] else np.zeros(0, dtype)
    offsets = np.fromfile(os.path.join(d, header["idx"]), dtype="<u8")
    if tokens.size != header["n_tokens"] or offsets.size != header["n_docs"] + 1:
        raise ValueError(f"{header_path}: sizes of .bin/.idx do not match the header")
    return header, tokens, offsets


@dataclasses.dataclass
class EncodeStats:
    """What `encode_to_shards` wrote."""
    headers: list[str]  # shard header paths
    docs: int           # documents encoded
    bytes: int          # UTF-8 bytes of their text
    tokens: int         # ids written (separators included)


def encode_to_shards(tok, texts: Iterable[str], out_dir: str, *, tokenizer_sha256: str,
                     separator_id: Optional[int] = None, separator_at: Literal["start", "end"] = "start",
                     shard_tokens: int = 100_000_000, batch_docs: int = 256, num_threads: int = 0,
                     progress: Optional[Callable[[int, int], None]] = None) -> EncodeStats:
    """Encode documents (ordinary text: special-token text stays text) into token shards in ``out_dir``,
    ``separator_id`` before (or after) each one; ``progress(docs, bytes)`` after each batch.

    >>> import tempfile
    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer.train_from_iterator(["ab ab"] * 3, 300)
    >>> st = encode_to_shards(tok, ["ab", "ab ab"], tempfile.mkdtemp(), tokenizer_sha256="x",
    ...                       separator_id=tok.special_tokens["<|bos|>"])
    >>> st.docs, st.tokens
    (2, 5)
    """
    if batch_docs < 1:
        raise ValueError(f"batch_docs must be >= 1, got {batch_docs}")
    writer = TokenShardWriter(out_dir, vocab_size=tok.n_vocab, tokenizer_sha256=tokenizer_sha256,
                              shard_tokens=shard_tokens)
    sep = None if separator_id is None else np.array([separator_id], dtype=writer.dtype)
    docs = nbytes = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal docs, nbytes
        for ids in tok.encode_ordinary_batch(batch, num_threads=num_threads, as_numpy=True):
            if sep is None:
                writer.add(ids)
            elif separator_at == "start":
                writer.add(np.concatenate((sep, ids.astype(writer.dtype, copy=False))))
            else:
                writer.add(np.concatenate((ids.astype(writer.dtype, copy=False), sep)))
        docs += len(batch)
        nbytes += sum(len(t.encode("utf-8", "surrogatepass")) for t in batch)
        batch.clear()
        if progress is not None:
            progress(docs, nbytes)

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_docs:
            flush()
    if batch:
        flush()
    headers = writer.close()
    return EncodeStats(headers=headers, docs=docs, bytes=nbytes, tokens=writer.total_tokens)
