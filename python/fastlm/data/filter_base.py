"""The document-filter interface every quality, toxicity and instruction filter implements.

A filter looks at a document's text and says why it should be removed, or None to keep it.
The reason is "<filter name>:<rule>" (e.g. "gopher_quality:word_count"); the pipeline's report
counts removals per reason, and the first filter that rejects a document gets it.
"""

from __future__ import annotations

from typing import Optional, Sequence


class DocFilter:
    """Base class: subclasses set ``name`` and implement ``check`` (or ``check_batch``).

    >>> class Short(DocFilter):
    ...     name = "short"
    ...     def check(self, text):
    ...         return None if len(text) >= 3 else "short:chars"
    >>> Short().check_batch(["ok!", "no"])
    [None, 'short:chars']
    """

    name: str = "filter"

    def check(self, text: str) -> Optional[str]:
        """Return the rejecting reason ("name:rule") or None to keep the document."""
        raise NotImplementedError

    def check_batch(self, texts: Sequence[str]) -> list[Optional[str]]:
        """Reasons for a batch (native filters override this to release the GIL once)."""
        return [self.check(t) for t in texts]
