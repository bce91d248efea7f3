"""Lexicon (word list) filter: reject documents containing listed words or phrases.

Matching is native and takes one pass over a document's words: text and entries go through the
same Unicode-aware tokenizer (letters with diacritics, combining marks and CJK characters are
word characters; punctuation, symbols and spaces separate words) and are lowercased, so
matching ignores case and is never inside a word: "ass" matches "Ass!" and "ass_hat" (the
underscore separates words) but not "class" or "assé". Lowercasing is the classifier tokenizer's
simple one-to-one table (csrc/classify/tokenize.cpp): ASCII, Latin-1, Latin Extended-A, and the
basic Greek (Α-Ω) and Cyrillic (Ѐ-Я) capitals; other capitals ("Ά", "Ǆ", "Ա") match only as
written, "ẞ" does not match "ß", and "Σ" lowers to "σ", never to the final "ς". Multi-word entries
match consecutive words whatever separates them ("bad  word", "bad-word", "bad, word").
Entries and texts are compared in Unicode NFC, so "naïve" matches whether the text spells the
"ï" as one code point or as "i" + combining diaeresis (texts already in NFC, such as the output
of the normalize step, are passed through without copying).
Scripts written without spaces (Chinese, Japanese, Thai) have no word boundaries here: an
entry matches only a whole run of such characters.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Iterable, Optional, Sequence

from fastlm.data.filter_base import DocFilter


def load_lexicon(path: str | os.PathLike) -> list[str]:
    """Read a word list: one word or phrase per line, UTF-8, '#' comments and blank lines skipped.

    A line that is not UTF-8 or has no word characters raises ValueError naming file and line.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "words.txt")
    >>> _ = open(p, "w").write("# slurs\\nbadword\\nvery bad phrase\\n\\n")
    >>> load_lexicon(p)
    ['badword', 'very bad phrase']
    """
    from fastlm import _C

    entries = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ValueError(f"{os.fspath(path)}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if lineno == 1:
                line = line.lstrip("\ufeff").strip()  # tolerate a UTF-8 byte-order mark
            if not line or line.startswith("#"):
                continue
            if not _C.classify_tokenize(line):
                raise ValueError(f"{os.fspath(path)}:{lineno}: entry {line!r} has no word characters")
            entries.append(line)
    if not entries:
        raise ValueError(f"{os.fspath(path)}: the word list has no entries")
    return entries


class LexiconFilter(DocFilter):
    """Reject documents that contain words or phrases of a word list (reason "lexicon:hit").

    A document is rejected when its number of hits (occurrences of entries) exceeds
    ``max_hits`` (default 0: any hit rejects), or, when ``max_ratio`` is given, when
    hits / words exceeds it (then ``max_hits`` defaults to no limit).

    >>> f = LexiconFilter.from_words(["ass", "bad word"])
    >>> f.check_batch(["a first class talk", "what a BAD-word!", "Ass."])
    [None, 'lexicon:hit', 'lexicon:hit']
    """

    name = "lexicon"

    def __init__(self, path: str | os.PathLike, *, max_hits: Optional[int] = None,
                 max_ratio: Optional[float] = None, num_threads: int = 0):
        self._init(load_lexicon(path), max_hits=max_hits, max_ratio=max_ratio, num_threads=num_threads)
        self.path = os.fspath(path)

    @classmethod
    def from_words(cls, words: Iterable[str], *, max_hits: Optional[int] = None,
                   max_ratio: Optional[float] = None, num_threads: int = 0) -> "LexiconFilter":
        """Build the filter from a list of words/phrases instead of a file."""
        if isinstance(words, (str, bytes)):
            raise TypeError("words must be a list of str, not a single string")
        self = cls.__new__(cls)
        self._init(list(words), max_hits=max_hits, max_ratio=max_ratio, num_threads=num_threads)
        self.path = None
        return self

    def _init(self, words: list[str], *, max_hits, max_ratio, num_threads) -> None:
        from fastlm import _C

        if max_hits is not None and (isinstance(max_hits, bool) or not isinstance(max_hits, int) or max_hits < 0):
            raise ValueError(f"max_hits must be an int >= 0, got {max_hits!r}")
        if max_ratio is not None and not (isinstance(max_ratio, (int, float)) and 0 <= max_ratio <= 1):
            raise ValueError(f"max_ratio must be a number in [0, 1], got {max_ratio!r}")
        if not isinstance(num_threads, int) or num_threads < 0:
            raise ValueError(f"num_threads must be an int >= 0, got {num_threads!r}")
        if not words:
            raise ValueError("the word list is empty")
        self.max_hits = max_hits if max_hits is not None else (0 if max_ratio is None else None)
        self.max_ratio = max_ratio
        self.num_threads = num_threads
        for i, w in enumerate(words):
            if not isinstance(w, str):
                raise TypeError(f"lexicon entry {i} must be str, not {type(w).__name__}")
        self._lexicon = _C.Lexicon([unicodedata.normalize("NFC", w) for w in words])

    def __len__(self) -> int:
        return self._lexicon.size

    def count(self, texts: Sequence[str]) -> tuple[list[int], list[int]]:
        """(hits, words) per document.

        >>> LexiconFilter.from_words(["bad", "bad word"]).count(["A bad word.", "fine"])
        ([2, 0], [3, 1])
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a list of str, not a single string")
        texts = [t if not isinstance(t, str) or unicodedata.is_normalized("NFC", t)
                 else unicodedata.normalize("NFC", t) for t in texts]
        hits, words = self._lexicon.count(texts, self.num_threads)
        return hits.tolist(), words.tolist()

    def check(self, text: str) -> Optional[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return self.check_batch([text])[0]

    def check_batch(self, texts: Sequence[str]) -> list[Optional[str]]:
        hits, words = self.count(texts)
        out = []
        for h, w in zip(hits, words):
            reject = (self.max_hits is not None and h > self.max_hits) or (
                self.max_ratio is not None and w > 0 and h / w > self.max_ratio)
            out.append("lexicon:hit" if reject else None)
        return out
