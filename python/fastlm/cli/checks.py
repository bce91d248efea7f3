"""Checks of command-line options shared by several commands, made before any work (ValueError -> exit 2)."""

from __future__ import annotations

import os

from fastlm.data.records import MAX_THREADS


def check_range(value: int, flag: str, low: int, high: int, note: str = "") -> None:
    """Refuse an integer option outside [low, high], naming the option and the range.

    >>> check_range(10**12, "--ngram", 1, 1024)
    Traceback (most recent call last):
    ValueError: --ngram must be in [1, 1024], got 1000000000000
    """
    if not low <= value <= high:
        raise ValueError(f"{flag} must be in [{low}, {high}]{note}, got {value}")


def check_threads(value: int, flag: str = "--threads") -> None:
    """Refuse a thread count outside [0, MAX_THREADS] (0 = all cores)."""
    check_range(value, flag, 0, MAX_THREADS, " (0 = all cores)")


def check_output(path: str, flag: str, *, folder: bool, inputs=None) -> None:
    """Refuse an output path that cannot be made, before any work: a folder (``folder=True``) that
    is a file, a file that is a folder, or a path under a regular file (folders that do not exist
    yet are made when it is written); with ``inputs``, also a file that is one of them
    (`fastlm.data.io.refuse_input_as_output`: writing it would replace that input)."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        what, want = ("a file", "a folder") if folder else ("a directory", "a file")
        raise ValueError(f"{flag} {path}: is {what}; name {want} to write")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
    if inputs:
        from fastlm.data.io import refuse_input_as_output
        refuse_input_as_output(path, inputs, flag=flag)
