"""Training inputs: CLM batches from token shards (``data``) and MLM / SFT collation (``collate``).

The names below are imported on first use, so that ``fastlm.train.config`` (settings, checked before a
run and by ``fastlm-train --help``) loads without torch.
"""

import importlib

_EXPORTS = {
    "MLMCollator": "collate", "block_causal_mask": "collate", "mask_tokens": "collate", "pack": "collate",
    "pad_collate": "collate", "word_start_table": "collate", "PackedBatches": "data", "TokenDataset": "data",
}
__all__ = ["TokenDataset", "PackedBatches", "MLMCollator", "mask_tokens", "word_start_table", "pad_collate",
           "pack", "block_causal_mask"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"fastlm.train.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastlm.train' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
