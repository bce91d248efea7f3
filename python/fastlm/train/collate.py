"""Batch collation: MLM masking (``DataCollatorForLanguageModeling`` semantics), SFT padding and packing,
and the block-diagonal causal mask of packed rows.

Causal labels here are *shifted*: ``labels[t]`` is the target of position ``t`` (the id at ``t + 1``), or
-100 where there is none (padding, loss mask 0, the end of an example) — the same convention as
``TokenDataset``'s ``(x, y)``. MLM labels are aligned (``labels[t]`` is the original id at ``t``).
"""

from __future__ import annotations

import numbers
from typing import Callable, Iterable, Optional, Sequence

import torch

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- MLM

def word_start_table(tokenizer, *, is_start: Optional[Callable[[bytes], bool]] = None) -> torch.Tensor:
    """Bool ``[n_vocab]``: does token ``i`` begin a word (default: its bytes start with a space, or it is
    a special token, or its first byte is not a letter/digit continuation)?

    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer([bytes([b]) for b in range(256)] + [b" the"])
    >>> t = word_start_table(tok); bool(t[256]), bool(t[ord("e")])
    (True, False)
    """
    if is_start is None:
        def is_start(b: bytes) -> bool:
            return not b or not (b[:1].isalnum() or b[0] >= 0x80)
    specials = set(tokenizer.special_tokens.values())
    out = torch.zeros(tokenizer.n_vocab, dtype=torch.bool)
    for i in range(tokenizer.n_vocab):
        out[i] = True if i in specials else bool(is_start(tokenizer.token_bytes(i)))
    return out


def _word_ids(word_start: torch.Tensor, no_mask: torch.Tensor) -> torch.Tensor:
    """Per-row word index of each token (-1 on tokens that are never masked); a word begins at a word start
    or after a never-masked token."""
    starts = word_start | torch.roll(no_mask, 1, dims=-1)
    if starts.shape[-1]:  # rows of length 0 have no first token
        starts[..., 0] = True
    starts &= ~no_mask
    ids = torch.cumsum(starts.long(), dim=-1) - 1
    return torch.where(no_mask, torch.full_like(ids, -1), ids)


def _check_masking(*, mask_token_id: int, vocab_size: int, mlm_probability: float, mask_replace_prob: float,
                   random_replace_prob: float) -> None:
    """Refuse masking settings by name (torch.bernoulli's own error names no argument; a negative or NaN
    ``random_replace_prob`` was taken as 0)."""
    for name, p in (("mlm_probability", mlm_probability), ("mask_replace_prob", mask_replace_prob),
                    ("random_replace_prob", random_replace_prob)):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:  # NaN fails too
            raise ValueError(f"{name} must be a number in [0, 1], got {p!r}")
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError(f"mask_replace_prob + random_replace_prob must not exceed 1, got {mask_replace_prob} + "
                         f"{random_replace_prob}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size <= 0:
        raise ValueError(f"vocab_size (the range of random replacement ids) must be an integer > 0, got {vocab_size!r}")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, numbers.Integral) or mask_token_id < 0:
        raise ValueError(f"mask_token_id must be an integer >= 0, got {mask_token_id!r}")


