"""The data stage: read -> normalize -> filter -> dedup -> write shards + report.

Heavy pieces load lazily (``fastlm.data.dedup`` imports the native module, ``classifier`` numpy),
so ``import fastlm.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastlm.data.filter_base import DocFilter
from fastlm.data.records import BadRecord, DataError, ErrorLog, Record

# public name -> module that defines it
_LAZY = {
    "read_records": "readers",
    "record_text": "readers",
    "ShardWriter": "io",
    "expand_inputs": "io",
    "open_text": "io",
    "convert": "chat",
    "convert_records": "chat",
    "ConversionError": "chat",
    "NormalizeConfig": "normalize",
    "Normalizer": "normalize",
    "GopherQualityFilter": "quality",
    "GopherRepetitionFilter": "quality",
    "C4QualityFilter": "quality",
    "FineWebQualityFilter": "quality",
    "InstructConfig": "instruct",
    "build_instruct_filters": "instruct",
    "LexiconFilter": "lexicon",
    "TextClassifier": "classifier",
    "ClassifierFilter": "classifier",
    "DetoxifyFilter": "classifier",
    "MinHasher": "dedup",
    "DedupResult": "dedup",
    "exact_dedup": "dedup",
    "minhash_dedup": "dedup",
    "simhash_dedup": "dedup",
    "optimal_bands": "dedup",
    "CleanConfig": "pipeline",
    "clean": "pipeline",
    "StageReport": "report",
}

__all__ = ["BadRecord", "DataError", "DocFilter", "ErrorLog", "Record", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"fastlm.data.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastlm.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
