"""Import a Hugging Face Llama-style causal LM directory as a fastlm `GPT` + `Tokenizer` (the inverse
of `fastlm.models.export` for causal LMs), so post-training can start from it (``post.init_from``).

Accepted: ``config.json`` of ``LlamaForCausalLM`` (``hidden_act="silu"``: SwiGLU) or
``ArceeForCausalLM`` (``hidden_act="gelu"``: plain up -> GELU -> down), weights in
``model.safetensors`` (or sharded with ``model.safetensors.index.json``; ``pytorch_model.bin``
likewise), and a byte-level BPE ``tokenizer.json`` (`Tokenizer.from_hf`). Parameter names are
`fastlm.models.export`'s, read backwards; the rotary layout (halves) is the same, so no weight is
permuted. Weights are loaded in fp32 whatever their stored dtype.

Refused, with the reason (each would silently change the logits): rope scaling (any ``rope_type``
other than "default"), a sliding window, a ``head_dim`` other than hidden_size / heads, other
activations, ``pretraining_tp`` > 1, a tied head whose stored ``lm_head`` differs from the
embedding, missing or unexpected weights. Biases: fastlm has one ``bias`` switch for every linear;
biases that are all zero are dropped, and when any is nonzero the model gets biases everywhere,
the ones the checkpoint lacks set to zero (the same function).

When ``config.json`` carries ``fastlm_config`` (written by ``fastlm export``) and it agrees with the
Hugging Face fields, it is used as-is, so export -> import gives back the identical config.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch

from fastlm.models.config import GPTConfig, config_from_dict

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
ACTIVATION = {"llama": ("silu", "swiglu"), "arcee": ("gelu", "gelu")}  # model_type -> (hidden_act, mlp)
IGNORED = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved


class HFImportError(ValueError):
    """A Hugging Face directory that cannot be imported exactly (the message names the file and why)."""


def is_hf_dir(path: str) -> bool:
    """True when ``path`` is a directory with a transformers ``config.json`` and weights (not a
    fastlm checkpoint or run dir).

    >>> is_hf_dir("/nonexistent")
    False
    """
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, CONFIG)):
        return False
    try:
        with open(os.path.join(path, CONFIG), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    is_hf = isinstance(doc, dict) and ("model_type" in doc or "architectures" in doc)
    return is_hf and any(os.path.isfile(os.path.join(path, w)) for w in WEIGHT_FILES)


def _rope_theta(doc: dict, where: str) -> float:
    params = doc.get("rope_parameters") or {}
    if "full_attention" in params:  # per-layer-type parameters: one type only here
        params = params["full_attention"]
    scaling = doc.get("rope_scaling")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if scaling or rope_type != "default":
        raise HFImportError(f"{where}: rope scaling ({scaling or params}) is not supported; fastlm's "
                            "rotary is the default one")
    theta = params.get("rope_theta", doc.get("rope_theta", 10000.0))
    return float(theta)


def gpt_config_from_hf(doc: dict, *, where: str = CONFIG, bias: bool = False) -> GPTConfig:
    """The `GPTConfig` of a Llama/Arcee ``config.json`` document (``bias``: whether the weights
    have nonzero biases); `HFImportError` for anything fastlm's GPT cannot reproduce exactly.

    >>> gpt_config_from_hf({"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
    ...     "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4}).mlp_hidden
    96
    """
    kind = doc.get("model_type")
    if kind not in ACTIVATION:
        archs = doc.get("architectures")
        raise HFImportError(f"{where}: model_type {kind!r} ({archs}) is not supported; import reads "
                            "LlamaForCausalLM (model_type 'llama') and ArceeForCausalLM ('arcee')")
    act, mlp = ACTIVATION[kind]
    why = []
    hidden_act = doc.get("hidden_act", "silu" if kind == "llama" else "relu2")
    if hidden_act != act:
        why.append(f"hidden_act={hidden_act!r} (fastlm's {kind} MLP uses {act!r})")
    if doc.get("sliding_window") not in (None, 0):
        why.append(f"sliding_window={doc['sliding_window']} (fastlm attends to the whole context)")
    if int(doc.get("pretraining_tp", 1) or 1) > 1:
        why.append(f"pretraining_tp={doc['pretraining_tp']}")
    try:
        d, n_head = int(doc["hidden_size"]), int(doc["num_attention_heads"])
        n_kv = int(doc.get("num_key_value_heads") or n_head)
        head_dim = doc.get("head_dim") or d // n_head
        if head_dim != d // n_head:
            why.append(f"head_dim={head_dim} != hidden_size / num_attention_heads = {d // n_head}")
        theta = _rope_theta(doc, where)
        if why:
            raise HFImportError(f"{where}: cannot import exactly: " + "; ".join(why))
        return GPTConfig(vocab_size=int(doc["vocab_size"]), n_layer=int(doc["num_hidden_layers"]),
                         n_head=n_head, n_kv_head=None if n_kv == n_head else n_kv, d_model=d, mlp=mlp,
                         mlp_hidden=int(doc["intermediate_size"]), rope_theta=theta,
                         max_seq_len=int(doc.get("max_position_embeddings", 2048)),
                         tie_embeddings=bool(doc.get("tie_word_embeddings", False)),
                         norm_eps=float(doc.get("rms_norm_eps", 1e-6)), bias=bias,
                         init_std=float(doc.get("initializer_range", 0.02)))
    except KeyError as e:
        raise HFImportError(f"{where}: missing field {e.args[0]!r}") from None
    except ValueError as e:
        if isinstance(e, HFImportError):
            raise
        raise HFImportError(f"{where}: {e}") from None


def _same_model(a: GPTConfig, b: GPTConfig) -> bool:
    keys = ("vocab_size", "n_layer", "n_head", "kv_heads", "d_model", "mlp", "mlp_hidden_size",
            "rope_theta", "tie_embeddings", "norm_eps", "max_seq_len")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def read_hf_weights(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers directory's weights (safetensors or .bin, single or sharded)."""
    from safetensors.torch import load_file

    def load(name: str) -> dict[str, torch.Tensor]:
        f = os.path.join(path, name)
        try:
            if name.endswith(".safetensors"):
                return load_file(f)
            return torch.load(f, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as e:  # safetensors' and pickle's own error types for truncated/garbled files
            raise HFImportError(f"{f}: cannot read the weights ({type(e).__name__}: {e})") from None

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if os.path.isfile(os.path.join(path, single)):
            return load(single)
        if os.path.isfile(os.path.join(path, index)):
            with open(os.path.join(path, index), encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load(shard))
            return out
    raise HFImportError(f"{path}: no weights ({' or '.join(WEIGHT_FILES)})")


def _state_dict(config: GPTConfig, hf: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """fastlm state dict from transformers tensors (fp32; absent biases as zeros when bias=True)."""
    from fastlm.models.export import _llama_names

    to_ours = {v: k for k, v in _llama_names(config).items()}
    hf = {k: v for k, v in hf.items() if not k.endswith(IGNORED)}
    unexpected = sorted(k for k in hf if k not in to_ours)
    if unexpected:
        raise HFImportError(f"{where}: unexpected weight(s) {unexpected[:5]}")
    ours = {to_ours[k]: v.float() for k, v in hf.items()
            if config.bias or not k.endswith(".bias")}
    if config.tie_embeddings and "lm_head.weight" in ours:
        if not torch.equal(ours.pop("lm_head.weight"), ours["tok_emb.weight"]):
            raise HFImportError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from "
                                "model.embed_tokens.weight")
    return ours


def load_hf(path: str, *, device: Any = "cpu", tokenizer: bool = True):
    """``(GPT, Tokenizer)`` from a transformers Llama/Arcee directory, fp32, eval mode, on ``device``
    (``tokenizer=False``: ``(GPT, None)``, for a directory without a fastlm-compatible tokenizer).

    >>> import tempfile
    >>> from fastlm.models import GPT
    >>> from fastlm.models.export import export_hf
    >>> out = export_hf(GPT(GPTConfig.named("tiny", n_layer=1)), None, tempfile.mkdtemp() + "/hf")
    >>> model, tok = load_hf(out, tokenizer=False)
    >>> model.config == GPTConfig.named("tiny", n_layer=1), tok
    (True, None)
    """
    from fastlm.models import GPT

    cfg_file = os.path.join(path, CONFIG)
    if not os.path.isfile(cfg_file):
        raise HFImportError(f"{path}: no {CONFIG}; not a Hugging Face model directory")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            doc = json.load(f)
    except ValueError as e:
        raise HFImportError(f"{cfg_file}: not JSON: {e}") from None
    hf = read_hf_weights(path)
    has_bias = any(k.endswith(".bias") and bool(v.any()) for k, v in hf.items())
    config = gpt_config_from_hf(doc, where=cfg_file, bias=has_bias)
    ours = None
    if isinstance(doc.get("fastlm_config"), dict):
        try:
            ours = config_from_dict(doc["fastlm_config"])
        except (TypeError, ValueError):
            pass
    # fastlm's own config when it describes these weights (zero biases it has are kept then)
    if isinstance(ours, GPTConfig) and _same_model(ours, config) and (
            ours.bias == has_bias or (ours.bias and any(k.endswith(".bias") for k in hf))):
        config = ours
    state = _state_dict(config, hf, os.path.join(path, "model.safetensors"))
    model = GPT(config)
    want = model.state_dict()
    missing = sorted(k for k in want if k not in state and not k.endswith(".bias")
                     and not (k == "lm_head.weight" and config.tie_embeddings))
    if missing:
        raise HFImportError(f"{path}: missing weight(s) for {missing[:5]}")
    for k in want:  # biases the checkpoint lacks (only when it has others): zeros, the same function
        if k.endswith(".bias") and k not in state:
            state[k] = torch.zeros_like(want[k])
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HFImportError(f"{path}: weights do not fit config.json: {e}") from None
    model.to(device).eval()
    return model, (load_hf_tokenizer(path, config.vocab_size) if tokenizer else None)


def load_hf_tokenizer(path: str, vocab_size: Optional[int] = None):
    """The fastlm `Tokenizer` of a transformers directory's byte-level BPE ``tokenizer.json``."""
    from fastlm.tokenizer import Tokenizer

    f = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(f):
        raise HFImportError(f"{path}: no tokenizer.json (pass tokenizer=False to load the model alone)")
    try:
        tok = Tokenizer.from_hf(f)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise HFImportError(f"{f}: not a byte-level BPE tokenizer fastlm can read: {e}") from None
    if vocab_size is not None and tok.n_vocab > vocab_size:
        raise HFImportError(f"{f}: {tok.n_vocab} ids > the model's vocab_size {vocab_size}")
    return tok
