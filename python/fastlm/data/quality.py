"""Heuristic quality filters: Gopher quality and repetition, C4, FineWeb (published thresholds).

Each filter is a ``DocFilter`` whose ``check(text)`` returns ``"<filter>:<rule>"`` for the first rule
a document breaks, or None. Thresholds live in a dataclass per filter (defaults cite their source);
any field can be overridden with keyword arguments, and a threshold set to None disables its rule.

Sources: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
Gopher", appendix A.1.1 and table A1 (MassiveText); Raffel et al. 2020, "Exploring the Limits of
Transfer Learning with a Unified Text-to-Text Transformer", section 2.2 (C4); Penedo et al. 2024,
"The FineWeb Datasets", section 3.3 (FineWeb custom filters). The rule definitions follow
datatrove's ``GopherQualityFilter``, ``GopherRepetitionFilter``, ``C4QualityFilter`` and
``FineWebQualityFilter``, with these deviations (datatrove needs nltk; fastlm does not):

- Words are whitespace-separated tokens with leading/trailing punctuation stripped; tokens that are
  only punctuation are not words. (datatrove: nltk ``word_tokenize``, punctuation tokens dropped by
  a ``w not in string.punctuation`` test.) Stop words match case-insensitively.
- Gopher bullet lines start with any of ``bullets`` (datatrove's first version: only "•").
- Gopher duplicate-line statistics ignore empty lines (datatrove counts every blank line after the
  first as a duplicate line, which rejects ordinary multi-paragraph documents).
- Duplicate n-gram characters are counted over words (datatrove's version passes the n-gram list
  where the word list is expected); the greedy scan is the same: a repeated n-gram adds its
  characters and the scan jumps past it, so overlapping repeats are not counted twice.
- C4 counts sentences with a regex (terminal punctuation followed by space or end) instead of nltk
  punkt, and filters whole documents only (``C4QualityFilter.kept_lines`` gives the kept lines).
- FineWeb's list ratio divides newlines by our word count (nltk also counts punctuation tokens).

(datatrove source read: src/datatrove/pipeline/filters/*_filter.py at commit 06c98b0f.)

Speed: the Gopher filters compute their statistics in one native pass per batch
(``_C.text_quality_stats``, ``_C.text_repetition_stats``; GIL released, threads), with the Unicode
facts (``str.isalpha``, ``str.lower`` per code point) handed over from Python so the counts are
exact (the one context-dependent lowercasing, word-final "Σ" -> "ς", is recounted in Python when a
stop word holds a sigma);
``stats_python`` is the plain-Python definition the tests compare against. C4 and FineWeb stay in
Python (15-30 MB/s measured, see benchmarks/bench_normalize.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from fastlm import _C
from fastlm.data.filter_base import DocFilter

__all__ = ["build_filters", "C4QualityConfig", "C4QualityFilter", "FineWebQualityConfig",
           "FineWebQualityFilter", "GopherQualityConfig", "GopherQualityFilter", "GopherRepetitionConfig",
           "GopherRepetitionFilter", "words_of"]

_STRIP = string.punctuation + "“”‘’«»‹›„‚…–—―·•¡¿"
_STRIP_CODEPOINTS = sorted(map(ord, set(_STRIP)))
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*(?:\s|$)")


def words_of(text: str) -> list:
    """Words of ``text``: whitespace tokens without surrounding punctuation, punctuation-only dropped.

    >>> words_of("Hello, world -- it's (fine).")
    ['Hello', 'world', "it's", 'fine']
    """
    strip = _STRIP
    return [w for w in [tok.strip(strip) for tok in text.split()] if w]


class _ConfiguredFilter(DocFilter):
    config_class: type = object

    def __init__(self, config=None, **overrides):
        base = config if config is not None else self.config_class()
        try:
            self.config = dataclasses.replace(base, **overrides)
        except TypeError as e:
            fields = sorted(f.name for f in dataclasses.fields(self.config_class))
            raise ValueError(f"{type(self).__name__}: {e}; known options: {fields}") from None

    def _reject(self, rule: str) -> str:
        return f"{self.name}:{rule}"


# ---------------------------------------------------------------------------------------------

@dataclass
class GopherQualityConfig:
    """Gopher quality rules; all values from Rae et al. 2021, appendix A.1.1 (MassiveText)."""

    min_words: Optional[int] = 50  # "fewer than 50 ... words"
    max_words: Optional[int] = 100_000  # "... or more than 100,000 words"
    min_mean_word_length: Optional[float] = 3  # "mean word length is outside the range of 3 to 10"
    max_mean_word_length: Optional[float] = 10
    max_hash_ratio: Optional[float] = 0.1  # "symbol-to-word ratio greater than 0.1" for "#"
    max_ellipsis_ratio: Optional[float] = 0.1  # ... and for the ellipsis ("..." or "…")
    max_bullet_lines: Optional[float] = 0.9  # "more than 90% of lines starting with a bullet point"
    max_ellipsis_lines: Optional[float] = 0.3  # "more than 30% ending with an ellipsis"
    min_alpha_words: Optional[float] = 0.8  # "80% of words ... contain at least one alphabetic char"
    min_stop_words: Optional[int] = 2  # "at least two of the following English words"
    stop_words: tuple = ("the", "be", "to", "of", "and", "that", "have", "with")  # the paper's list
    bullets: tuple = ("•", "‣", "◦", "⁃", "∙", "- ", "* ")  # line starts counted as bullet points
    num_threads: int = 0  # native statistics threads; 0 = all cores


class GopherQualityFilter(_ConfiguredFilter):
    """Gopher's quality heuristics (Rae et al. 2021).

    Rules, in order: ``min_words``, ``max_words``, ``min_mean_word_length``, ``max_mean_word_length``,
    ``hash_ratio``, ``ellipsis_ratio``, ``bullet_lines``, ``ellipsis_lines``, ``alpha_words``,
    ``stop_words``.

    >>> GopherQualityFilter().check("too short")
    'gopher_quality:min_words'
    >>> GopherQualityFilter(min_words=2).check("the cat and the hat")
    """

    name = "gopher_quality"
    config_class = GopherQualityConfig

    def __init__(self, config: Optional[GopherQualityConfig] = None, **overrides):
        super().__init__(config, **overrides)
        self._stop = frozenset(w.lower() for w in self.config.stop_words)
        # str.lower() maps "Σ" to "ς" at the end of a word and to "σ" elsewhere; the native pass
        # lowers code point by code point (always "σ"). Only stop words spelled with a sigma can
        # tell the two apart, so only then are words holding "Σ" recounted in Python.
        self._sigma_stop = any("σ" in w or "ς" in w for w in self._stop)

    def check(self, text: str) -> Optional[str]:
        return self.check_batch([text])[0]

    def check_batch(self, texts) -> list:
        """Reasons for a batch: one native statistics pass (GIL released, threads)."""
        return [self._decide(row) for row in self.stats_batch(texts)]

    def stats_batch(self, texts) -> list:
        """Statistics rows of a batch (the layout of ``stats_python``), natively computed.

        Columns: words, word characters, "#", ellipses, lines, bullet lines, ellipsis lines,
        words with a letter, stop words.

        >>> GopherQualityFilter().stats_batch(["The cat sat."])
        [[3, 9, 0, 0, 1, 0, 0, 3, 1]]
        """
        c = self.config
        alpha_bits, lower = _unicode_tables()
        texts = list(texts)
        rows = _C.text_quality_stats(texts, strip=_STRIP_CODEPOINTS, alpha_bits=alpha_bits,
                                     lower=lower, stop_words=sorted(self._stop),
                                     bullets=list(c.bullets), num_threads=c.num_threads)
        out = []
        for text, row in zip(texts, rows):
            row = row.tolist()
            if self._sigma_stop and "\u03a3" in text:  # final sigma (see __init__)
                row[8] = sum(w.lower() in self._stop for w in words_of(text))
            out.append(row)
        return out

    def stats_python(self, text: str) -> list:
        """The statistics row of ``stats_batch`` in plain Python (the reference)."""
        words = words_of(text)
        lines = text.splitlines() or [""]
        bullets = tuple(self.config.bullets)
        return [len(words), sum(map(len, words)), text.count("#"),
                text.count("...") + text.count("…"), len(lines),
                sum(line.lstrip().startswith(bullets) for line in lines),
                sum(line.rstrip().endswith(("...", "…")) for line in lines),
                sum(any(map(str.isalpha, w)) for w in words),
                sum(w.lower() in self._stop for w in words)]

    def _decide(self, row: list) -> Optional[str]:
        c = self.config
        n, chars, hashes, ellipses, n_lines, bullet_lines, ellipsis_lines, alpha, stop = row
        if c.min_words is not None and n < c.min_words:
            return self._reject("min_words")
        if c.max_words is not None and n > c.max_words:
            return self._reject("max_words")
        if n == 0:
            return None  # every remaining rule is a ratio over words, and min_words is off
        mean = chars / n
        if c.min_mean_word_length is not None and mean < c.min_mean_word_length:
            return self._reject("min_mean_word_length")
        if c.max_mean_word_length is not None and mean > c.max_mean_word_length:
            return self._reject("max_mean_word_length")
        if c.max_hash_ratio is not None and hashes / n > c.max_hash_ratio:
            return self._reject("hash_ratio")
        if c.max_ellipsis_ratio is not None and ellipses / n > c.max_ellipsis_ratio:
            return self._reject("ellipsis_ratio")
        if c.max_bullet_lines is not None and bullet_lines / n_lines > c.max_bullet_lines:
            return self._reject("bullet_lines")
        if c.max_ellipsis_lines is not None and ellipsis_lines / n_lines > c.max_ellipsis_lines:
            return self._reject("ellipsis_lines")
        if c.min_alpha_words is not None and alpha / n < c.min_alpha_words:
            return self._reject("alpha_words")
        if c.min_stop_words is not None and stop < c.min_stop_words:
            return self._reject("stop_words")
        return None


_UNICODE_TABLES: Optional[tuple] = None


def _unicode_tables() -> tuple:
    """(isalpha bitmap over all code points, {code point: lower()} where lower() differs)."""
    global _UNICODE_TABLES
    if _UNICODE_TABLES is None:
        bits = bytearray(0x110000 // 8)
        lower = {}
        # Planes 4-13 are unassigned and planes 15-16 private use (never alphabetic, no case):
        # skipping them keeps the tables exact and cuts their one-time cost by ~3x.
        for cp in itertools.chain(range(0x40000), range(0xE0000, 0xF0000)):
            ch = chr(cp)
            if ch.isalpha():
                bits[cp >> 3] |= 1 << (cp & 7)
            low = ch.lower()
            if low != ch:
                lower[cp] = low
        _UNICODE_TABLES = (bytes(bits), lower)
    return _UNICODE_TABLES


# ---------------------------------------------------------------------------------------------

@dataclass
class GopherRepetitionConfig:
    """Gopher repetition rules; thresholds from Rae et al. 2021, table A1."""

    max_dup_para_frac: Optional[float] = 0.3  # duplicate paragraph fraction
    max_dup_para_char_frac: Optional[float] = 0.2  # duplicate paragraph character fraction
    max_dup_line_frac: Optional[float] = 0.3  # duplicate line fraction
    max_dup_line_char_frac: Optional[float] = 0.2  # duplicate line character fraction
    top_ngrams: tuple = ((2, 0.20), (3, 0.18), (4, 0.16))  # top n-gram character fraction
    dup_ngrams: tuple = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                         (10, 0.10))  # duplicate n-gram character fraction
    num_threads: int = 0  # native statistics threads; 0 = all cores


def _duplicates(items: list) -> tuple:
    """(number of items seen before, total characters of those items)."""
    seen: set = set()
    count = chars = 0
    for x in items:
        if x in seen:
            count += 1
            chars += len(x)
        else:
            seen.add(x)
    return count, chars


def _top_ngram_chars(words: list, n: int) -> int:
    """Characters covered by the most frequent n-gram: len(" ".join(gram)) * count."""
    counts = Counter(zip(*(words[i:] for i in range(n))))
    if not counts:
        return 0
    gram, k = counts.most_common(1)[0]
    return (sum(len(w) for w in gram) + n - 1) * k


def _dup_ngram_chars(words: list, n: int) -> int:
    """Characters in repeated n-grams, scanning left to right and jumping past each repeat."""
    seen: set = set()
    chars = 0
    i = 0
    last = len(words) - n
    while i <= last:
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(len(w) for w in gram) + n - 1
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


class GopherRepetitionFilter(_ConfiguredFilter):
    """Gopher's repetition heuristics (Rae et al. 2021, table A1).

    Rules, in order: ``dup_para_frac``, ``dup_para_char_frac``, ``dup_line_frac``,
    ``dup_line_char_frac``, ``top_{n}_gram``, ``dup_{n}_gram``. Character fractions are over
    ``len(text)``.

    >>> GopherRepetitionFilter().check("spam spam\\n\\nspam spam\\n\\nspam spam\\n\\neggs")
    'gopher_repetition:dup_para_frac'
    """

    name = "gopher_repetition"
    config_class = GopherRepetitionConfig

    def check(self, text: str) -> Optional[str]:
        return self.check_batch([text])[0]

    def check_batch(self, texts) -> list:
        """Reasons for a batch: one native statistics pass (GIL released, threads)."""
        c = self.config
        rows = _C.text_repetition_stats(list(texts), strip=_STRIP_CODEPOINTS,
                                        top_ns=[n for n, _ in c.top_ngrams],
                                        dup_ns=[n for n, _ in c.dup_ngrams],
                                        num_threads=c.num_threads)
        return [self._decide(row.tolist()) for row in rows]

    def stats_python(self, text: str) -> list:
        """The statistics row of ``_C.text_repetition_stats`` in plain Python (the reference)."""
        c = self.config
        paragraphs = _PARAGRAPH_RE.split(text.strip())
        lines = [line for line in text.splitlines() if line.strip()]
        words = words_of(text)
        return [len(text), len(paragraphs), *_duplicates(paragraphs), len(lines),
                *_duplicates(lines), *(_top_ngram_chars(words, n) for n, _ in c.top_ngrams),
                *(_dup_ngram_chars(words, n) for n, _ in c.dup_ngrams)]

    def _decide(self, row: list) -> Optional[str]:
        c = self.config
        total, n_para, dup_para, dup_para_chars, n_lines, dup_lines, dup_line_chars = row[:7]
        if total == 0:
            return None
        if c.max_dup_para_frac is not None and dup_para / n_para > c.max_dup_para_frac:
            return self._reject("dup_para_frac")
        if c.max_dup_para_char_frac is not None and dup_para_chars / total > c.max_dup_para_char_frac:
            return self._reject("dup_para_char_frac")
        if c.max_dup_line_frac is not None and dup_lines / max(1, n_lines) > c.max_dup_line_frac:
            return self._reject("dup_line_frac")
        if c.max_dup_line_char_frac is not None and dup_line_chars / total > c.max_dup_line_char_frac:
            return self._reject("dup_line_char_frac")
        k = 7
        for n, frac in c.top_ngrams:
            if row[k] / total > frac:
                return self._reject(f"top_{n}_gram")
            k += 1
        for n, frac in c.dup_ngrams:
            if row[k] / total > frac:
                return self._reject(f"dup_{n}_gram")
            k += 1
        return None


# ---------------------------------------------------------------------------------------------

@dataclass
class C4QualityConfig:
    """C4 rules (Raffel et al. 2020, section 2.2; extra rules from TFDS c4_utils via datatrove)."""

    terminal_punctuation: tuple = (".", "?", "!", '"', "'")  # "ended in a terminal punctuation mark"
    filter_no_terminal_punct: bool = True  # drop lines that do not end with one (or end with "...")
    min_words_per_line: int = 3  # "only retained lines that contained at least 3 words"
    max_word_length: int = 1000  # TFDS: drop lines with a word over 1000 characters
    min_sentences: Optional[int] = 5  # "discarded any page with fewer than 5 sentences"
    filter_lorem_ipsum: bool = True  # "removed any page where the phrase 'lorem ipsum' appeared"
    filter_curly_bracket: bool = True  # "removed any pages that contained a curly bracket"
    filter_javascript: bool = True  # "removed any line with the word Javascript"
    policy_substrings: tuple = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                                "use of cookies", "use cookies")  # TFDS: policy/cookie lines
    remove_citations: bool = True  # TFDS: strip "[1]", "[edit]", "[citation needed]" first


_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")


class C4QualityFilter(_ConfiguredFilter):
    """C4's page filter: line rules decide which lines survive, page rules reject the document.

    Rules: ``lorem_ipsum`` and ``curly_bracket`` (any kept line), ``too_few_sentences`` (sentences
    in the kept lines). Code and verse fail by design (braces; lines without end punctuation).

    >>> C4QualityFilter().check("Lorem ipsum dolor sit amet.")
    'c4_quality:lorem_ipsum'
    """

    name = "c4_quality"
    config_class = C4QualityConfig

    def kept_lines(self, text: str) -> tuple:
        """(kept lines, page rule that fired or None), following datatrove's line loop."""
        c = self.config
        kept = []
        ends = tuple(c.terminal_punctuation)
        for line in text.splitlines():
            line = line.strip()
            words = line.split()
            if c.max_word_length >= 0 and any(len(w) > c.max_word_length for w in words):
                continue
            if c.remove_citations:
                line = _CITATION_RE.sub("", line)
            if c.filter_no_terminal_punct and (not line.endswith(ends) or line.endswith("...")):
                continue
            if len(words) < c.min_words_per_line:
                continue
            low = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in low:
                return kept, "lorem_ipsum"
            if c.filter_javascript and "javascript" in low:
                continue
            if c.filter_curly_bracket and "{" in line:
                return kept, "curly_bracket"
            if any(p in low for p in c.policy_substrings):
                continue
            kept.append(line)
        return kept, None

    def check(self, text: str) -> Optional[str]:
        kept, rule = self.kept_lines(text)
        if rule is not None:
            return self._reject(rule)
        if self.config.min_sentences is not None:
            sentences = sum(len(_SENTENCE_END_RE.findall(line)) for line in kept)
            if sentences < self.config.min_sentences:
                return self._reject("too_few_sentences")
        return None


