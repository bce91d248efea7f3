"""Export fastlm models as Hugging Face transformers directories that load and give the same logits.

Mapping (every one exact in fp32; tests/test_export.py compares logits against transformers):

==========================  =============================  ===================================
fastlm                      transformers                   why this architecture
==========================  =============================  ===================================
GPT, ``mlp="swiglu"``       ``LlamaForCausalLM``           same block: RMSNorm, rotary (halves
                                                           layout), GQA, SwiGLU, optional biases
GPT, ``mlp="gelu"``         ``ArceeForCausalLM``           Llama's block with a plain
                                                           up -> act -> down MLP (Llama has only
                                                           the gated one); ``hidden_act="gelu"``
Encoder (defaults):         ``MegatronBertForMaskedLM``    pre-LN BERT: LayerNorm before
LayerNorm, learned                                         attention/MLP, final LayerNorm, no
positions, GELU MLP                                        embedding norm, positions 0..T-1
Encoder: LayerNorm,         ``ModernBertForMaskedLM``      pre-LN, rotary, gated MLP, normed
rotary, SwiGLU,                                            embeddings feeding layer 0 without an
``embed_norm=True``                                        attention norm; every layer global
==========================  =============================  ===================================

Other encoders are refused with the reason and the settings to change (RMSNorm: every pre-LN
encoder in transformers uses LayerNorm). Absent biases are written as zeros where the HF model
always has them (MegatronBERT); an encoder with GQA is written with its key/value heads repeated
(neither HF encoder has GQA; the same math). MegatronBERT's token-type embedding (BERT's segment
ids) is one zero row; ModernBERT's fused ``Wqkv``/``Wi`` are our q,k,v / gate,up stacked.

Tokenizer: ``tokenizer.json`` (``Tokenizer.save_hf``: the same ids as fastlm, special tokens
included, as ``encode(text, allowed_special="all")``) + ``tokenizer_config.json`` +
``special_tokens_map.json``; ``<|bos|>`` is bos (and eos for causal LMs: documents are separated by
it; ``<|eos|>``/``<|endoftext|>`` when the tokenizer has one), ``<|pad|>`` pad, ``<|mask|>`` mask,
the others (chat tokens) extra special tokens.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import torch

from fastlm.models.config import EncoderConfig, GPTConfig, RewardConfig, config_to_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(ValueError):
    """A model, tokenizer or output directory that cannot be exported (the message says why)."""


def hf_architecture(config) -> str:
    """The transformers class a config exports to; ``ExportError`` naming what to set otherwise.

    >>> hf_architecture(GPTConfig.named("gpt2-124m"))
    'ArceeForCausalLM'
    """
    if isinstance(config, RewardConfig):  # a GPTConfig subclass: its `score` head has no Llama/Arcee name
        raise ExportError("reward models cannot be exported to the Hugging Face format: only causal LMs "
                          "(LlamaForCausalLM / ArceeForCausalLM) and masked LMs are; export the SFT model instead")
    if isinstance(config, GPTConfig):
        return "LlamaForCausalLM" if config.mlp == "swiglu" else "ArceeForCausalLM"
    if not isinstance(config, EncoderConfig):
        raise ExportError(f"cannot export a {type(config).__name__}: expected GPTConfig or EncoderConfig")
    c, why = config, []
    if c.norm != "layernorm":
        why.append(f"norm={c.norm!r} (transformers' pre-LN encoders use LayerNorm) -> norm='layernorm'")
    if c.positions == "learned":
        arch = "MegatronBertForMaskedLM"
        if c.mlp != "gelu":
            why.append(f"mlp={c.mlp!r} (its MLP is not gated) -> mlp='gelu'")
        if c.embed_norm:
            why.append("embed_norm=True (it has no embedding norm) -> embed_norm=False")
    else:
        arch = "ModernBertForMaskedLM"
        if c.mlp != "swiglu":
            why.append(f"mlp={c.mlp!r} (its MLP is gated) -> mlp='swiglu'")
        if not c.embed_norm:
            why.append("embed_norm=False (it norms the embeddings and has no attention norm in "
                       "its first block) -> embed_norm=True")
    if why:
        raise ExportError(f"this encoder has no exact Hugging Face equivalent ({arch} is the "
                          f"target for positions={c.positions!r}): " + "; ".join(why))
    return arch


def _first(sp: dict, names: tuple[str, ...]) -> Optional[str]:
    return next((n for n in names if n in sp), None)


def _special_names(tokenizer, causal: bool) -> dict[str, Optional[str]]:
    """bos: ``<|bos|>`` (or GPT-2's ``<|endoftext|>``); eos of a causal LM: ``<|eos|>`` or
    ``<|endoftext|>`` when documents end with one (``fastlm tokenizer encode --separator eos``), else
    ``<|bos|>`` (the model predicts the next document's ``<|bos|>``); pad ``<|pad|>``, mask ``<|mask|>``."""
    sp = tokenizer.special_tokens if tokenizer is not None else {}
    return {"bos_token": _first(sp, ("<|bos|>", "<|endoftext|>")),
            "eos_token": _first(sp, ("<|eos|>", "<|endoftext|>", "<|bos|>")) if causal else None,
            "pad_token": _first(sp, ("<|pad|>",)),
            "mask_token": None if causal else _first(sp, ("<|mask|>",))}


def _special_ids(tokenizer, causal: bool) -> dict[str, Optional[int]]:
    names = _special_names(tokenizer, causal)
    sp = tokenizer.special_tokens if tokenizer is not None else {}
    return {f"{k}_id": sp.get(v) if v else None for k, v in names.items() if k != "mask_token"}


def hf_config(config, tokenizer=None, *, dtype: str = "float32") -> dict:
    """The ``config.json`` document for a model config (special ids from ``tokenizer`` if given).

    >>> hf_config(GPTConfig.named("tiny"))["model_type"]
    'llama'
    """
    arch = hf_architecture(config)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    c = config
    common = {"architectures": [arch], "vocab_size": c.vocab_size, "hidden_size": c.d_model,
              "intermediate_size": c.mlp_hidden_size, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "max_position_embeddings": c.max_seq_len,
              "initializer_range": c.init_std, "tie_word_embeddings": c.tie_embeddings,
              "dtype": dtype, "torch_dtype": dtype}
    if arch == "ModernBertForMaskedLM":
        ids = _special_ids(tokenizer, causal=False)
        rope = {"rope_type": "default", "rope_theta": c.rope_theta}
        return {**common, "model_type": "modernbert", "hidden_activation": "silu",
                "layer_types": ["full_attention"] * c.n_layer,  # no sliding-window layers
                "rope_parameters": {"full_attention": rope, "sliding_attention": dict(rope)},
                "global_rope_theta": c.rope_theta, "local_rope_theta": c.rope_theta,
                "global_attn_every_n_layers": 1, "norm_eps": c.norm_eps, "norm_bias": c.bias,
                "attention_bias": c.bias, "mlp_bias": c.bias, "classifier_bias": c.bias,
                "classifier_activation": "gelu", "decoder_bias": False,
                # its dropouts sit elsewhere than ours (residual): off, as for inference
                "embedding_dropout": 0.0, "mlp_dropout": 0.0, "attention_dropout": 0.0,
                "pad_token_id": ids["pad_token_id"], "bos_token_id": ids["bos_token_id"],
                "eos_token_id": None, "cls_token_id": None, "sep_token_id": None,
                "fastlm_config": config_to_dict(c)}
    if arch == "MegatronBertForMaskedLM":
        ids = _special_ids(tokenizer, causal=False)
        return {**common, "model_type": "megatron-bert", "hidden_act": "gelu",
                "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": 0.0,
                "type_vocab_size": 1, "layer_norm_eps": c.norm_eps, "pad_token_id": ids["pad_token_id"],
                "fastlm_config": config_to_dict(c)}
    ids = _special_ids(tokenizer, causal=True)
    return {**common, "model_type": "llama" if arch == "LlamaForCausalLM" else "arcee",
            "hidden_act": "silu" if c.mlp == "swiglu" else "gelu",
            "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim, "rms_norm_eps": c.norm_eps,
            # transformers 5.x reads rope_parameters; 4.x and other tools (vLLM, llama.cpp) rope_theta
            "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": 0.0,
            "use_cache": True, **ids, "fastlm_config": config_to_dict(c)}


def _llama_names(c: GPTConfig) -> dict[str, str]:
    """fastlm parameter name -> Llama/Arcee name (the two share every name)."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        names[p + "attn_norm.weight"] = q + "input_layernorm.weight"
        names[p + "mlp_norm.weight"] = q + "post_attention_layernorm.weight"
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for t in ("weight", "bias"):
                names[p + f"attn.{n}.{t}"] = q + f"self_attn.{n}.{t}"
        for n in ("gate_proj", "up_proj", "down_proj"):
            for t in ("weight", "bias"):
                names[p + f"mlp.{n}.{t}"] = q + f"mlp.{n}.{t}"
    return names


def _megatron_state(c: EncoderConfig, ours: dict) -> dict:
    d, V, hd = c.d_model, c.vocab_size, c.head_dim
    ref = ours["tok_emb.weight"]

    def zeros(*shape):
        return torch.zeros(*shape, dtype=ref.dtype, device=ref.device)

    def kv_heads(t):  # (n_kv*hd, ...) -> (n_head*hd, ...): query head h reads kv head h // group
        return t.reshape(c.kv_heads, hd, *t.shape[1:]).repeat_interleave(
            c.n_head // c.kv_heads, dim=0).reshape(c.n_head * hd, *t.shape[1:])

    def linear(dst: str, src: str, expand=False):
        w, b = ours[src + ".weight"], ours.get(src + ".bias")
        b = zeros(w.shape[0]) if b is None else b
        sd[dst + ".weight"], sd[dst + ".bias"] = (kv_heads(w), kv_heads(b)) if expand else (w, b)

    def norm(dst: str, src: str):
        sd[dst + ".weight"] = ours[src + ".weight"]
        sd[dst + ".bias"] = ours.get(src + ".bias", zeros(d))

    sd = {"bert.embeddings.word_embeddings.weight": ref,
          "bert.embeddings.position_embeddings.weight": ours["pos_emb.weight"],
          "bert.embeddings.token_type_embeddings.weight": zeros(1, d)}
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        norm(q + "attention.ln", p + "attn_norm")
        linear(q + "attention.self.query", p + "attn.q_proj")
        linear(q + "attention.self.key", p + "attn.k_proj", expand=c.kv_heads != c.n_head)
        linear(q + "attention.self.value", p + "attn.v_proj", expand=c.kv_heads != c.n_head)
        linear(q + "attention.output.dense", p + "attn.o_proj")
        norm(q + "ln", p + "mlp_norm")
        linear(q + "intermediate.dense", p + "mlp.up_proj")
        linear(q + "output.dense", p + "mlp.down_proj")
    norm("bert.encoder.ln", "norm")
    linear("cls.predictions.transform.dense", "head_dense")
    norm("cls.predictions.transform.LayerNorm", "head_norm")
    sd["cls.predictions.bias"] = zeros(V)  # the decoder's bias (tied to it by transformers)
    if not c.tie_embeddings:  # transformers ties the bias only along with the weight
        sd["cls.predictions.decoder.weight"] = ours["decoder.weight"]
        sd["cls.predictions.decoder.bias"] = zeros(V)
    return sd


def _modernbert_state(c: EncoderConfig, ours: dict) -> dict:
    hd, group = c.head_dim, c.n_head // c.kv_heads

    def kv_heads(t):  # (n_kv*hd, ...) -> (n_head*hd, ...): query head h reads kv head h // group
        return t.reshape(c.kv_heads, hd, *t.shape[1:]).repeat_interleave(group, dim=0).reshape(
            c.n_head * hd, *t.shape[1:])

    def copy(dst: str, src: str, cat=None):
        for t in ("weight", "bias"):
            if src + "." + t in ours:
                sd[f"{dst}.{t}"] = ours[f"{src}.{t}"] if cat is None else torch.cat(cat(t))

    sd = {"model.embeddings.tok_embeddings.weight": ours["tok_emb.weight"]}
    copy("model.embeddings.norm", "embed_norm")
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        if i > 0:  # layer 0's attention input is the normed embedding (see Encoder.embed_norm)
            copy(q + "attn_norm", p + "attn_norm")
        copy(q + "attn.Wqkv", p + "attn.q_proj", cat=lambda t: [  # rows: q, then k, then v
            ours[f"{p}attn.q_proj.{t}"], kv_heads(ours[f"{p}attn.k_proj.{t}"]),
            kv_heads(ours[f"{p}attn.v_proj.{t}"])])
        copy(q + "attn.Wo", p + "attn.o_proj")
        copy(q + "mlp_norm", p + "mlp_norm")
        # Wi's output is chunked into (input, gate) with act(input) * gate: our silu(gate_proj) * up
        copy(q + "mlp.Wi", p + "mlp.gate_proj", cat=lambda t: [ours[f"{p}mlp.gate_proj.{t}"],
                                                              ours[f"{p}mlp.up_proj.{t}"]])
        copy(q + "mlp.Wo", p + "mlp.down_proj")
    copy("model.final_norm", "norm")
    copy("head.dense", "head_dense")
    copy("head.norm", "head_norm")
    if not c.tie_embeddings:
        sd["decoder.weight"] = ours["decoder.weight"]
    return sd


def hf_state_dict(model, *, dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names, contiguous CPU tensors in ``dtype``; a tied
    output weight is left out (transformers ties it back from ``tie_word_embeddings``).

    >>> from fastlm.models import GPT
    >>> sorted(hf_state_dict(GPT(GPTConfig.named("tiny", n_layer=1))))[:2]
    ['model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight']
    """
    c = model.config
    arch = hf_architecture(c)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    if arch == "MegatronBertForMaskedLM":
        sd = _megatron_state(c, ours)
    elif arch == "ModernBertForMaskedLM":
        sd = _modernbert_state(c, ours)
    else:
        names = _llama_names(c)
        unknown = sorted(set(ours) - set(names))
        if unknown:
            raise ExportError(f"no Hugging Face name for parameter(s) {unknown}")
        sd = {names[k]: v for k, v in ours.items()}
        if c.tie_embeddings:
            sd.pop("lm_head.weight")
    return {k: v.to("cpu", DTYPES[dtype]).contiguous().clone() for k, v in sd.items()}


def to_hf_model(model, tokenizer=None):
    """The equivalent transformers model in memory (fp32, eval mode; needs transformers).

    >>> from fastlm.models import GPT
    >>> type(to_hf_model(GPT(GPTConfig.named("tiny", n_layer=1)))).__name__
    'LlamaForCausalLM'
    """
    import transformers

    doc = hf_config(model.config, tokenizer)
    arch = doc.pop("architectures")[0]
    hf_cfg = transformers.AutoConfig.for_model(doc.pop("model_type"), **doc)
    hf = getattr(transformers, arch)(hf_cfg).eval()
    sd = hf_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    tied = {"lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
            "decoder.weight"} if model.config.tie_embeddings else set()  # decoder.weight: ModernBERT's
    if unexpected or set(missing) - tied:
        raise ExportError(f"{arch}: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    return hf


# fastlm.tokenizer.chat_template's layout as a transformers chat template (same ids as
# render_conversation / render_prompt; unlike fastlm, transformers tokenizes the rendered string,
# so special-token text typed inside a message becomes the special token there).
CHAT_TEMPLATE = (
    "<|bos|>{%- for m in messages -%}"
    "{%- if m['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('role must be system, user or assistant, got ' + m['role']) }}"
    "{%- endif -%}"
    "<|{{ m['role'] }}_start|>{{ m['content'] }}<|{{ m['role'] }}_end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}")


def tokenizer_configs(tokenizer, config) -> dict[str, dict]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` documents for ``AutoTokenizer``
    (with fastlm's chat template when the tokenizer has every chat token)."""
    from fastlm.tokenizer.chat_template import CHAT_SPECIALS

    sp = tokenizer.special_tokens
    causal = isinstance(config, GPTConfig)
    named = {k: v for k, v in _special_names(tokenizer, causal).items() if v is not None}
    extra = [s for s, _ in sorted(sp.items(), key=lambda kv: kv[1]) if s not in named.values()]
    # a fastlm tokenizer adds nothing around the text (no BOS, no [CLS]/[SEP]): the trainer does
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **named, "extra_special_tokens": extra,
               "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
               "model_max_length": config.max_seq_len, "padding_side": "right" if not causal else "left"}
    if causal and all(t in sp for t in CHAT_SPECIALS):
        tok_cfg["chat_template"] = CHAT_TEMPLATE
    return {"tokenizer_config.json": tok_cfg,
            "special_tokens_map.json": {**named, "additional_special_tokens": extra}}


def generation_config(config, tokenizer=None) -> dict:
    """``generation_config.json`` of a causal LM: stop at eos (the end of a document) or at
    ``<|assistant_end|>`` (the end of a chat reply), whichever the tokenizer has."""
    ids = _special_ids(tokenizer, causal=True)
    sp = tokenizer.special_tokens if tokenizer is not None else {}
    eos = [i for i in (ids["eos_token_id"], sp.get("<|assistant_end|>")) if i is not None]
    return {"bos_token_id": ids["bos_token_id"], "eos_token_id": eos or None,
            "pad_token_id": ids["pad_token_id"], "max_length": config.max_seq_len}


def _check_out(out_dir: str, force: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(f"{out_dir}: directory is not empty; pass force=True (--force) to replace it")


def _publish(tmp: str, out_dir: str) -> None:
    """Move the finished ``tmp`` dir to ``out_dir``; an old ``out_dir`` is removed only after."""
    old = None
    if os.path.isdir(out_dir):
        old = f"{out_dir.rstrip(os.sep)}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def export_hf(model, tokenizer, out_dir: str, *, dtype: str = "float32", force: bool = False) -> str:
    """Write ``model`` (+ ``tokenizer``, may be None) as a transformers directory, atomically
    (a temp dir renamed into place); returns ``out_dir``. An existing non-empty ``out_dir`` is
    refused unless ``force``.

    >>> import tempfile, os
    >>> from fastlm.models import GPT
    >>> out = export_hf(GPT(GPTConfig.named("tiny", n_layer=1)), None, tempfile.mkdtemp() + "/hf")
    >>> sorted(os.listdir(out))
    ['config.json', 'generation_config.json', 'model.safetensors']
    """
    from safetensors.torch import save_file

    c = model.config
    hf_architecture(c)  # refuse before writing anything
    _check_out(out_dir, force)
    if tokenizer is not None and tokenizer.n_vocab > c.vocab_size:
        raise ExportError(f"tokenizer has {tokenizer.n_vocab} ids but the model's vocab_size is "
                          f"{c.vocab_size}: not the model's tokenizer")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir.rstrip(os.sep)) + ".tmp-", dir=parent)
    try:
        docs = {"config.json": hf_config(c, tokenizer, dtype=dtype)}
        if isinstance(c, GPTConfig):
            docs["generation_config.json"] = generation_config(c, tokenizer)
        if tokenizer is not None:
            try:
                tokenizer.save_hf(os.path.join(tmp, "tokenizer.json"))
            except NotImplementedError as e:
                raise ExportError(f"tokenizer: {e}; export without it (tokenizer=None)") from None
            docs.update(tokenizer_configs(tokenizer, c))
        for name, doc in docs.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2, ensure_ascii=False)
                f.write("\n")
        save_file(hf_state_dict(model, dtype=dtype), os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
