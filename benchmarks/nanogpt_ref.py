"""A plain PyTorch GPT (nanoGPT style, LLaMA block) for bench_train.py: the baseline fastlm's trainer is
compared against. Nothing from fastlm.models or fastlm.ops: nn.Linear, RMSNorm, rotary positions,
SwiGLU/GELU, F.scaled_dot_product_attention, F.cross_entropy on the full logits.

Same shape and same function as ``fastlm.models.GPT`` for a ``GPTConfig`` (q/k/v fused into one matmul,
as nanoGPT's ``c_attn``); ``load_fastlm_state`` copies a fastlm GPT's weights in, so both contenders start
from the same initial weights. ``check_same_function`` (run by bench_train.py before timing) shows the
two compute the same logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


def rotary_tables(head_dim: int, max_len: int, theta: float):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()  # (max_len, head_dim)


def apply_rotary(x, cos, sin):
    x1, x2 = x.float().chunk(2, dim=-1)
    rot = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rot * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.n_kv, self.hd = c.n_head, c.kv_heads, c.head_dim
        self.c_attn = nn.Linear(c.d_model, (c.n_head + 2 * c.kv_heads) * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.n_head * c.head_dim, c.d_model, bias=c.bias)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd],
                                       dim=-1)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_head)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.swiglu = c.mlp == "swiglu"
        h = c.mlp_hidden_size
        if self.swiglu:
            self.w_gate = nn.Linear(c.d_model, h, bias=c.bias)
        self.w_up = nn.Linear(c.d_model, h, bias=c.bias)
        self.c_proj = nn.Linear(h, c.d_model, bias=c.bias)

    def forward(self, x):
        h = F.silu(self.w_gate(x)) * self.w_up(x) if self.swiglu else F.gelu(self.w_up(x))
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1, self.attn = RMSNorm(c.d_model, c.norm_eps), CausalSelfAttention(c)
        self.ln_2, self.mlp = RMSNorm(c.d_model, c.norm_eps), MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    """nanoGPT's GPT with a LLaMA block; ``c`` is a fastlm GPTConfig (only its sizes are read)."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        cos, sin = rotary_tables(c.head_dim, c.max_seq_len, c.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # nanoGPT init: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)), tied head
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = c.init_std / math.sqrt(2 * c.n_layer) if name.endswith("c_proj.weight") else c.init_std
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.wte(idx)
        for block in self.h:
            x = block(x, cos, sin)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)

    @torch.no_grad()
    def load_fastlm_state(self, sd: dict) -> None:
        """Copy a fastlm GPT's state dict in (q/k/v concatenated into c_attn)."""
        mine = {"wte.weight": sd["tok_emb.weight"], "ln_f.weight": sd["norm.weight"],
                "lm_head.weight": sd["lm_head.weight"]}
        for i in range(self.config.n_layer):
            p, q = f"blocks.{i}.", f"h.{i}."
            mine[q + "ln_1.weight"] = sd[p + "attn_norm.weight"]
            mine[q + "ln_2.weight"] = sd[p + "mlp_norm.weight"]
            for s in ("weight", "bias"):
                if p + f"attn.q_proj.{s}" in sd:
                    mine[q + f"attn.c_attn.{s}"] = torch.cat([sd[p + f"attn.{n}_proj.{s}"] for n in "qkv"])
                    mine[q + f"attn.c_proj.{s}"] = sd[p + f"attn.o_proj.{s}"]
                    for a, b in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "c_proj")):
                        if p + f"mlp.{a}.{s}" in sd:
                            mine[q + f"mlp.{b}.{s}"] = sd[p + f"mlp.{a}.{s}"]
        missing, unexpected = self.load_state_dict(mine, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"fastlm -> RefGPT weight map: missing {missing}, unexpected {unexpected}")


def check_same_function(config, seed: int = 0) -> float:
    """Max |logits difference| between fastlm's GPT and RefGPT with the same weights (should be ~1e-6)."""
    from fastlm.models import GPT

    torch.manual_seed(seed)
    fl = GPT(config).eval()
    ref = RefGPT(config).eval()
    ref.load_fastlm_state(fl.state_dict())
    x = torch.randint(0, config.vocab_size, (2, min(32, config.max_seq_len)))
    with torch.no_grad():
        return float((fl(x, kernels="torch") - ref(x)).abs().max())
