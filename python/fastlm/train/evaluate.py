"""Evaluation of LMs on held-out batches: loss, perplexity, bits per byte (CLM) and accuracy (MLM).

Bits per byte makes models with different tokenizers comparable: the summed loss in nats over the target
tokens, divided by ln 2 and by the UTF-8 bytes those target tokens stand for (``token_byte_lengths``;
special tokens count 0 bytes, so a document separator costs bits but adds no bytes, as in nanochat).
Under ``torch.distributed`` every rank evaluates its own batches and the sums are all-reduced, so every
rank returns the same global figures.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence, Union

import torch
import torch.distributed as dist

IGNORE_INDEX = -100
MLMBatch = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """``LongTensor[n_vocab]``: UTF-8 bytes of each id's text, 0 for special tokens (and unused ids).

    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer([bytes([b]) for b in range(256)] + [b" the"], special_tokens={"<|bos|>": 257})
    >>> token_byte_lengths(tok)[[104, 256, 257]].tolist()
    [1, 4, 0]
    """
    specials = set(tokenizer.special_tokens.values())
    out = torch.zeros(tokenizer.n_vocab, dtype=torch.long)
    for i in range(tokenizer.n_vocab):
        if i in specials:
            continue
        try:
            out[i] = len(tokenizer.token_bytes(i))
        except ValueError:  # a hole between mergeable ranks and special ids
            pass
    return out


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over ranks (float64) when a process group is up; else return them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def evaluate_clm(model: torch.nn.Module, batches: Iterable[Sequence[torch.Tensor]], *, byte_lengths: torch.Tensor,
                 kernels: str = "fastlm") -> dict:
    """Mean loss (nats/token), perplexity, bits per byte and token count over ``(x, y)`` batches (``y`` the
    shifted targets, -100 = no loss). The model is put in eval mode and restored.

    >>> from fastlm.models import GPT, GPTConfig
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=64, n_layer=1)); x = torch.randint(0, 64, (2, 9))
    >>> r = evaluate_clm(m, [(x[:, :-1], x[:, 1:])], byte_lengths=torch.ones(64, dtype=torch.long))
    >>> r["tokens"], round(r["bpb"] * math.log(2), 4) == round(r["loss"], 4)
    (16, True)
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    lengths = byte_lengths.to(device)
    nats = n_tokens = n_bytes = 0.0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = model(x, y, kernels=kernels, reduction="none").float()  # (B, T), 0 where y == -100
            keep = y != IGNORE_INDEX
            nats += float(loss[keep].sum())
            n_tokens += float(keep.sum())
            n_bytes += float(lengths[y[keep]].sum())
    finally:
        model.train(was_training)
    nats, n_tokens, n_bytes = _all_reduce([nats, n_tokens, n_bytes], device)
    if n_tokens == 0:
        raise ValueError("evaluate_clm: the batches hold no target tokens")
    loss = nats / n_tokens
    bpb = nats / math.log(2) / n_bytes if n_bytes > 0 else float("nan")
    return {"loss": loss, "ppl": _ppl(loss), "bpb": bpb, "tokens": int(n_tokens)}


def _mlm_parts(batch: MLMBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Mapping):
        return batch["input_ids"], batch["labels"], batch.get("attention_mask")
    if len(batch) == 2:
        return batch[0], batch[1], None
    return batch[0], batch[1], batch[2]


@torch.no_grad()
def evaluate_mlm(model: torch.nn.Module, batches: Iterable[MLMBatch], *, kernels: str = "fastlm") -> dict:
    """Mean loss over masked positions, perplexity, accuracy of the argmax prediction there, and the number
    of masked positions. Batches are ``(input_ids, labels[, attention_mask])`` or ``MLMCollator`` dicts.

    >>> from fastlm.models import Encoder, EncoderConfig
    >>> m = Encoder(EncoderConfig.named("tiny", vocab_size=64, n_layer=1)); x = torch.randint(0, 64, (2, 8))
    >>> y = torch.full_like(x, -100); y[:, 2] = x[:, 2]
    >>> r = evaluate_mlm(m, [(x, y)]); r["tokens"], 0.0 <= r["accuracy"] <= 1.0
    (2, True)
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    nats = n_tokens = correct = 0.0
    try:
        for batch in batches:
            x, y, attn = _mlm_parts(batch)
            x, y = x.to(device), y.to(device)
            attn = attn.to(device) if attn is not None else None
            keep = y != IGNORE_INDEX
            if not bool(keep.any()):
                continue
            if hasattr(model, "hidden_states") and hasattr(model, "decoder"):  # head on masked rows only
                h = model.hidden_states(x, kernels=kernels, attention_mask=attn)[keep]
                logits = model.decoder(model._transform(h)).float()
            else:
                logits = model(x, kernels=kernels, attention_mask=attn).float()[keep]  # (N, V)
            target = y[keep]
            nats += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += float((logits.argmax(-1) == target).sum())
            n_tokens += float(keep.sum())
    finally:
        model.train(was_training)
    nats, n_tokens, correct = _all_reduce([nats, n_tokens, correct], device)
    if n_tokens == 0:
        raise ValueError("evaluate_mlm: the batches hold no masked (labelled) positions")
    loss = nats / n_tokens
    return {"loss": loss, "ppl": _ppl(loss), "accuracy": correct / n_tokens, "tokens": int(n_tokens)}