def mask_tokens(input_ids: torch.Tensor, *, mask_token_id: int, vocab_size: int, special_ids: Iterable[int] = (),
                pad_id: Optional[int] = None, mlm_probability: float = 0.15, mask_replace_prob: float = 0.8,
                random_replace_prob: float = 0.1, word_start: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` for masked LM: each maskable position is chosen with ``mlm_probability``; chosen
    ones become ``mask_token_id`` (80%), a random id (10%) or stay (10%); labels are the original ids there
    and -100 elsewhere. Special ids and ``pad_id`` are never chosen. With ``word_start`` (bool ``[n_vocab]``
    table, see ``word_start_table``) whole words are chosen: a word is picked with ``mlm_probability`` and
    all its tokens are masked, each then replaced 80/10/10 on its own (as transformers 4.x's
    ``DataCollatorForWholeWordMask``; 5.x's ``whole_word_mask=True`` forces ``mask_replace_prob=1``).
    Settings out of range, float/bool or negative ids are refused naming the argument.

    >>> ids = torch.arange(10, 30).view(2, 10)
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = mask_tokens(ids, mask_token_id=1, vocab_size=40, special_ids=[10], generator=g)
    >>> bool(((y == -100) | (y == ids)).all()), bool((y[:, 0] == -100)[0])
    (True, True)
    """
    _check_masking(mask_token_id=mask_token_id, vocab_size=vocab_size, mlm_probability=mlm_probability,
                   mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() == 0:
        raise ValueError("input_ids must be a (seq,) or (batch, seq) tensor of ids, got a scalar")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")  # .long() would truncate
    if input_ids.numel() and int(input_ids.min()) < 0:  # -100 would be masked with a label saying "not masked"
        raise ValueError(f"input_ids hold a negative id {int(input_ids.min())}; token ids are >= 0")
    inputs = input_ids.clone().long()
    labels = input_ids.clone().long()
    no_mask = torch.zeros_like(inputs, dtype=torch.bool)
    for s in set(special_ids) | ({pad_id} if pad_id is not None else set()):
        no_mask |= inputs == s
    if word_start is None:
        prob = torch.full(inputs.shape, float(mlm_probability))
        prob.masked_fill_(no_mask, 0.0)
        masked = torch.bernoulli(prob, generator=generator).bool()
    else:
        if word_start.dtype != torch.bool or word_start.dim() != 1:
            raise ValueError("word_start must be a 1-D bool table over the vocabulary")
        if inputs.numel() and int(inputs.max()) >= word_start.numel():
            raise ValueError(f"token id {int(inputs.max())} outside the word_start table ({word_start.numel()})")
        wid = _word_ids(word_start[inputs], no_mask)
        n_words = int(wid.max()) + 1 if wid.numel() else 0
        w2 = wid.flatten(0, -2) if wid.dim() > 1 else wid[None]  # (rows, T): any leading dims flattened
        # one draw per (row, word)
        pick = torch.bernoulli(torch.full((w2.shape[0], max(n_words, 1)), float(mlm_probability)),
                               generator=generator).bool()
        masked = torch.gather(pick, 1, w2.clamp_min(0)) & (w2 >= 0)
        masked = masked.view(inputs.shape)
    labels[~masked] = IGNORE_INDEX
    replaced = torch.bernoulli(torch.full(inputs.shape, float(mask_replace_prob)), generator=generator).bool() & masked
    inputs[replaced] = mask_token_id
    rest = 1.0 - mask_replace_prob
    if rest > 0 and random_replace_prob > 0:
        scaled = min(1.0, random_replace_prob / rest)
        rand = torch.bernoulli(torch.full(inputs.shape, scaled), generator=generator).bool() & masked & ~replaced
        words = torch.randint(vocab_size, inputs.shape, dtype=torch.long, generator=generator)
        inputs[rand] = words[rand]
    return inputs, labels


class MLMCollator:
    """Pads a list of id sequences (right side) and masks them with ``mask_tokens``; returns
    ``{"input_ids", "attention_mask", "labels"}``. Deterministic for ``seed``.

    >>> c = MLMCollator(mask_token_id=1, pad_id=0, vocab_size=50, seed=0)
    >>> out = c([[5, 6, 7], [8, 9]]); out["input_ids"].shape, out["labels"][1, 2].item()
    (torch.Size([2, 3]), -100)
    """

    def __init__(self, *, mask_token_id: int, pad_id: int, vocab_size: int, special_ids: Iterable[int] = (),
                 mlm_probability: float = 0.15, mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1,
                 word_start: Optional[torch.Tensor] = None, seed: Optional[int] = None):
        _check_masking(mask_token_id=mask_token_id, vocab_size=vocab_size, mlm_probability=mlm_probability,
                       mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)
        self.mask_token_id, self.pad_id, self.vocab_size = mask_token_id, pad_id, vocab_size
        self.special_ids = set(special_ids) | {mask_token_id}
        self.mlm_probability, self.mask_replace_prob = mlm_probability, mask_replace_prob
        self.random_replace_prob, self.word_start = random_replace_prob, word_start
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, examples: Sequence[Sequence[int]]) -> dict:
        if len(examples) == 0:
            raise ValueError("MLMCollator: no examples to collate")
        n = max(len(e) for e in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, :len(e)] = torch.as_tensor(list(e), dtype=torch.long)
            attn[i, :len(e)] = 1
        x, y = mask_tokens(ids, mask_token_id=self.mask_token_id, vocab_size=self.vocab_size,
                           special_ids=self.special_ids, mlm_probability=self.mlm_probability,
                           mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob,
                           word_start=self.word_start, generator=self.generator)
        # padding is never chosen (also when pad_id is an ordinary id inside a text)
        pad = attn == 0
        x[pad], y[pad] = self.pad_id, IGNORE_INDEX
        return {"input_ids": x, "attention_mask": attn, "labels": y}


# ----------------------------------------------------------------------------------------------- SFT

def _shifted_labels(ids: Sequence[int], loss_mask: Sequence[int]) -> list[int]:
    n = len(ids)
    if len(loss_mask) != n:
        raise ValueError(f"ids ({n}) and loss_mask ({len(loss_mask)}) differ in length")
    return [int(ids[t + 1]) if loss_mask[t + 1] else IGNORE_INDEX for t in range(n - 1)] + ([IGNORE_INDEX] if n else [])


def pad_collate(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, *, side: str = "right",
                pad_to_multiple_of: int = 1) -> dict:
    """Pad ``(ids, loss_mask)`` examples (from ``render_conversation``) into ``{"input_ids", "labels",
    "attention_mask", "position_ids"}`` int64 tensors. ``labels[t]`` is ``ids[t + 1]`` where
    ``loss_mask[t + 1]`` is 1, else -100 (so padding and prompt tokens carry no loss).

    >>> out = pad_collate([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])], pad_id=0, side="left")
    >>> out["input_ids"].tolist(), out["labels"].tolist()
    ([[1, 2, 3], [0, 4, 5]], [[2, 3, -100], [-100, 5, -100]])
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    if not examples:
        raise ValueError("no examples")
    n = max(len(ids) for ids, _ in examples)
    n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    shape = (len(examples), n)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros(shape, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        k = len(ids)
        sl = slice(0, k) if side == "right" else slice(n - k, n)
        input_ids[i, sl] = torch.as_tensor(list(ids), dtype=torch.long)
        labels[i, sl] = torch.as_tensor(_shifted_labels(ids, mask), dtype=torch.long)
        attn[i, sl] = 1
        pos[i, sl] = torch.arange(k)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attn, "position_ids": pos}


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, *, pad_id: int = 0,
         truncate: bool = True) -> dict:
    """Pack ``(ids, loss_mask)`` examples into rows of ``seq_len`` (first fit, in order); returns int64
    ``input_ids``, ``labels`` (shifted, never across examples), ``position_ids`` (restarting at 0 for
    each example), ``doc_ids`` (index of the example, -1 on padding) and floats ``padding_fraction``
    (padded share of all slots) and ints ``n_truncated``. An example longer than ``seq_len`` is cut
    (``truncate=True``) or refused.

    >>> out = pack([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1]), ([6, 7, 8], [1, 1, 1])], 5, pad_id=0)
    >>> out["input_ids"].tolist(), out["doc_ids"].tolist(), out["padding_fraction"]
    ([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]], [[0, 0, 0, 1, 1], [2, 2, 2, -1, -1]], 0.2)
    """
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    rows: list[list[int]] = []      # example indices per row
    room: list[int] = []
    cut = 0
    items = []
    for j, (ids, mask) in enumerate(examples):
        ids, mask = list(ids), list(mask)
        if len(ids) != len(mask):
            raise ValueError(f"example {j}: ids ({len(ids)}) and loss_mask ({len(mask)}) differ in length")
        if len(ids) > seq_len:
            if not truncate:
                raise ValueError(f"example {j} has {len(ids)} tokens, more than seq_len={seq_len}")
            ids, mask, cut = ids[:seq_len], mask[:seq_len], cut + 1
        items.append((ids, mask))
        for r, free in enumerate(room):
            if len(ids) <= free:
                rows[r].append(j)
                room[r] -= len(ids)
                break
        else:
            rows.append([j])
            room.append(seq_len - len(ids))
    shape = (max(len(rows), 1), seq_len)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    doc = torch.full(shape, -1, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for j in members:
            ids, mask = items[j]
            k = len(ids)
            input_ids[r, at:at + k] = torch.as_tensor(ids, dtype=torch.long)
            labels[r, at:at + k] = torch.as_tensor(_shifted_labels(ids, mask), dtype=torch.long)
            pos[r, at:at + k] = torch.arange(k)
            doc[r, at:at + k] = j
            at += k
    used = sum(len(ids) for ids, _ in items)
    slots = len(rows) * seq_len
    return {"input_ids": input_ids, "labels": labels, "position_ids": pos, "doc_ids": doc,
            "padding_fraction": (slots - used) / slots if slots else 0.0, "n_truncated": cut}


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, 1, T, T]`` mask for ``scaled_dot_product_attention`` (True = may attend): query ``i`` sees
    key ``j <= i`` of the same document; a padding position (doc id < 0) sees only itself, so no row is
    empty (an all-False row would give NaN).

    >>> block_causal_mask(torch.tensor([[0, 0, 1, -1]]))[0, 0].int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    if doc_ids.dim() == 1:
        doc_ids = doc_ids.unsqueeze(0)
    t = doc_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    same = (doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)) & (doc_ids >= 0).unsqueeze(-1)
    eye = torch.eye(t, dtype=torch.bool, device=doc_ids.device)
    return ((same & causal) | eye).unsqueeze(1)
