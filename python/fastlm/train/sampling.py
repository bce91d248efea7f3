"""Samples printed during training: a CLM continuation of ``sample_prompt``, or MLM fill-ins of masked words.

CLM uses ``fastlm.models.generate.generate`` (KV cache). Sampling has its own seeded generator, so it
never moves the training RNG streams (a resumed run prints the same samples).
"""

from __future__ import annotations

import contextlib

import torch

from fastlm.models.generate import generate

SAMPLE_TEMPERATURE = 0.8  # a little below 1: tiny models read better
SAMPLE_TOP_K = 40


def sample_text(model, tokenizer, cfg, device: torch.device, autocast=None) -> str:
    """The run's sample: the prompt and its continuation (clm), or the prompt with predicted masks (mlm).

    >>> from fastlm.models import GPT, GPTConfig
    >>> from fastlm.tokenizer import Tokenizer
    >>> from fastlm.train.config import TrainConfig
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256})
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=257, n_layer=1))
    >>> sample_text(m, tok, TrainConfig(sample_prompt="Hi", sample_tokens=4), torch.device("cpu")).startswith("Hi")
    True
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed)
    specials = tokenizer.special_tokens
    try:
        with autocast if autocast is not None else contextlib.nullcontext():
            if cfg.task == "clm":
                bos = specials.get("<|bos|>")
                prompt = ([bos] if bos is not None else []) + tokenizer.encode_ordinary(cfg.sample_prompt)
                out = list(generate(model, prompt, max_new_tokens=cfg.sample_tokens, temperature=SAMPLE_TEMPERATURE,
                                    top_k=SAMPLE_TOP_K, eos_id=bos, generator=g, kernels=cfg.model.kernels))
                if out and out[-1] == bos:  # the model ended the document
                    out.pop()
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
