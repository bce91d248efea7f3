"""Samples printed during training: a CLM continuation of ``sample_prompt``, or MLM fill-ins of masked words.

CLM uses ``fastlm.models.generate.generate`` (KV cache, streaming) when it is there, else the plain loop
below (no cache). Sampling has its own seeded generator, so it never moves the training RNG streams.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

SAMPLE_TEMPERATURE = 0.8  # a little below 1: tiny models read better
SAMPLE_TOP_K = 40


@torch.no_grad()
def simple_generate(model, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int = 0, eos_id: Optional[int] = None,
                    generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Sample ids one at a time without a KV cache (the whole window is re-run each token).

    >>> from fastlm.models import GPT, GPTConfig
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=32, n_layer=1))
    >>> len(list(simple_generate(m, [1, 2], max_new_tokens=3, temperature=0)))
    3
    """
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    limit = model.config.max_seq_len
    for _ in range(max_new_tokens):
        logits = model(ids[:, -limit:])[0, -1].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, -1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        if eos_id is not None and nxt == eos_id:
            return
        yield nxt
        ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)


def _generate():
    try:
        from fastlm.models.generate import generate
        return generate
    except ImportError:
        return simple_generate


def sample_text(model, tokenizer, cfg, device: torch.device, autocast=None) -> str:
    """The run's sample: the prompt and its continuation (clm), or the prompt with predicted masks (mlm)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed)
    specials = tokenizer.special_tokens
    try:
        with autocast if autocast is not None else contextlib.nullcontext():
            if cfg.task == "clm":
                bos = specials.get("<|bos|>")
                prompt = ([bos] if bos is not None else []) + tokenizer.encode_ordinary(cfg.sample_prompt)
                out = list(_generate()(model, prompt, max_new_tokens=cfg.sample_tokens, temperature=SAMPLE_TEMPERATURE,
                                       top_k=SAMPLE_TOP_K, eos_id=bos, generator=g))
                return cfg.sample_prompt + tokenizer.decode(out)
            return _fill_masks(model, tokenizer, cfg, device)
    finally:
        model.train(was_training)


@torch.no_grad()
def _fill_masks(model, tokenizer, cfg, device) -> str:
    """Mask every 4th token of the prompt and show the model's guesses as ``[guess]``."""
    mask_id = tokenizer.special_tokens.get("<|mask|>")
    ids = tokenizer.encode_ordinary(cfg.sample_prompt + " the model fills in the masked words of this text")
    ids = ids[: model.config.max_seq_len]
    if mask_id is None or not ids:
        return ""
    x = torch.tensor([ids], device=device)
    where = torch.zeros_like(x, dtype=torch.bool)
    where[0, 2::4] = True
    x = x.masked_fill(where, mask_id)
    pred = model(x)[0].float().argmax(-1).tolist()
    parts = []
    for i, t in enumerate(ids):
        parts.append(f"[{tokenizer.decode([pred[i]])}]" if where[0, i] else tokenizer.decode([t]))
    return "".join(parts)
