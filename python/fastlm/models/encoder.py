"""Bidirectional transformer encoder with a BERT-style masked-LM head."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastlm.models.config import EncoderConfig
from fastlm.models.gpt import head_loss
from fastlm.models.layers import (Block, Rotary, check_ids, check_kernels, count_params, init_weights,
                                  make_norm)


class Encoder(nn.Module):
    """Masked LM: token (+ learned position) embedding -> n_layer pre-norm blocks with
    bidirectional attention (rotary when ``positions='rotary'``) -> norm -> MLM head
    (dense d->d, GELU, norm, decoder to the vocabulary, optionally tied to the embedding;
    BERT's head without the decoder bias). Norms are LayerNorm (default) or RMSNorm
    (``norm='rmsnorm'``); with the defaults this is Megatron-BERT's pre-norm block.
    ``embed_norm`` norms the embeddings and drops block 0's attention norm (ModernBERT).

    ``attention_mask`` (B, T), 1 for tokens and 0 for padding, keeps padding out of every
    token's attention (then PyTorch's SDPA runs instead of fastlm.ops.attention); without it
    every position attends to every other, as for full-length sequences from token shards.

    >>> import torch
    >>> model = Encoder(EncoderConfig.named("tiny", vocab_size=64))
    >>> idx = torch.randint(0, 64, (2, 8))
    >>> model(idx).shape
    torch.Size([2, 8, 64])
    >>> labels = torch.full((2, 8), -100); labels[:, 3] = 5
    >>> model(idx, labels).shape
    torch.Size([])
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.positions == "learned":
            self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model)
            self.rotary = None
        else:
            self.pos_emb = None
            self.rotary = Rotary(c.head_dim, c.max_seq_len, c.rope_theta)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, causal=False) for _ in range(c.n_layer))
        self.embed_norm = make_norm(c) if c.embed_norm else None
        if c.embed_norm:  # ModernBERT: the normed embeddings are block 0's attention input as is
            self.blocks[0].attn_norm = nn.Identity()
        self.norm = make_norm(c)
        self.head_dense = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.head_norm = make_norm(c)
        self.decoder = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c.init_std, c.n_layer)
        if c.tie_embeddings:
            self.decoder.weight = self.tok_emb.weight

    def hidden_states(self, idx: torch.Tensor, *, kernels: str = "fastlm",
                      attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, d_model) encoder outputs (after the final norm)."""
        backend = check_kernels(kernels)
        check_ids(idx, self.config.vocab_size)
        T = idx.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} > max_seq_len {self.config.max_seq_len}")
        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape != idx.shape:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match idx "
                                 f"{tuple(idx.shape)}")
            key_mask = attention_mask.to(device=idx.device, dtype=torch.bool)
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        rope = self.rotary(pos) if self.rotary is not None else None
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, backend, key_mask)
        return self.norm(x)

    def _transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_norm(F.gelu(self.head_dense(h)))

    def forward(self, idx: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                kernels: str = "fastlm", reduction: str = "mean",
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MLM logits (B, T, V) when ``labels`` is None, else the loss over positions with
        ``labels != -100`` (mean over them, 'sum', or 'none' giving (B, T) with 0 elsewhere).
        With 'mean'/'sum' only the labelled rows go through the head (~15% of tokens); a batch
        with no labelled position gives 0 (F.cross_entropy would give NaN). ``attention_mask``
        (B, T): 1 = token, 0 = padding (a row with no token at all gives NaN outputs)."""
        h = self.hidden_states(idx, kernels=kernels, attention_mask=attention_mask)
        if labels is None:
            return self.decoder(self._transform(h))
        if labels.shape != idx.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match idx {tuple(idx.shape)}")
        if reduction != "none":
            keep = labels != -100
            h, labels = h[keep], labels[keep]
            if labels.numel() == 0:  # nothing masked: a zero loss that still has a graph
                return h.sum() * 0.0
        return head_loss(self._transform(h), self.decoder.weight, labels, kernels=kernels,
                         reduction=reduction)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameters, a tied weight once; ``non_embedding`` leaves out token and position
        embedding tables."""
        n = count_params(self)
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            n -= self.pos_emb.weight.numel() if self.pos_emb is not None else 0
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), counted as ``GPT.flops_per_token``:
        6 * (non-embedding params + the V*d decoder matmul) + 12 * n_layer * n_head * head_dim *
        seq_len. An upper bound for MLM training, whose loss runs the head on masked rows only."""
        c = self.config
        n = self.num_params(non_embedding=True)
        if c.tie_embeddings:
            n += c.vocab_size * c.d_model
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * seq_len
