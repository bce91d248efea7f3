"""Corpus statistics: counts, sizes, length distribution, format breakdown and malformed records.

Lengths are measured on ``record_text`` (the text field, or the rendered conversation of a chat
record); bytes are its UTF-8 size and words are whitespace-separated tokens.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional

import numpy as np

from fastlm.data import chat
from fastlm.data.readers import read_records, record_text
from fastlm.data.records import ErrorLog

PERCENTILES = (50, 90, 99)


def _distribution(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0, "max": 0, **{f"p{p}": 0.0 for p in PERCENTILES}}
    a = np.asarray(values, dtype=np.int64)
    out: dict[str, float] = {"mean": float(a.mean()), "min": int(a.min()), "max": int(a.max())}
    for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES)):
        out[f"p{p}"] = float(v)
    return out


def corpus_stats(
    inputs: Iterable[str] | str,
    *,
    text_field: str = "text",
    text_mode: str = "document",
    fmt: str = "auto",
    errors: Optional[ErrorLog] = None,
) -> dict[str, Any]:
    """Statistics of every input; malformed records are counted in ``errors`` (default: a new lenient log).

    >>> s = corpus_stats("builtin:pydoc")
    >>> s["documents"] == s["formats"]["builtin"], s["malformed"]["total"]
    (True, 0)
    """
    errors = errors if errors is not None else ErrorLog()
    formats: dict[str, str] = {}
    by_format: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    chars: list[int] = []
    words: list[int] = []
    n_bytes = 0
    for record in read_records(
        inputs, text_field=text_field, text_mode=text_mode, fmt=fmt, errors=errors, formats=formats
    ):
        text = record_text(record, text_field)
        by_format[formats.get(record.source, "builtin")] += 1
        value = chat.get_field(record.data, text_field)
        kinds["text" if isinstance(value, str) else str(chat.detect_format(record.data))] += 1
        chars.append(len(text))
        words.append(len(text.split()))
        n_bytes += len(text.encode("utf-8", "surrogatepass"))
    return {
        "documents": len(chars),
        "bytes": n_bytes,
        "chars": int(sum(chars)),
        "words": int(sum(words)),
        "chars_per_doc": _distribution(chars),
        "words_per_doc": _distribution(words),
        "formats": dict(by_format),
        "record_kinds": dict(kinds),
        "files": len(formats),
        "malformed": errors.to_dict(),
    }
