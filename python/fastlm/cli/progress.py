"""A documents + MB/s progress bar on stderr for the data commands (tqdm; off with --quiet)."""

from __future__ import annotations

import sys
from typing import Callable, Optional


class DocProgress:
    """Callable ``progress(docs, nbytes)`` with running totals; ``close()`` when done.

    >>> p = DocProgress("demo", enabled=False); p(10, 1000); p.close()
    """

    def __init__(self, desc: str, *, enabled: bool = True):
        self.bar = None
        self.docs = 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(unit=" docs", desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def __call__(self, docs: int, nbytes: int) -> None:
        """Totals so far: documents read and their UTF-8 bytes."""
        if self.bar is None:
            return
        self.bar.update(docs - self.docs)
        self.docs = docs
        secs = max(self.bar.format_dict["elapsed"], 1e-9)
        self.bar.set_postfix_str(f"{nbytes / 1e6 / secs:.1f} MB/s", refresh=False)

    @property
    def callback(self) -> Optional[Callable[[int, int], None]]:
        return self if self.bar is not None else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
