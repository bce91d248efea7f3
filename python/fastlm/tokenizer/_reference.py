"""Pure-Python tokenizer backend: regex-module pre-tokenization and readable byte-level BPE.

This is the specification the native backend (``_C.tok_*``, ``_C.bpe_*``) must match, and the
fallback when the native module lacks those functions. Semantics (notes/tok_common.md):

- pre-tokenization: ``regex.findall(pat_str, text)``; pieces are UTF-8 bytes;
- training: counts of pieces -> merges; each step merges the pair with the highest count, ties
  broken by the smallest ``(left id, right id)``; stop at ``vocab_size`` or when the best count is
  below ``min_frequency``; occurrences are replaced left to right without overlap ("aaa" -> "aa" "a");
- encoding: tiktoken's rule within a piece: repeatedly merge the adjacent pair whose concatenated
  bytes have the lowest rank (leftmost on ties) until no concatenation is in the vocabulary.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Callable, Iterable, Optional

import numpy as np

# Pieces longer than this use the O(n log n) heap merge instead of the simple O(n^2) loop.
_LONG_PIECE = 64


def pretokenize(texts: list[str], pat_str: str) -> list[list[str]]:
    """The pieces of each text: ``regex.findall(pat_str, text)``."""
    import regex

    pat = regex.compile(pat_str)
    return [pat.findall(t) for t in texts]


def count_pieces(texts: Iterable[str], pat_str: str) -> Counter:
    """Counter of UTF-8 piece bytes over all texts."""
    import regex

    pat = regex.compile(pat_str)
    counts: Counter = Counter()
    for t in texts:
        counts.update(pat.findall(t))
    return Counter({p.encode("utf-8", "surrogatepass"): c for p, c in counts.items()})


def _merge_word(word: list[int], left: int, right: int, new: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == left and word[i + 1] == right:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train(
    pieces: list[bytes],
    counts: Iterable[int],
    vocab_size: int,
    min_frequency: int = 1,
    progress: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """Merges ``int32 (m, 2)`` learned from distinct pieces and their counts; token 256+i = merge i.

    Incremental: pair counts and a pair -> words index are updated only for the words that contain
    the merged pair; the best pair comes from a max-heap refreshed lazily (stale entries re-pushed).
    """
    counts = [int(c) for c in counts]
    words = [list(p) for p in pieces]
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (w, c) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += c
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_count.items() if c > 0]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    n_merges = max(0, vocab_size - 256)
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        current = pair_count.get(pair, 0)
        if current <= 0:
            continue
        if -neg != current:  # stale entry: re-push with the current count
            heapq.heappush(heap, (-current, pair))
            continue
        if current < max(min_frequency, 1):
            break
        new = 256 + len(merges)
        merges.append(pair)
        touched: set[tuple[int, int]] = set()
        for wi in sorted(where.pop(pair, ())):
            w, c = words[wi], counts[wi]
            if len(w) < 2:
                continue
            for p in zip(w, w[1:]):
                pair_count[p] -= c
            w = _merge_word(w, pair[0], pair[1], new)
            words[wi] = w
            for p in zip(w, w[1:]):
                pair_count[p] += c
                where[p].add(wi)
                touched.add(p)
        pair_count.pop(pair, None)
        for p in touched:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
        if progress is not None and len(merges) % 256 == 0:
            progress(len(merges), n_merges)
    return np.array(merges, dtype=np.int32).reshape(-1, 2)


def _bpe_short(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def _bpe_long(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """Same result as _bpe_short in O(n log n): a linked list of parts and a (rank, start) heap."""
    n = len(piece)
    end = list(range(1, n + 1))  # end[start] = end of the part starting at start; -1 when merged away
    prev = list(range(-1, n - 1))
    heap: list[tuple[int, int, int]] = []  # (rank, start, end of the right part)

    def push(s: int) -> None:
        e = end[s]
        if e < n:
            r = ranks.get(piece[s : end[e]])
            if r is not None:
                heapq.heappush(heap, (r, s, end[e]))

    for s in range(n - 1):
        push(s)
    while heap:
        _, s, e2 = heapq.heappop(heap)
        e = end[s]
        if e < 0 or e >= n or end[e] != e2:  # a part changed since this entry was pushed
            continue
        end[e] = -1
        end[s] = e2
        if e2 < n:
            prev[e2] = s
        if prev[s] >= 0:
            push(prev[s])
        push(s)
    out, s = [], 0
    while s < n:
        out.append(ranks[piece[s : end[s]]])
        s = end[s]
    return out


def bpe(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """tiktoken's byte-pair merge of one piece (``ranks`` maps token bytes to rank)."""
    if piece in ranks:
        return [ranks[piece]]
    return _bpe_short(ranks, piece) if len(piece) <= _LONG_PIECE else _bpe_long(ranks, piece)


class Encoder:
    """Encode texts (pre-tokenize with ``pat_str``, then BPE each piece) and decode ids to bytes."""

    def __init__(self, tokens: list[bytes], pat_str: str):
        import regex

        self.tokens = tokens
        self.ranks = {t: i for i, t in enumerate(tokens)}
        self.pat = regex.compile(pat_str)
        self.cache: dict[bytes, list[int]] = {}

    def encode_ordinary(self, text: str) -> np.ndarray:
        out: list[int] = []
        cache, ranks = self.cache, self.ranks
        for piece in self.pat.findall(text):
            b = piece.encode("utf-8", "surrogatepass")
            ids = cache.get(b)
            if ids is None:
                ids = bpe(ranks, b)
                if len(b) <= _LONG_PIECE and len(cache) < 100_000:
                    cache[b] = ids
            out.extend(ids)
        return np.array(out, dtype=np.uint32)

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 0) -> list[np.ndarray]:
        return [self.encode_ordinary(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> bytes:
        tokens, n = self.tokens, len(self.tokens)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range [0, {n})")
            out.append(tokens[i])
        return b"".join(out)
