"""Model configs: `GPTConfig` (decoder-only causal LM), `EncoderConfig` (BERT-style masked LM)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional


def _mlp_hidden(mlp: str, d_model: int, mlp_hidden: int, multiple_of: int) -> int:
    """The MLP hidden size: explicit when ``mlp_hidden`` > 0; else 4*d for GELU, and for SwiGLU
    2/3 of 4*d (same parameter count as GELU's 4*d with three matrices instead of two; LLaMA)
    rounded up to a multiple of ``multiple_of``."""
    if mlp_hidden > 0:
        return mlp_hidden
    if mlp == "gelu":
        return 4 * d_model
    h = int(8 * d_model / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


_TYPES = {"int": "an integer", "Optional[int]": "an integer", "float": "a finite number", "bool": "true/false",
          "str": "a string"}


def _type_ok(value, kind: str) -> bool:
    if kind == "Optional[int]" and value is None:
        return True
    if kind in ("int", "Optional[int]"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"bool": bool, "str": str}.get(kind, object))


MAX_DIM = 2**31 - 1  # every size is an int32 somewhere (kernels, shards)
MAX_PARAMS = 10**13  # ~20 TB of bf16 weights


def _check_common(c) -> None:
    for f in fields(c):  # overrides and checkpoint configs come from YAML/JSON: refuse "2", 2.5, "nan"
        if not _type_ok(getattr(c, f.name), f.type):
            raise ValueError(f"{f.name} must be {_TYPES.get(f.type, f.type)}, got {getattr(c, f.name)!r}")
    if c.mlp not in ("swiglu", "gelu"):
        raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {c.mlp!r}")
    for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
        if getattr(c, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(c, name)}")
        if getattr(c, name) > MAX_DIM:
            raise ValueError(f"{name} must be at most {MAX_DIM}, got {getattr(c, name)}")
    hidden = c.mlp_hidden or 4 * c.d_model
    params = c.n_layer * (4 * c.d_model * c.d_model + 3 * c.d_model * hidden) + c.vocab_size * c.d_model
    if params > MAX_PARAMS:  # building it would take hours (n_layer=10**9: a Python loop), then fail
        raise ValueError(f"n_layer {c.n_layer}, d_model {c.d_model}, vocab_size {c.vocab_size}: ~{params:.2g} "
                         f"parameters, more than the {MAX_PARAMS:.0e} any one machine could hold")
    if c.d_model % c.n_head:
        raise ValueError(f"d_model {c.d_model} is not a multiple of n_head {c.n_head}")
    if (c.d_model // c.n_head) % 2:
        raise ValueError(f"head dim {c.d_model // c.n_head} must be even for rotary positions")
    if c.n_kv_head is not None and (c.n_kv_head <= 0 or c.n_head % c.n_kv_head):
        raise ValueError(f"n_head {c.n_head} must be a multiple of n_kv_head {c.n_kv_head}")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    for name in ("rope_theta", "norm_eps"):
        if getattr(c, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(c, name)}")
    for name in ("mlp_hidden", "init_std"):
        if getattr(c, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(c, name)}")
    if c.mlp_multiple_of <= 0:
        raise ValueError(f"mlp_multiple_of must be > 0, got {c.mlp_multiple_of}")


class _Sizes:
    """Derived sizes shared by both configs."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_hidden_size(self) -> int:
        return _mlp_hidden(self.mlp, self.d_model, self.mlp_hidden, self.mlp_multiple_of)

    def block_params(self) -> int:
        """Parameters of one transformer block (attention + MLP + two norm weights)."""
        d, hd, kv = self.d_model, self.head_dim, self.kv_heads
        attn = d * d * 2 + 2 * d * kv * hd  # q, o: d x d; k, v: d x (kv*hd)
        attn_b = (2 * d + 2 * kv * hd) if self.bias else 0
        h = self.mlp_hidden_size
        n_in = 2 if self.mlp == "swiglu" else 1  # gate + up, or up only
        mlp = (n_in + 1) * d * h + ((n_in * h + d) if self.bias else 0)
        return attn + attn_b + mlp + 2 * self.norm_params

    @property
    def norm_params(self) -> int:
        """Parameters of one norm: a weight, plus a bias for LayerNorm when ``bias`` is on."""
        layer_norm_bias = getattr(self, "norm", "rmsnorm") == "layernorm" and self.bias
        return 2 * self.d_model if layer_norm_bias else self.d_model


@dataclass
class GPTConfig(_Sizes):
    """Decoder-only transformer (LLaMA-style block; nanoGPT-style config)."""
    vocab_size: int = 50304      # GPT-2's 50257 padded to a multiple of 64 (faster matmuls)
    n_layer: int = 12            # transformer blocks
    n_head: int = 12             # query heads
    n_kv_head: Optional[int] = None  # key/value heads for GQA; None = n_head (plain MHA)
    d_model: int = 768           # residual stream width; head dim = d_model // n_head
    mlp: str = "swiglu"          # "swiglu" (LLaMA) or "gelu" (GPT-2)
    mlp_hidden: int = 0          # 0 = rule: 4*d (gelu) or 8d/3 rounded up to mlp_multiple_of
    mlp_multiple_of: int = 64    # SwiGLU hidden rounding: tensor-core friendly sizes
    rope_theta: float = 10000.0  # rotary base (LLaMA 1/2 default)
    max_seq_len: int = 1024      # longest idx accepted (rotary angles are computed per call)
    tie_embeddings: bool = True  # head shares the token embedding (saves V*d params; GPT-2)
    norm_eps: float = 1e-5       # RMSNorm epsilon (LLaMA's rms_norm_eps)
    dropout: float = 0.0         # residual dropout; 0 for pretraining single-epoch data
    bias: bool = False           # no biases in linears: faster, no quality loss (PaLM, LLaMA)
    init_std: float = 0.02       # normal init std (GPT-2); residual projections / sqrt(2*n_layer)

    def __post_init__(self):
        _check_common(self)

    @classmethod
    def named(cls, name: str, **overrides) -> "GPTConfig":
        """A named size, with any field overridden.

        >>> GPTConfig.named("tiny", vocab_size=512).d_model
        128
        """
        if name not in _GPT_SIZES:
            raise ValueError(f"unknown size {name!r}; known: {sorted(_GPT_SIZES)}")
        return replace(_GPT_SIZES[name], **overrides)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count from the sizes alone (equals ``GPT(cfg).num_params(...)``)."""
        d, V = self.d_model, self.vocab_size
        n = self.n_layer * self.block_params() + d  # blocks + final norm
        head = 0 if self.tie_embeddings else V * d
        return n + head + (0 if non_embedding else V * d)


_GPT_SIZES = {
    # ~0.43M non-embedding params: tests and the CPU demo run.
    "tiny": GPTConfig(vocab_size=512, n_layer=2, n_head=4, d_model=128, max_seq_len=256),
    # ~10.6M non-embedding params: a few minutes per thousand steps on one GPU.
    "small": GPTConfig(vocab_size=8192, n_layer=6, n_head=6, d_model=384, max_seq_len=1024),
    # GPT-2 small shape (GELU 4d MLP, tied head): 124M params with the padded GPT-2 vocab.
    "gpt2-124m": GPTConfig(vocab_size=50304, n_layer=12, n_head=12, d_model=768, mlp="gelu",
                           max_seq_len=1024),
}


@dataclass
class EncoderConfig(_Sizes):
    """Bidirectional transformer encoder with a masked-LM head (pre-norm BERT: Megatron-BERT's block).
    The defaults (LayerNorm, learned positions, GELU) export exactly to transformers' MegatronBERT;
    rotary + swiglu + embed_norm to ModernBERT."""
    vocab_size: int = 30522      # BERT's WordPiece vocabulary size
    n_layer: int = 12            # transformer blocks
    n_head: int = 12             # attention heads
    n_kv_head: Optional[int] = None  # GQA key/value heads; None = n_head
    d_model: int = 768           # residual width (BERT-base)
    mlp: str = "gelu"            # "gelu" (BERT) or "swiglu"
    mlp_hidden: int = 0          # 0 = rule as in GPTConfig
    mlp_multiple_of: int = 64    # SwiGLU hidden rounding
    positions: str = "learned"   # "learned" (BERT absolute embeddings) or "rotary"
    rope_theta: float = 10000.0  # rotary base when positions == "rotary"
    max_seq_len: int = 512       # BERT's maximum length
    tie_embeddings: bool = True  # MLM decoder shares the token embedding (BERT)
    norm: str = "layernorm"      # "layernorm" (BERT; HF-exportable) or "rmsnorm" (as the GPT)
    embed_norm: bool = False     # norm the embeddings, which then feed block 0's attention with no
                                 # norm of its own (ModernBERT; rotary + swiglu export to it)
    norm_eps: float = 1e-5       # norm epsilon
    dropout: float = 0.0         # residual dropout
    bias: bool = False           # no biases in linears
    init_std: float = 0.02       # normal init std; residual projections / sqrt(2*n_layer)

    def __post_init__(self):
        _check_common(self)
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', got {self.positions!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")

    @classmethod
    def named(cls, name: str, **overrides) -> "EncoderConfig":
        """A named size (``tiny``, ``bert-base``), with any field overridden.

        >>> EncoderConfig.named("tiny").n_layer
        2
        """
        if name not in _ENCODER_SIZES:
            raise ValueError(f"unknown size {name!r}; known: {sorted(_ENCODER_SIZES)}")
        return replace(_ENCODER_SIZES[name], **overrides)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count from the sizes (equals ``Encoder(cfg).num_params(...)``)."""
        d, V = self.d_model, self.vocab_size
        n = self.n_layer * self.block_params() + self.norm_params  # blocks + final norm
        n += d * d + (d if self.bias else 0) + self.norm_params    # MLM head transform + its norm
        n += 0 if self.tie_embeddings else V * d            # untied decoder
        if non_embedding:
            return n
        pos = self.max_seq_len * d if self.positions == "learned" else 0
        return n + V * d + pos


_ENCODER_SIZES = {
    "tiny": EncoderConfig(vocab_size=512, n_layer=2, n_head=4, d_model=128, max_seq_len=256),
    "bert-base": EncoderConfig(),
}


@dataclass
class RewardConfig(GPTConfig):
    """A GPT body with a scalar reward head (`fastlm.models.reward.RewardModel`): GPTConfig's fields, its
    own checkpoint kind "reward"."""


MODEL_KINDS = {"gpt": GPTConfig, "encoder": EncoderConfig,  # checkpoint "model_kind" -> config class
               "reward": RewardConfig}
TASK_KIND = {"clm": "gpt", "mlm": "encoder"}


def model_config_for(task: str, size: str, overrides: dict, *, vocab_size: int):
    """The model config of a training task: ``GPTConfig`` (clm) or ``EncoderConfig`` (mlm) of a named
    size, with ``overrides`` applied and the tokenizer's ``vocab_size``.

    >>> model_config_for("clm", "tiny", {"n_layer": 3}, vocab_size=1000).n_layer
    3
    """
    if task not in TASK_KIND:
        raise ValueError(f"task must be one of {sorted(TASK_KIND)}, got {task!r}")
    cls = MODEL_KINDS[TASK_KIND[task]]
    fields = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model.overrides: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    if "vocab_size" in overrides:
        raise ValueError("model.overrides: vocab_size comes from the tokenizer; do not set it")
    return cls.named(size, **overrides, vocab_size=vocab_size)


def config_to_dict(config) -> dict:
    """``{"kind": "gpt"|"encoder"|"reward", **fields}``: JSON-safe, read back by ``config_from_dict``."""
    from dataclasses import asdict
    kind = next(k for k, c in reversed(MODEL_KINDS.items()) if isinstance(config, c))  # reward before gpt
    return {"kind": kind, **asdict(config)}


def config_from_dict(data: dict):
    """Inverse of ``config_to_dict``; unknown kinds or fields are refused."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in MODEL_KINDS:
        raise ValueError(f"model config kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    cls = MODEL_KINDS[kind]
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"model config: unknown field(s) {unknown} for {cls.__name__}")
    return cls(**data)
