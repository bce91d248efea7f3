"""The trainer's batch sources: the global train row stream (CLM targets or MLM masks) and fixed val batches.

Train rows come from ``GlobalRows`` over the train documents (packed or random windows); each rank takes its
contiguous share of every global micro-batch. MLM masks are drawn per row from a generator seeded with
``(seed, global row index)``, so they do not depend on the world size or on where a run was resumed.
Validation: ``data.val_tokens`` (or prepared val shards), else a ``val_fraction`` share of the train shards'
documents, evenly spaced (``holdout_split``), never trained on. Val rows are read once (documents in file order,
packed, up to ``eval_tokens`` but one row per rank at least), masked once for MLM, and split over ranks in equal
counts (FSDP ranks must run the same forwards): the rows past a multiple of the world size are left out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from fastlm.train.collate import mask_tokens, word_start_table
from fastlm.train.config import TrainConfig
from fastlm.train.data import GlobalRows, PackedBatches, RandomRows, TokenDataset, holdout_split
from fastlm.train.distributed import DistInfo
from fastlm.train.evaluate import token_byte_lengths

MASK_TOKEN = "<|mask|>"
PAD_TOKEN = "<|pad|>"


class MLMMasker:
    """Masks rows for MLM, each with its own generator seeded by ``(seed, row id)``.

    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256, "<|mask|>": 257})
    >>> m = MLMMasker(tok, seed=0); x, y = m(torch.randint(0, 256, (2, 16)), torch.tensor([0, 1]))
    >>> bool(((y == -100) | (x == 257) | (x < 256)).all())
    True
    """

    def __init__(self, tokenizer, *, seed: int, mlm_probability: float = 0.15, whole_word: bool = False):
        specials = tokenizer.special_tokens
        if MASK_TOKEN not in specials:
            raise ValueError(f"task=mlm needs a {MASK_TOKEN} special token, but the tokenizer has only "
                             f"{sorted(specials)}: train the tokenizer with {MASK_TOKEN} among its specials")
        self.mask_id = specials[MASK_TOKEN]
        self.pad_id = specials.get(PAD_TOKEN)
        self.special_ids = sorted(specials.values())
        self.vocab_size = tokenizer.n_mergeable  # random replacements are ordinary tokens
        self.seed, self.p = seed, mlm_probability
        self.word_start = word_start_table(tokenizer) if whole_word else None

    def __call__(self, rows: torch.Tensor, row_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for row, rid in zip(rows, row_ids.tolist()):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(rid))
            x, y = mask_tokens(row[None], mask_token_id=self.mask_id, vocab_size=self.vocab_size,
                               special_ids=self.special_ids, pad_id=self.pad_id, mlm_probability=self.p,
                               word_start=self.word_start, generator=g)
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)


@dataclass
class Batches:
    """Everything the loop reads: tokenizer, the train stream and this rank's val batches."""
    tokenizer: object                  # fastlm Tokenizer
    tokenizer_path: str                # its file (copied into checkpoints)
    train: GlobalRows                  # the global train row stream (state_dict = the data position)
    val: Optional[list]                # this rank's val batches, or None (no validation data)
    byte_lengths: torch.Tensor         # bytes per token id, for bits per byte
    info: DistInfo
    masker: Optional[MLMMasker] = None  # mlm only

    def next_micro(self, n_global: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(inputs, targets)`` of the next global micro-batch of ``n_global`` rows."""
        x, y, rows = self.train.take(n_global, self.info.rank, self.info.world_size)
        return self.masker(x, rows) if self.masker is not None else (x, y)


def _val_rows(ds: TokenDataset, docs: np.ndarray, seq_len: int, max_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``max_rows`` packed rows of ``docs`` in file order, each token a target at most once."""
    total = int(np.diff(ds.doc_offsets)[docs].sum())
    n = min(max_rows, (total - 1) // seq_len)
    if n < 1:
        raise ValueError(f"the validation documents hold {total} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    return PackedBatches(ds, batch=n, seq_len=seq_len, shuffle=False, docs=docs).next_rows(n)[:2]


def _check_vocab(ds: TokenDataset, tokenizer, tok_path: str) -> None:
    """The shards' vocab_size is at most the tokenizer's (the model's embedding rows)."""
    if ds.vocab_size > tokenizer.n_vocab:
        raise ValueError(f"{ds.paths[0]}: vocab_size {ds.vocab_size} > the tokenizer's {tokenizer.n_vocab} "
                         f"({tok_path})")


def load_batches(cfg: TrainConfig, prepared, info: DistInfo) -> Batches:
    """The run's batch sources from ``prepare_data``'s output (``.tokenizer``, ``.train``, ``.val``)."""
    from fastlm.tokenizer import Tokenizer
    tok_path = prepared.tokenizer
    tokenizer = Tokenizer.from_file(tok_path)
    ds = TokenDataset(prepared.train)  # every id checked below its shard's vocab_size, that below the model's:
    _check_vocab(ds, tokenizer, tok_path)  # an id out of range never reaches the embedding (see `_check_ids`)
    T = cfg.data.seq_len
    val_paths = list(getattr(prepared, "val", []) or [])
    if val_paths:
        train_docs = np.arange(ds.n_docs, dtype=np.int64)
        val_ds, val_docs = TokenDataset(val_paths), None
        _check_vocab(val_ds, tokenizer, tok_path)
    else:
        train_docs, val_docs = holdout_split(ds.n_docs, cfg.data.val_fraction)
        val_ds = ds if val_docs.size else None
    if cfg.data.sampling == "packed":
        source = PackedBatches(ds, batch=1, seq_len=T, seed=cfg.seed, shuffle=cfg.data.shuffle, docs=train_docs)
    else:
        source = RandomRows(ds, seq_len=T, seed=cfg.seed, docs=train_docs)
    masker = (MLMMasker(tokenizer, seed=cfg.seed, mlm_probability=cfg.mlm_probability,
                        whole_word=cfg.whole_word_mask) if cfg.task == "mlm" else None)
    val = None
    if val_ds is not None:
        docs = np.arange(val_ds.n_docs, dtype=np.int64) if val_docs is None else val_docs
        max_rows = max(info.world_size, math.ceil(cfg.eval_tokens / T))  # a row per rank at least
        x, y = _val_rows(val_ds, docs, T, max_rows)
        if masker is not None:  # fixed masks: every evaluation scores the same positions
            eval_masker = MLMMasker(tokenizer, seed=cfg.seed + 1, mlm_probability=cfg.mlm_probability,
                                    whole_word=cfg.whole_word_mask)
            x, y = eval_masker(x, torch.arange(x.shape[0]))
        n = (x.shape[0] // info.world_size) * info.world_size
        if n == 0:
            raise ValueError(f"{x.shape[0]} validation row(s) cannot be split over {info.world_size} ranks: "
                             "give more validation data or a smaller data.seq_len")
        x, y = x[info.rank:n:info.world_size], y[info.rank:n:info.world_size]
        B = cfg.micro_batch
        val = [(x[i:i + B], y[i:i + B]) for i in range(0, x.shape[0], B)]
    return Batches(tokenizer=tokenizer, tokenizer_path=os.path.abspath(tok_path), train=GlobalRows(source),
                   val=val, byte_lengths=token_byte_lengths(tokenizer), info=info, masker=masker)
