"""Transformer building blocks shared by the causal LM and the encoder: RMSNorm/LayerNorm, rotary
positions (LLaMA's "rotate halves" layout), attention through fastlm.ops, SwiGLU/GELU MLP."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastlm.ops import attention


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before the weight (as LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg) -> nn.Module:
    """The config's norm: ``RMSNorm`` (GPT; encoders with ``norm='rmsnorm'``) or ``nn.LayerNorm``
    (encoders' default, BERT's; its bias follows ``cfg.bias``)."""
    if getattr(cfg, "norm", "rmsnorm") == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
    return RMSNorm(cfg.d_model, cfg.norm_eps)


class Rotary(nn.Module):
    """cos/sin tables for rotary embeddings. Layout: the head dim is split in two halves
    (x1, x2) rotated as (x1 cos - x2 sin, x2 cos + x1 sin) -- LLaMA/HF's layout, not the
    interleaved pairs of the original paper, so weights load into transformers unchanged."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        # Same expression as transformers' default rope init, so fp32 tables agree bit for bit.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float()
                                    / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_seq_len = max_seq_len

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) or (T,) -> cos, sin of shape (B or 1, 1, T, head_dim), fp32."""
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        # fp32 angles in every model dtype, as transformers' LlamaRotaryEmbedding (model.double()
        # casts the buffer: fp64 angles made an fp64 model's logits differ from Llama's by ~1e-6)
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None], emb.sin()[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd) rotated by position; math in fp32 (fp64 for an fp64 x, not rounded to fp32:
    transformers' Llama does the same; its ModernBERT rounds, ~1e-7 apart), result in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with optional grouped-query heads (n_kv_head < n_head)."""

    def __init__(self, cfg, *, causal: bool):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_head, self.n_kv, self.hd, self.causal = cfg.n_head, cfg.kv_heads, hd, causal
        self.q_proj = nn.Linear(d, self.n_head * hd, bias=cfg.bias)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=cfg.bias)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=cfg.bias)
        self.o_proj = nn.Linear(self.n_head * hd, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
                backend: str, key_mask: Optional[torch.Tensor] = None,
                kv_cache=None) -> torch.Tensor:
        """key_mask (B, T) bool, True = a real token others may attend to (padding is False), or a
        full (B, 1, T, T) bool mask (True = query may attend key; packed rows' block-causal mask);
        fastlm's attention kernel takes no mask, so masked calls go to PyTorch's SDPA.
        kv_cache: this layer's view of a `fastlm.models.generate.KVCache` (causal only): the new
        keys/values are written at the cache position and the queries attend to all cached ones."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)    # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        gqa = self.n_kv != self.n_head
        if kv_cache is not None:
            k, v, mask = kv_cache.update(k, v)  # all cached keys; mask None = plain causal
            if mask is not None:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
                return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))
        if key_mask is None:
            y = attention(q, k, v, is_causal=self.causal, enable_gqa=gqa, backend=backend)
        else:
            mask = key_mask if key_mask.dim() == 4 else key_mask[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); GELU: down(gelu(up(x)))."""

    def __init__(self, cfg):
        super().__init__()
        d, h = cfg.d_model, cfg.mlp_hidden_size
        self.kind = cfg.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(d, h, bias=cfg.bias)
        self.up_proj = nn.Linear(d, h, bias=cfg.bias)
        self.down_proj = nn.Linear(h, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg, *, causal: bool):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, causal=causal)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, backend: str, key_mask=None, kv_cache=None):
        x = x + self.drop(self.attn(self.attn_norm(x), rope, backend, key_mask, kv_cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


def init_weights(model: nn.Module, std: float, n_layer: int) -> None:
    """GPT-2 / nanoGPT init: every Linear and Embedding ~ N(0, std), biases 0, norms 1; the
    projections that write into the residual stream (o_proj, down_proj) get std / sqrt(2 *
    n_layer), so the residual variance stays ~constant with depth (2 writes per block)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            s = std / math.sqrt(2 * n_layer) if name.endswith(("o_proj", "down_proj")) else std
            nn.init.normal_(m.weight, mean=0.0, std=s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, (RMSNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def check_kernels(kernels: str) -> str:
    """'fastlm' | 'torch' -> the fastlm.ops backend name."""
    if kernels not in ("fastlm", "torch"):
        raise ValueError(f"kernels must be 'fastlm' or 'torch', got {kernels!r}")
    return "auto" if kernels == "fastlm" else "torch"


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """Integer ids or lengths (not float, complex or bool: 1.5 or True would be taken silently)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def check_ids(idx: torch.Tensor, vocab_size: int) -> None:
    """(B, T) integer token ids; on the CPU also within [0, vocab_size) (the embedding's own
    IndexError names no vocabulary). Not on a GPU, where reading the range back would stall every
    step (an id out of range is the embedding's device assert there), nor under torch.compile."""
    if idx.dim() != 2:
        raise ValueError(f"idx must be (batch, time), got shape {tuple(idx.shape)}")
    if not is_integer_dtype(idx.dtype):
        raise ValueError(f"idx must hold integer token ids, got {idx.dtype}")
    if idx.device.type == "cpu" and idx.numel() and not torch.compiler.is_compiling():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab_size})")


def count_params(model: nn.Module) -> int:
    """Unique parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
