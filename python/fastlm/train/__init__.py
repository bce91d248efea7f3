"""Training inputs: CLM batches from token shards (``data``) and MLM / SFT collation (``collate``)."""

from fastlm.train.collate import (MLMCollator, block_causal_mask, mask_tokens, pack, pad_collate,
                                  word_start_table)
from fastlm.train.data import PackedBatches, TokenDataset

__all__ = ["TokenDataset", "PackedBatches", "MLMCollator", "mask_tokens", "word_start_table", "pad_collate",
           "pack", "block_causal_mask"]
