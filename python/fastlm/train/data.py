"""Causal-LM batches from token shards, read through ``numpy.memmap`` (the corpus is never loaded).

``TokenDataset`` concatenates shards (headers checked for one tokenizer and dtype, every id checked against the
header's vocab_size once, when the shard is opened); ``random_windows`` draws
``(x, y)`` windows anywhere in the stream; ``PackedBatches`` walks documents in a seeded order, packed
back to back, each rank taking its own disjoint share, with a resumable position.
"""

from __future__ import annotations

import glob
import json
import os
from fractions import Fraction
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from fastlm.tokenizer.shards import FORMAT_NAME, read_shard


def _header_paths(paths: Union[str, Sequence[str]]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in map(str, paths):
        if os.path.isdir(p):
            for h in sorted(glob.glob(os.path.join(p, "*.json"))):
                try:
                    with open(h, encoding="utf-8") as f:
                        if json.load(f).get("format") == FORMAT_NAME:
                            out.append(h)
                except (ValueError, OSError):
                    continue
        else:
            out.append(p)
    if not out:
        raise ValueError(f"no {FORMAT_NAME} shard headers in {list(map(str, paths))}")
    return out


_CHECKED: set[tuple] = set()  # (.bin path, size, mtime) of the shards whose ids `_check_ids` has checked


def _check_ids(path: str, header: dict, tokens: np.ndarray) -> None:
    """Every id of a shard below its header's vocab_size. An id past it would reach the embedding many steps
    into a run: on a GPU a device-side assert that kills the process and names nothing, on the CPU an error
    that names no file. One ``max`` over the memmap: measured 0.013 s per 100M uint16 tokens in the page cache
    (2-core CPU); a cold shard costs one read of its .bin. Once per process per unchanged .bin (a run opens
    its shards two or three times)."""
    vocab = header.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(f"{path}: header field 'vocab_size' is missing or not a positive integer: {vocab!r}")
    bin_path = getattr(tokens, "filename", None)
    key = None
    if bin_path:
        st = os.stat(bin_path)
        key = (os.path.realpath(bin_path), st.st_size, st.st_mtime_ns, vocab)
        if key in _CHECKED:
            return
    if tokens.size and int(tokens.max()) >= vocab:
        at = int(np.argmax(tokens >= vocab))
        raise ValueError(f"{path}: token id {int(tokens[at])} (token {at} of {header['bin']}) is outside the "
                         f"shard's vocabulary [0, {vocab}): the shard is corrupt or was not written by this "
                         "tokenizer; re-encode it (fastlm tokenizer encode)")
    if key is not None:
        _CHECKED.add(key)


class TokenDataset:
    """Token shards (``.json`` headers or folders of them) seen as one stream of ids and documents.

    >>> import tempfile
    >>> from fastlm.tokenizer.shards import TokenShardWriter
    >>> w = TokenShardWriter(tempfile.mkdtemp(), vocab_size=300, tokenizer_sha256="x")
    >>> w.add([1, 2, 3]); w.add([4, 5]); ds = TokenDataset(w.close())
    >>> ds.n_tokens, ds.n_docs, ds.document(1).tolist()
    (5, 2, [4, 5])
    """

    def __init__(self, paths: Union[str, Sequence[str]]):
        self.paths = _header_paths(paths)
        self.shards: list[np.ndarray] = []
        doc_offsets = []
        first: Optional[dict] = None
        base = 0
        for path in self.paths:
            header, tokens, offsets = read_shard(path)
            if first is None:
                first = header
            else:
                for key in ("tokenizer_sha256", "dtype", "vocab_size"):
                    if header.get(key) != first.get(key):
                        raise ValueError(f"{path}: {key} {header.get(key)!r} differs from {first.get(key)!r} "
                                         f"of {self.paths[0]}")
            steps = np.diff(offsets.astype(np.int64))
            if offsets.size and (offsets[0] != 0 or offsets[-1] != tokens.size or np.any(steps < 0)):
                raise ValueError(f"{path}: .idx offsets are not increasing from 0 to n_tokens")
            _check_ids(path, header, tokens)
            self.shards.append(tokens)
            doc_offsets.append(offsets[1:].astype(np.int64) + base)
            base += int(tokens.size)
        assert first is not None
        self.header = first
        self.vocab_size: int = int(first["vocab_size"])
        self.tokenizer_sha256: str = first["tokenizer_sha256"]
        self.n_tokens = base
        # start of each shard in the stream, and document boundaries (n_docs + 1 values)
        self.shard_starts = np.cumsum([0] + [s.size for s in self.shards]).astype(np.int64)
        self.doc_offsets = np.concatenate([np.zeros(1, np.int64)] + doc_offsets)
        self.n_docs = int(self.doc_offsets.size - 1)

    def __len__(self) -> int:
        return self.n_tokens

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Ids ``[start, stop)`` of the stream as int64 (crossing shard boundaries)."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.n_tokens})")
        out = np.empty(stop - start, np.int64)
        i = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            s0 = int(self.shard_starts[i])
            take = min(stop, int(self.shard_starts[i + 1])) - pos
            out[pos - start:pos - start + take] = self.shards[i][pos - s0:pos - s0 + take]
            pos += take
            i += 1
        return out

    def document(self, i: int) -> np.ndarray:
        """Ids of document ``i`` (separator tokens included, as written by ``fastlm tokenizer encode``)."""
        return self.tokens(int(self.doc_offsets[i]), int(self.doc_offsets[i + 1]))

    def random_windows(self, batch: int, seq_len: int, *, generator: Optional[torch.Generator] = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` int64 ``[batch, seq_len]`` from uniformly random starts; ``y`` is ``x`` shifted by one.

        >>> import tempfile
        >>> from fastlm.tokenizer.shards import TokenShardWriter
        >>> w = TokenShardWriter(tempfile.mkdtemp(), vocab_size=300, tokenizer_sha256="x"); w.add(list(range(50)))
        >>> x, y = TokenDataset(w.close()).random_windows(2, 8, generator=torch.Generator().manual_seed(0))
        >>> bool((x[:, 1:] == y[:, :-1]).all()), x.dtype
        (True, torch.int64)
        """
        if self.n_tokens < seq_len + 1:
            raise ValueError(f"the shards hold {self.n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        starts = torch.randint(0, self.n_tokens - seq_len, (batch,), generator=generator).tolist()
        buf = np.stack([self.tokens(s, s + seq_len + 1) for s in starts])
        t = torch.from_numpy(buf)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class PackedBatches:
    """Sequential document-packed ``(x, y)`` batches for one rank, resumable and deterministic for a seed.

    Each epoch orders the documents by a permutation seeded with ``(seed, epoch)`` (or keeps file order when
    ``shuffle=False``); rank ``r`` takes documents ``r, r + world_size, ...`` of that order, so ranks never
    share a document. A rank's documents are concatenated; each row takes ``seq_len + 1`` tokens and the
    cursor moves by ``seq_len`` (every token is a target once). Iterating never ends (epochs follow).
    With ``return_doc_ids`` each batch is ``(x, y, doc_ids)``: ``epoch * n_docs + document index`` of each
    ``x`` token (unique across epochs), for ``fastlm.train.collate.block_causal_mask``.

    >>> import tempfile
    >>> from fastlm.tokenizer.shards import TokenShardWriter
    >>> w = TokenShardWriter(tempfile.mkdtemp(), vocab_size=300, tokenizer_sha256="x")
    >>> for d in range(10): w.add([d] * 7)
    >>> it = PackedBatches(TokenDataset(w.close()), batch=2, seq_len=4, seed=1)
    >>> x, y = next(it); x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([2, 4]), True)
    """

    def __init__(self, dataset: TokenDataset, *, batch: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, return_doc_ids: bool = False,
                 docs: Optional[np.ndarray] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if batch < 1 or seq_len < 1:
            raise ValueError("batch and seq_len must be >= 1")
        # the documents this loader walks (default all; e.g. the train side of `holdout_split`)
        self.docs = (np.arange(dataset.n_docs, dtype=np.int64) if docs is None
                     else np.asarray(docs, dtype=np.int64))
        if self.docs.size < world_size:
            raise ValueError(f"{self.docs.size} documents cannot be split over {world_size} ranks")
        self.ds, self.batch, self.seq_len = dataset, batch, seq_len
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.return_doc_ids = return_doc_ids
        self.epoch = 0
        self.doc = 0          # index into this rank's document order
        self.offset = 0       # token offset inside that document
        self._order_epoch = -1
        self._order = np.zeros(0, np.int64)
        lengths = np.diff(dataset.doc_offsets)[self.docs]
        self.n_tokens = int(lengths.sum())  # of these documents: with n_docs, tells another corpus apart
        if self.n_tokens == 0:
            raise ValueError("the shards hold no tokens")
        if self.n_tokens < seq_len + 1:  # a row would hold the same tokens several times (epochs over)
            raise ValueError(f"the documents hold {self.n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}")

    def order(self, epoch: int) -> np.ndarray:
        """This rank's document indices for ``epoch``."""
        if epoch != self._order_epoch:
            docs = self.docs
            if self.shuffle:
                docs = np.random.default_rng([self.seed, epoch]).permutation(docs)
            self._order, self._order_epoch = docs[self.rank::self.world_size], epoch
        return self._order

    def _read(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` tokens of this rank's stream and their document indices, advancing the cursor."""
        out = np.empty(n, np.int64)
        docs = np.empty(n, np.int64)
        filled = 0
        empty_docs = 0
        while filled < n:
            order = self.order(self.epoch)
            if self.doc >= order.size:
                self.epoch, self.doc, self.offset = self.epoch + 1, 0, 0
                continue
            d = int(order[self.doc])
            start, stop = int(self.ds.doc_offsets[d]), int(self.ds.doc_offsets[d + 1])
            take = min(n - filled, stop - start - self.offset)
            if take <= 0:
                empty_docs += 1
                if empty_docs > 2 * order.size + 1:
                    raise ValueError(f"rank {self.rank} has only empty documents")
            else:
                out[filled:filled + take] = self.ds.tokens(start + self.offset, start + self.offset + take)
                docs[filled:filled + take] = self.epoch * self.ds.n_docs + d
                filled += take
                self.offset += take
            if self.offset >= stop - start:
                self.doc, self.offset = self.doc + 1, 0
        return out, docs

    def _unread_one(self) -> None:
        """Move the cursor back one token (rows overlap by one token)."""
        while True:
            if self.offset > 0:
                self.offset -= 1
                return
            if self.doc == 0:
                self.epoch -= 1
                self.doc = self.order(self.epoch).size
            self.doc -= 1
            d = int(self.order(self.epoch)[self.doc])
            self.offset = int(self.ds.doc_offsets[d + 1] - self.ds.doc_offsets[d])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        return self.next_rows(self.batch)

    def next_rows(self, n: int) -> tuple[torch.Tensor, ...]:
        """The next ``n`` rows (``__next__`` is ``next_rows(batch)``)."""
        rows, docs = [], []
        for _ in range(n):
            tokens, doc = self._read(self.seq_len + 1)
            rows.append(tokens)
            docs.append(doc[:-1])
            self._unread_one()
        t = torch.from_numpy(np.stack(rows))
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        return (x, y, torch.from_numpy(np.stack(docs))) if self.return_doc_ids else (x, y)

    def state_dict(self) -> dict:
        """The position (and the settings it depends on) as plain ints."""
        return {"epoch": self.epoch, "doc": self.doc, "offset": self.offset, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "shuffle": self.shuffle,
                "n_docs": int(self.docs.size), "n_tokens": self.n_tokens, "seq_len": self.seq_len, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; the settings that decide the order, and the corpus' size, must match."""
        _check_state(self, state, ("seed", "rank", "world_size", "shuffle", "n_docs", "n_tokens"))
        self.epoch, self.doc, self.offset = int(state["epoch"]), int(state["doc"]), int(state["offset"])


def holdout_split(n_docs: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train_docs, val_docs)``: ``floor(n_docs * val_fraction)`` documents evenly spaced (document ``i`` when
    ``floor((i + 1) f) > floor(i f)``; for ``f = 1/k`` every ``k``-th one, indices ``k-1, 2k-1, ...``) are held
    out for validation, the rest trains; at least one is held out, and one always trains (``val_fraction``
    1); ``val_fraction == 0`` holds out nothing.

    >>> tr, va = holdout_split(10, 0.2); va.tolist(), tr.size
    ([4, 9], 8)
    >>> holdout_split(10, 0.7)[1].tolist()  # 7 of 10 (not every round(1/0.7) = 1st)
    [1, 2, 4, 5, 7, 8, 9]
    """
    docs = np.arange(n_docs, dtype=np.int64)
    if val_fraction <= 0:
        return docs, docs[:0]
    if n_docs < 2:
        raise ValueError(f"cannot hold out validation documents from {n_docs} document(s); give data.val_tokens "
                         "or set data.val_fraction=0")
    # Exact rational arithmetic: 1/3 as a float times 3 is 0.999..., which would move every held-out index.
    # (A split of every round(1/f)-th document held out 50% for f = 0.4 and 99% for f = 0.7.)
    f = Fraction(val_fraction).limit_denominator(1 << 20)
    held = (docs + 1) * f.numerator // f.denominator > docs * f.numerator // f.denominator
    val = docs[held] if held.any() else docs[-1:]  # a share under one document: the last one
    if val.size == n_docs:  # val_fraction 1: keep one document to train on
        val = val[1:]
    return np.setdiff1d(docs, val), val


class RandomRows:
    """Random ``(x, y)`` windows from a document subset, concatenated; row ``i`` depends only on ``(seed, i)``,
    so the position is one row counter (world-size free). Windows may span document boundaries.

    >>> import tempfile
    >>> from fastlm.tokenizer.shards import TokenShardWriter
    >>> w = TokenShardWriter(tempfile.mkdtemp(), vocab_size=300, tokenizer_sha256="x"); w.add(list(range(50)))
    >>> r = RandomRows(TokenDataset(w.close()), seq_len=8, seed=0); x, y = r.next_rows(3); x.shape
    torch.Size([3, 8])
    """

    def __init__(self, dataset: TokenDataset, *, seq_len: int, seed: int = 0, docs: Optional[np.ndarray] = None):
        self.ds, self.seq_len, self.seed = dataset, seq_len, seed
        self.docs = np.arange(dataset.n_docs, dtype=np.int64) if docs is None else np.asarray(docs, np.int64)
        lengths = np.diff(dataset.doc_offsets)[self.docs]
        self.cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # virtual stream of the subset
        self.n_tokens = int(self.cum[-1])
        if int(self.cum[-1]) < seq_len + 1:
            raise ValueError(f"the documents hold {int(self.cum[-1])} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self.row = 0

    def _read(self, start: int, n: int) -> np.ndarray:
        out = np.empty(n, np.int64)
        i = int(np.searchsorted(self.cum, start, side="right")) - 1
        filled = 0
        while filled < n:
            d = int(self.docs[i])
            a = int(self.ds.doc_offsets[d]) + (start + filled - int(self.cum[i]))
            take = min(n - filled, int(self.ds.doc_offsets[d + 1]) - a)
            out[filled:filled + take] = self.ds.tokens(a, a + take)
            filled += take
            i += 1
        return out

    def next_rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` rows."""
        high = int(self.cum[-1]) - self.seq_len
        rows = []
        for i in range(self.row, self.row + n):
            start = int(np.random.default_rng([self.seed, i]).integers(0, high))
            rows.append(self._read(start, self.seq_len + 1))
        self.row += n
        t = torch.from_numpy(np.stack(rows))
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"row": self.row, "seed": self.seed, "n_docs": int(self.docs.size), "n_tokens": self.n_tokens,
                "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        _check_state(self, state, ("seed", "n_docs", "n_tokens", "seq_len"))
        self.row = int(state["row"])


def _check_state(loader, state: dict, keys: tuple[str, ...]) -> None:
    """``state[key]`` equals the loader's own value for every key (``n_tokens``: when saved; older states
    lack it)."""
    for key in keys:
        if key == "n_tokens" and key not in state:
            continue
        mine = int(loader.docs.size) if key == "n_docs" else getattr(loader, key)
        if state[key] != mine:
            raise ValueError(f"state {key}={state[key]!r} does not match this loader's {mine!r}")


class GlobalRows:
    """One global stream of rows (a ``PackedBatches`` of rank 0 of 1, or ``RandomRows``) from which each rank
    takes its contiguous share: ``take(n_global, rank, world)`` reads ``n_global`` rows and returns rows
    ``[rank * n_global / world, (rank + 1) * n_global / world)`` with their global row indices. Every rank
    reads every row (cheap: memmap), so the position is one cursor and resumes under any world size.

    >>> import tempfile
    >>> from fastlm.tokenizer.shards import TokenShardWriter
    >>> w = TokenShardWriter(tempfile.mkdtemp(), vocab_size=300, tokenizer_sha256="x"); w.add(list(range(50)))
    >>> g = GlobalRows(RandomRows(TokenDataset(w.close()), seq_len=4, seed=0))
    >>> x, y, rows = g.take(4, rank=1, world_size=2); rows.tolist()
    [2, 3]
    """

    def __init__(self, source: Union[PackedBatches, RandomRows]):
        if isinstance(source, PackedBatches) and source.world_size != 1:
            raise ValueError("GlobalRows needs the global stream (a PackedBatches with world_size=1)")
        self.source = source
        self.rows = 0  # rows read so far

    def take(self, n_global: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
        """This rank's ``(x, y, row_ids)`` of the next ``n_global`` rows."""
        if n_global % world_size:
            raise ValueError(f"{n_global} rows cannot be split evenly over {world_size} ranks")
        x, y = self.source.next_rows(n_global)[:2]
        per = n_global // world_size
        a = rank * per
        ids = torch.arange(self.rows + a, self.rows + a + per)
        self.rows += n_global
        return x[a:a + per], y[a:a + per], ids

    def state_dict(self) -> dict:
        return {"rows": self.rows, "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.source.load_state_dict(state["source"])
            self.rows = int(state["rows"])
        except KeyError as e:
            raise ValueError(f"the data position was saved by another kind of loader (missing {e}: another "
                             f"data.sampling?); this run reads with {type(self.source).__name__}") from None
