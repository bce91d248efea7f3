"""Reward model: a causal GPT body with a scalar head read at each sequence's last real token.

`RewardModel` subclasses `GPT` so that its state dict is a GPT's plus ``score.weight``/``score.bias``:
an SFT checkpoint loads into it directly (`from_gpt`), and `fastlm.train.checkpoint.load_model` rebuilds
it from the checkpoint's ``model_config`` kind "reward" (`RewardConfig`). The LM head is kept (tied to the
embedding by default, so it costs nothing) but unused; an untied one is frozen so DDP sees no unused
trainable parameter.

Padding contract: rows are right-padded (causal attention: the pad tokens after position ``len - 1``
cannot change it), and the reward is ``score(h[b, lengths[b] - 1])``: the hidden state of the last real
token, which for a rendered conversation is ``<|assistant_end|>`` (the model has seen the whole answer).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn as nn

from fastlm.models.config import GPTConfig, RewardConfig
from fastlm.models.gpt import GPT
from fastlm.models.layers import is_integer_dtype


def lengths_from(ids: torch.Tensor, lengths: Optional[torch.Tensor],
                 attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B,) int64 real lengths from ``lengths`` or a right-padded ``attention_mask`` (1 = token); all T
    when both are None. Refuses lengths outside [1, T] and masks with holes or left padding.

    >>> lengths_from(torch.zeros(2, 4, dtype=torch.long), None, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])).tolist()
    [2, 4]
    """
    if ids.dim() != 2:
        raise ValueError(f"idx must be (batch, time), got shape {tuple(ids.shape)}")
    B, T = ids.shape
    if lengths is not None and attention_mask is not None:
        raise ValueError("give lengths or attention_mask, not both")
    if attention_mask is not None:
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match ids {tuple(ids.shape)}")
        m = attention_mask.to(torch.long)
        lengths = m.sum(-1)
        expect = (torch.arange(T, device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)).long()
        if not torch.equal(m, expect):
            raise ValueError("attention_mask must be right-padded: 1s then 0s in every row")
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=ids.device)
    lengths = torch.as_tensor(lengths)
    if not is_integer_dtype(lengths.dtype):
        raise ValueError(f"lengths must be integers, got {lengths.dtype}")  # 2.7 would become 2
    lengths = lengths.to(device=ids.device, dtype=torch.long).view(-1)
    if lengths.shape[0] != B:
        raise ValueError(f"lengths has {lengths.shape[0]} entries for {B} rows")
    if bool(((lengths < 1) | (lengths > T)).any()):
        raise ValueError(f"lengths must be in [1, {T}], got {lengths.tolist()}")
    return lengths


class RewardModel(GPT):
    """GPT body + ``score = Linear(d_model, 1)`` at the last non-padding token -> (B,) float32 rewards.
    The head starts as N(0, init_std) weights and a zero bias: initial rewards are small
    (|r| ~ init_std * sqrt(d_model) for RMS-normed states) but the body gets gradients from step one,
    which a zero-init head would withhold for the first step.

    >>> import torch
    >>> rm = RewardModel(GPTConfig.named("tiny", vocab_size=64, n_layer=1))
    >>> ids = torch.randint(0, 64, (3, 8))
    >>> rm(ids, lengths=torch.tensor([8, 5, 2])).shape
    torch.Size([3])
    >>> type(rm.config).__name__
    'RewardConfig'
    """

    def __init__(self, config: GPTConfig):
        if not isinstance(config, RewardConfig):
            config = RewardConfig(**dataclasses.asdict(config))
        super().__init__(config)
        self.score = nn.Linear(config.d_model, 1, bias=True)
        nn.init.normal_(self.score.weight, std=config.init_std)
        nn.init.zeros_(self.score.bias)
        if not config.tie_embeddings:
            self.lm_head.weight.requires_grad_(False)

    @classmethod
    def from_gpt(cls, gpt: GPT) -> "RewardModel":
        """A reward model whose body is a copy of ``gpt``'s weights (e.g. an SFT model); fresh head.

        >>> g = GPT(GPTConfig.named("tiny", vocab_size=64, n_layer=1))
        >>> rm = RewardModel.from_gpt(g)
        >>> bool(torch.equal(rm.tok_emb.weight, g.tok_emb.weight))
        True
        """
        if isinstance(gpt, RewardModel) or not isinstance(gpt, GPT):
            raise TypeError(f"from_gpt needs a GPT (causal LM), got {type(gpt).__name__}")
        rm = cls(gpt.config)
        missing, unexpected = rm.load_state_dict(gpt.state_dict(), strict=False)
        if unexpected or sorted(missing) != ["score.bias", "score.weight"]:
            raise ValueError(f"GPT state does not fit the reward body: missing {missing}, unexpected {unexpected}")
        return rm.to(next(gpt.parameters()).device)

    def forward(self, idx: torch.Tensor, *, lengths: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, kernels: str = "fastlm",
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) float32 rewards of right-padded rows ``idx`` (B, T), read at ``lengths - 1`` (``lengths``
        (B,) or ``attention_mask`` (B, T); neither: the last position)."""
        n = lengths_from(idx, lengths, attention_mask)
        h = self.hidden_states(idx, kernels=kernels, position_ids=position_ids)  # (B, T, d)
        last = h[torch.arange(h.shape[0], device=h.device), n - 1]              # (B, d)
        return self.score(last).squeeze(-1).float()
