"""Where the benchmarks import fastlm and the pure-Python references from (import this first).

fastlm: this checkout's python/ when it is built in place (its native module `_C` beside the sources:
the CMake dev build or `pip install -e .`), else the installed package (`pip install .`, as in CI and on
the GPU machine, where the checkout is not built). tests/: the references the benchmarks check against
(reference_dedup, reference_classifier, corpora, ...).
"""
import importlib.machinery
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "python")
TESTS = os.path.join(ROOT, "tests")


def _on_path(folder: str) -> bool:
    return any(os.path.realpath(p or os.curdir) == os.path.realpath(folder) for p in sys.path)


def _built_in_place() -> bool:
    """True when python/fastlm holds the compiled `_C` (not only its `_C.pyi` stub)."""
    return any(os.path.exists(os.path.join(SOURCE, "fastlm", "_C" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


if _built_in_place() and not _on_path(SOURCE):
    sys.path.insert(0, SOURCE)
if not _on_path(TESTS):
    sys.path.insert(0, TESTS)
