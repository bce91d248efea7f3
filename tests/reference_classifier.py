"""Plain-Python references for csrc/classify: tokenizer, hashed features, prediction, lexicon."""

from __future__ import annotations

import numpy as np

from reference_hash import murmur3_128

# Same table as csrc/classify/tokenize.cpp: non-ASCII ranges that separate words.
SEPARATORS = [
    (0x0080, 0x00A9), (0x00AB, 0x00B4), (0x00B6, 0x00B9), (0x00BB, 0x00BF),
    (0x00D7, 0x00D7), (0x00F7, 0x00F7), (0x1680, 0x1680), (0x2000, 0x206F),
    (0x20A0, 0x20CF), (0x2190, 0x2BFF), (0x2E00, 0x2E7F), (0x3000, 0x303F),
    (0xFE10, 0xFE1F), (0xFE30, 0xFE6F), (0xFEFF, 0xFEFF), (0xFF00, 0xFF0F),
    (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65), (0xFFF0, 0xFFFF),
    (0x1F000, 0x1FAFF),
]


def is_word_cp(cp: int) -> bool:
    if cp < 0x80:
        return chr(cp).isascii() and chr(cp).isalnum()
    if 0xD800 <= cp <= 0xDFFF:
        return False
    return not any(lo <= cp <= hi for lo, hi in SEPARATORS)


def lower_cp(cp: int) -> int:
    if cp < 0x80:
        return cp + 32 if 0x41 <= cp <= 0x5A else cp
    if 0xC0 <= cp <= 0xDE and cp != 0xD7:
        return cp + 32
    if 0x100 <= cp <= 0x17F:
        if cp == 0x178:
            return 0xFF
        if 0x139 <= cp <= 0x148 or 0x179 <= cp <= 0x17E:
            return cp + 1 if cp & 1 else cp
        if cp in (0x130, 0x131, 0x138, 0x149, 0x17F):
            return cp
        return cp if cp & 1 else cp + 1
    if 0x391 <= cp <= 0x3A9 and cp != 0x3A2:
        return cp + 32
    if 0x410 <= cp <= 0x42F:
        return cp + 32
    if 0x400 <= cp <= 0x40F:
        return cp + 80
    return cp


def tokenize(text: str) -> list[str]:
    words, cur = [], []
    for ch in text:
        cp = ord(ch)
        if is_word_cp(cp):
            cur.append(chr(lower_cp(cp)))
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words


def hash64(data: bytes, seed: int) -> int:
    return murmur3_128(data, seed)[0]


def featurize(text: str, buckets: int, word_ngrams: int, char_min: int, char_max: int) -> list[int]:
    """Feature ids in the native order (csrc/classify/features.h)."""
    words = tokenize(text)
    ids = []
    for n in range(1, word_ngrams + 1):
        for k in range(len(words) - n + 1):
            ids.append(hash64(" ".join(words[k : k + n]).encode(), 1) % buckets)
    if char_min:
        for w in words:
            wrapped = "<" + w + ">"
            for n in range(char_min, char_max + 1):
                for i in range(len(wrapped) - n + 1):
                    ids.append(hash64(wrapped[i : i + n].encode(), 2) % buckets)
    return ids


def predict_proba(ids_per_doc: list[list[int]], weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(bias + mean of weight rows) per document, in float64."""
    out = np.empty((len(ids_per_doc), len(bias)))
    for i, ids in enumerate(ids_per_doc):
        z = bias.astype(np.float64).copy()
        if ids:
            z += weights[np.asarray(ids, dtype=np.int64)].astype(np.float64).sum(0) / len(ids)
        z = np.exp(z - z.max())
        out[i] = z / z.sum()
    return out


def lexicon_count(phrases: list[str], text: str) -> tuple[int, int]:
    """(hits, words): every (position, phrase) match of the tokenized phrases in the text."""
    table = {tuple(tokenize(p)) for p in phrases}
    longest = max((len(p) for p in table), default=0)
    words = tokenize(text)
    hits = 0
    for k in range(len(words)):
        for n in range(1, longest + 1):
            if k + n <= len(words) and tuple(words[k : k + n]) in table:
                hits += 1
    return hits, len(words)
