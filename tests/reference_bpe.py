"""Readable pure-Python BPE trainer and encoder: the specification of csrc/tokenizer/bpe_*.

Vocabulary contract (see /work/notes/tok_common.md): a vocab is ``list[bytes]`` indexed by rank; a trained
vocab holds the 256 single bytes at ranks 0..255, then token 256 + i = left + right of merge i.
"""
from __future__ import annotations

from collections import Counter

# cl100k_base's pattern, exactly as tiktoken has it.
GPT4_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
            r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


def replace_pair(word: list[int], left: int, right: int, new_id: int) -> list[int]:
    """Replace the non-overlapping occurrences of (left, right), scanning left to right ("aaa" -> "Xa")."""
    out: list[int] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train(pieces: list[bytes], counts: list[int], vocab_size: int, min_frequency: int = 0) -> list[tuple[int, int]]:
    """Merges [(left_id, right_id)] learnt from weighted pieces; token 256 + i = merge i.

    Each merge recounts every adjacent pair (overlapping positions all count: "aaa" has (a, a) twice, weighted
    by the piece count), picks the highest count, ties -> smallest (left id, right id), and stops when no pair
    is left, the best count < min_frequency, or vocab_size - 256 merges are done. Zero-count pieces are ignored.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256, got {vocab_size}")
    words = [list(p) for p, c in zip(pieces, counts) if c > 0]
    weights = [c for c in counts if c > 0]
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 256:
        pair_counts: Counter[tuple[int, int]] = Counter()
        for word, weight in zip(words, weights):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += weight
        if not pair_counts:
            break
        (left, right), best = min(pair_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if best < min_frequency:
            break
        new_id = 256 + len(merges)
        words = [replace_pair(w, left, right, new_id) for w in words]
        merges.append((left, right))
    return merges


def vocab_from_merges(merges: list[tuple[int, int]]) -> list[bytes]:
    """tokens[rank]: the 256 bytes, then the concatenation of each merge."""
    tokens = [bytes([b]) for b in range(256)]
    for left, right in merges:
        tokens.append(tokens[left] + tokens[right])
    return tokens


def encode_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's rule: a piece in the vocab is one token; else start from bytes and repeatedly merge the
    adjacent pair whose concatenation has the lowest rank (ties: leftmost) until no pair is in the vocab."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_i, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_i, best_rank = i, rank
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def encode_pieces(pieces: list[bytes], tokens: list[bytes]) -> list[int]:
    """Concatenated ids of the pieces under vocab tokens[rank]."""
    ranks = {t: r for r, t in enumerate(tokens)}
    out: list[int] = []
    for piece in pieces:
        out.extend(encode_piece(piece, ranks))
    return out


def decode(ids: list[int], tokens: list[bytes]) -> bytes:
    """Concatenated bytes of the ids; ValueError names an id out of range."""
    for i in ids:
        if not 0 <= i < len(tokens):
            raise ValueError(f"token id {i} out of range [0, {len(tokens)})")
    return b"".join(tokens[i] for i in ids)
