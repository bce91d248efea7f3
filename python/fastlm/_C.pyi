"""Type stub of the private native module fastlm._C (use the fastlm package API)."""

__version__: str

# -- text area (csrc/text, csrc/bindings/text.cpp) ------------------------------------------------
import numpy as np
from typing import Sequence

def text_scan_triggers(texts: Sequence[str], bitmap: bytes, num_threads: int = 0) -> list[bool]:
    """For each text: True if it holds a code point whose bit is set in `bitmap` (0x110000/8 bytes)."""

def text_clean(texts: Sequence[str], *, remove_control: bool, whitespace: bool, keep_indentation: bool,
               max_blank_lines: int, num_threads: int = 0) -> list[str]:
    """Control-character removal and whitespace normalization (reference: tests/reference_text.py)."""

def text_repetition_stats(texts: Sequence[str], *, strip: Sequence[int], top_ns: Sequence[int],
                          dup_ns: Sequence[int], num_threads: int = 0) -> np.ndarray:
    """Gopher repetition counts, int64 [n, 7 + len(top_ns) + len(dup_ns)] (layout: csrc/text/repetition.h)."""
