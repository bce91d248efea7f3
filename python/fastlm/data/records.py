"""Records and malformed-input accounting shared by every data-stage reader and step.

A record is the JSON object it came from (all its fields are kept through every step and
output) plus where it came from. Malformed input is never dropped silently: each one becomes
a ``BadRecord`` in an ``ErrorLog``, which either counts it (default) or raises ``DataError``
naming the file and line (``strict=True``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

# Most native threads a command may ask for: native code takes a C int and starts up to that many
# threads; far more than any machine's cores is a typo (and above 2**31 - 1 never reaches it).
MAX_THREADS = 4096


def check_num_threads(num_threads: Any) -> int:
    """A library call's ``num_threads``: an int in [0, MAX_THREADS] (0 = all cores), refused by name otherwise
    (a negative count was taken as all cores, a float or 2**31 failed inside pybind).

    >>> check_num_threads(-1)
    Traceback (most recent call last):
    ValueError: num_threads must be an int in [0, 4096] (0 = all cores), got -1
    """
    import numbers

    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) \
            or not 0 <= num_threads <= MAX_THREADS:
        raise ValueError(f"num_threads must be an int in [0, {MAX_THREADS}] (0 = all cores), got {num_threads!r}")
    return int(num_threads)


class DataError(ValueError):
    """Malformed input, with the file and line it came from in the message."""

    def __init__(self, source: str, line: int, reason: str):
        self.source, self.line, self.reason = source, line, reason
        super().__init__(f"{source}:{line}: {reason}")


@dataclasses.dataclass
class Record:
    """One document or example: its JSON object and where it was read from."""

    data: dict[str, Any]  # the original object; every field is kept through the pipeline
    source: str  # file path, "<stdin>" or "builtin:NAME"
    line: int  # 1-based line (JSONL/text), or 1-based index (JSON array, Parquet row)


@dataclasses.dataclass
class BadRecord:
    """A record that could not be read or converted, and why."""

    source: str
    line: int
    reason: str  # short machine-friendly category, e.g. "bad_json", "missing_field"
    detail: str  # human message

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.detail}"


class ErrorLog:
    """Counts malformed records by reason and keeps the first few for the report.

    >>> log = ErrorLog()
    >>> log.add("a.jsonl", 3, "bad_json", "Expecting value")
    >>> log.counts["bad_json"]
    1
    """

    def __init__(self, *, strict: bool = False, keep: int = 20):
        self.strict = strict
        self.keep = keep
        self.counts: Counter[str] = Counter()
        self.samples: list[BadRecord] = []

    def add(self, source: str, line: int, reason: str, detail: str) -> None:
        """Record one malformed item; raises DataError when strict."""
        if self.strict:
            raise DataError(source, line, f"{reason}: {detail} (run without --strict to skip and count such records)")
        self.counts[reason] += 1
        if len(self.samples) < self.keep:
            self.samples.append(BadRecord(source, line, reason, detail))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, what: str = "record") -> str:
        """"3 malformed record(s) (bad_json 1, missing_field 2); e.g. a.jsonl:2: bad_json: ..." (the
        kept samples), for an error that refuses the input after counting all of it.

        >>> log = ErrorLog(keep=1)
        >>> log.add("a.jsonl", 2, "bad_json", "Expecting value"); log.add("a.jsonl", 5, "bad_json", "x")
        >>> log.summary()
        '2 malformed record(s) (bad_json 2); e.g. a.jsonl:2: bad_json: Expecting value'
        """
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))
        return (f"{self.total} malformed {what}(s) ({by_reason})"
                + "".join(f"; e.g. {b}" for b in self.samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": dict(self.counts),
            "samples": [dataclasses.asdict(b) for b in self.samples],
        }