# ---------------------------------------------------------------------------------------------

@dataclass
class FineWebQualityConfig:
    """FineWeb custom filters (Penedo et al. 2024, section 3.3; datatrove FineWebQualityFilter)."""

    line_punct_thr: Optional[float] = 0.12  # reject if <= 12% of lines end in punctuation
    line_punct_exclude_zero: bool = False  # datatrove option: do not reject when the ratio is 0
    stop_chars: tuple = (".", "'", '"', "!", "?")  # line endings that count as punctuation
    short_line_thr: Optional[float] = 0.67  # reject if >= 67% of lines are short
    short_line_length: int = 30  # "short" = at most 30 characters
    char_duplicates_ratio: Optional[float] = 0.01  # reject if >= 1% of chars are in duplicate lines
    new_line_ratio: Optional[float] = 0.3  # reject if newlines / words > 0.3 (lists)


class FineWebQualityFilter(_ConfiguredFilter):
    """FineWeb's three custom heuristics plus datatrove's list-ratio rule.

    Rules, in order: ``line_punct_ratio``, ``short_line_ratio``, ``char_dup_ratio``, ``list_ratio``.

    >>> FineWebQualityFilter().check("a\\nb\\nc")
    'fineweb_quality:line_punct_ratio'
    """

    name = "fineweb_quality"
    config_class = FineWebQualityConfig

    def check(self, text: str) -> Optional[str]:
        c = self.config
        lines = text.split("\n")
        if c.line_punct_thr is not None:
            ratio = sum(line.endswith(tuple(c.stop_chars)) for line in lines) / len(lines)
            if ratio <= c.line_punct_thr and not (ratio == 0 and c.line_punct_exclude_zero):
                return self._reject("line_punct_ratio")
        if c.short_line_thr is not None:
            ratio = sum(len(line) <= c.short_line_length for line in lines) / len(lines)
            if ratio >= c.short_line_thr:
                return self._reject("short_line_ratio")
        if c.char_duplicates_ratio is not None:
            _, chars = _duplicates([line for line in lines if line.strip()])
            ratio = chars / max(1, len(text) - text.count("\n"))
            if ratio >= c.char_duplicates_ratio:
                return self._reject("char_dup_ratio")
        if c.new_line_ratio is not None:
            n_words = len(words_of(text))
            if text.count("\n") / max(1, n_words) > c.new_line_ratio:
                return self._reject("list_ratio")
        return None


def build_filters(*, gopher_quality: bool = True, gopher_repetition: bool = True, c4: bool = False,
                  fineweb: bool = False, num_threads: int = 0) -> list:
    """The enabled quality filters with their default thresholds, in the order they run.

    Gopher's rules suit any prose; C4's and FineWeb's line rules target web pages (they reject
    verse and code), so they are off unless asked for.

    >>> [f.name for f in build_filters(c4=True)]
    ['gopher_quality', 'gopher_repetition', 'c4_quality']
    """
    filters: list = []
    if gopher_quality:
        filters.append(GopherQualityFilter())
    if gopher_repetition:
        filters.append(GopherRepetitionFilter(num_threads=num_threads))
    if c4:
        filters.append(C4QualityFilter())
    if fineweb:
        filters.append(FineWebQualityFilter())
    return filters
