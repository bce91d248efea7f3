"""The data-stage report: counts that add up, written as JSON and printed as a table.

Every document read is accounted for exactly once:
    documents_in = kept + malformed + sum(removed per reason)
where ``removed`` reasons are "<filter>:<rule>", "exact_dup" and "near_dup".
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any, TextIO


@dataclasses.dataclass
class StageReport:
    """Counts of one run of a data-stage command."""

    documents_in: int = 0  # records seen, malformed ones included
    kept: int = 0
    malformed: Counter = dataclasses.field(default_factory=Counter)  # reason -> count
    removed: Counter = dataclasses.field(default_factory=Counter)  # reason -> count
    bytes_in: int = 0  # UTF-8 bytes of the text of well-formed records
    bytes_out: int = 0
    clusters: int = 0  # near/exact duplicate clusters of size >= 2
    largest_clusters: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    malformed_samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Raise AssertionError if the counts do not add up (a bug, never a user error)."""
        total = self.kept + sum(self.malformed.values()) + sum(self.removed.values())
        if total != self.documents_in:
            raise AssertionError(
                f"report counts do not add up: in={self.documents_in} kept={self.kept} "
                f"malformed={sum(self.malformed.values())} removed={sum(self.removed.values())}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["malformed"] = dict(sorted(self.malformed.items()))
        d["removed"] = dict(sorted(self.removed.items()))
        d["malformed_total"] = sum(self.malformed.values())
        d["removed_total"] = sum(self.removed.values())
        return d

    def write_json(self, path: str) -> None:
        """Write the report atomically (temp file + rename)."""
        write_json_atomic(path, self.to_dict())

    def print_table(self, file: TextIO | None = None) -> None:
        """Print the counts as an aligned table."""
        rows: list[tuple[str, str]] = [("documents in", f"{self.documents_in:,}")]
        for reason, n in sorted(self.malformed.items()):
            rows.append((f"  malformed: {reason}", f"{n:,}"))
        for reason, n in sorted(self.removed.items(), key=lambda kv: (-kv[1], kv[0])):
            rows.append((f"  removed: {reason}", f"{n:,}"))
        rows.append(("kept", f"{self.kept:,}"))
        if self.clusters:
            rows.append(("duplicate clusters", f"{self.clusters:,}"))
        mb = self.bytes_in / 1e6
        rows.append(("MB in / out", f"{mb:,.2f} / {self.bytes_out / 1e6:,.2f}"))
        if self.seconds > 0:
            rows.append(("time", f"{self.seconds:.2f} s ({mb / self.seconds:,.1f} MB/s)"))
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v:>14}", file=file)
        for c in self.largest_clusters[:3]:
            print(f"cluster of {c['size']}: e.g. {c['sample'][:70]!r}", file=file)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to path all-or-nothing (``fastlm.data.io.atomic_write``)."""
    from fastlm.data.io import atomic_write

    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
