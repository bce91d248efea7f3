"""Range checks of command-line options shared by several commands (ValueError -> exit 2)."""

from __future__ import annotations

from fastlm.data.records import MAX_THREADS


def check_threads(value: int, flag: str = "--threads") -> None:
    """Refuse a thread count outside [0, MAX_THREADS] (0 = all cores)."""
    if not 0 <= value <= MAX_THREADS:
        raise ValueError(f"{flag} must be in [0, {MAX_THREADS}] (0 = all cores), got {value}")
