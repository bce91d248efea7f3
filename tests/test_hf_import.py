"""fastlm.posttrain.hf_import: export -> import gives identical weights, config and logits; a model built
with transformers directly imports with the same logits; unsupported configs are refused clearly."""
import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from corpora import PYDOC  # noqa: E402
from test_export import perturb  # noqa: E402  (the same weight perturbation as the export tests)
from fastlm.models import GPT, GPTConfig  # noqa: E402
from fastlm.models.export import export_hf  # noqa: E402
from fastlm.posttrain.hf_import import (HFImportError, gpt_config_from_hf, is_hf_dir,  # noqa: E402
                                        load_hf)
from fastlm.tokenizer import DEFAULT_SPECIALS, Tokenizer  # noqa: E402

torch.set_num_threads(1)
V = 97
SPECIALS = list(dict.fromkeys([*DEFAULT_SPECIALS, "<|mask|>", "<|pad|>"]))
CASES = {
    "mha-tied": dict(),
    "gqa-untied-bias": dict(n_kv_head=2, tie_embeddings=False, bias=True, rope_theta=500000.0,
                            norm_eps=1e-6),
    "odd-mqa": dict(d_model=48, n_head=3, n_kv_head=1, mlp_hidden=100, n_layer=3),
    "gelu-arcee": dict(mlp="gelu", n_kv_head=2),
}


def ids(b=2, t=24, seed=0, v=V):
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CASES))
def test_export_import_round_trip(name, tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64), **CASES[name]})
    model = perturb(GPT(cfg))
    out = export_hf(model, None, str(tmp_path / "hf"))
    assert is_hf_dir(out)
    back, tok = load_hf(out, tokenizer=False)
    assert tok is None and back.config == cfg and not back.training
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (back.lm_head.weight is back.tok_emb.weight) == cfg.tie_embeddings
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_bf16_export_and_no_fastlm_config(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, n_layer=1, n_head=4, d_model=64, max_seq_len=64, n_kv_head=2)
    model = perturb(GPT(cfg))
    out = export_hf(model, None, str(tmp_path / "hf"), dtype="bfloat16")
    doc = json.load(open(os.path.join(out, "config.json")))
    doc.pop("fastlm_config")  # config from the transformers fields alone
    json.dump(doc, open(os.path.join(out, "config.json"), "w"))
    back, _ = load_hf(out, tokenizer=False)
    assert back.config.mlp_hidden == cfg.mlp_hidden_size and back.config.n_kv_head == 2
    assert back.tok_emb.weight.dtype == torch.float32
    want = model.tok_emb.weight.to(torch.bfloat16).float()
    assert torch.equal(back.tok_emb.weight, want)


LLAMA = dict(vocab_size=V, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)


@pytest.mark.parametrize("arch,kw", [
    ("LlamaForCausalLM", dict()),
    ("LlamaForCausalLM", dict(tie_word_embeddings=True, rope_theta=50000.0)),
    ("LlamaForCausalLM", dict(attention_bias=True)),  # q/k/v/o biases only: mlp biases become zeros
    ("ArceeForCausalLM", dict(hidden_act="gelu")),
], ids=["llama", "llama-tied", "llama-attn-bias", "arcee-gelu"])
def test_transformers_model_imports_with_same_logits(arch, kw, tmp_path):
    torch.manual_seed(0)
    kind = "llama" if arch.startswith("Llama") else "arcee"
    hf_cfg = transformers.AutoConfig.for_model(kind, **LLAMA, **kw)
    hf = getattr(transformers, arch)(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # nonzero norms and biases
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "hf"))
    assert is_hf_dir(str(tmp_path / "hf"))
    model, _ = load_hf(str(tmp_path / "hf"), tokenizer=False)
    assert model.config.bias == bool(kw.get("attention_bias"))
    assert model.config.tie_embeddings == bool(kw.get("tie_word_embeddings"))
    x = ids(2, 40, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_zero_biases_dropped(tmp_path):
    torch.manual_seed(0)  # transformers' init draws from the global RNG
    hf_cfg = transformers.AutoConfig.for_model("llama", **LLAMA, attention_bias=True, mlp_bias=True)
    hf = transformers.LlamaForCausalLM(hf_cfg)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith(".bias"):
                p.zero_()
    hf.save_pretrained(str(tmp_path / "hf"))
    model, _ = load_hf(str(tmp_path / "hf"), tokenizer=False)
    assert not model.config.bias
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf.eval()(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_tokenizer_round_trip(tmp_path):
    tok = Tokenizer.train_from_iterator([PYDOC[k] for k in sorted(PYDOC)][:30], 400, special_tokens=SPECIALS)
    model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1))
    out = export_hf(model, tok, str(tmp_path / "hf"))
    _, back = load_hf(out)
    assert back.special_tokens == tok.special_tokens
    text = PYDOC[sorted(PYDOC)[40]][:2000]
    assert back.encode_ordinary(text) == tok.encode_ordinary(text)
    os.remove(os.path.join(out, "tokenizer.json"))
    with pytest.raises(HFImportError, match="no tokenizer.json.*tokenizer=False"):
        load_hf(out)


@pytest.mark.parametrize("change,needle", [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope scaling"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope scaling"),
    ({"sliding_window": 32}, "sliding_window"),
    ({"head_dim": 32}, "head_dim=32"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "model_type 'mistral'"),
    ({"num_hidden_layers": 3}, "missing weight"),
])
def test_unsupported_configs_refused(change, needle, tmp_path):
    model = GPT(GPTConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64))
    out = export_hf(model, None, str(tmp_path / "hf"))
    doc = json.load(open(os.path.join(out, "config.json")))
    doc.pop("fastlm_config")
    doc.update(change)
    json.dump(doc, open(os.path.join(out, "config.json"), "w"))
    with pytest.raises(HFImportError, match=needle) as e:
        load_hf(out, tokenizer=False)
    assert "config.json" in str(e.value) or str(tmp_path) in str(e.value)


def test_weight_problems_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    model = GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=4, d_model=64, max_seq_len=64))
    out = export_hf(model, None, str(tmp_path / "hf"))
    f = os.path.join(out, "model.safetensors")
    sd = load_file(f)
    save_file({**sd, "lm_head.weight": torch.zeros(V, 64)}, f)
    with pytest.raises(HFImportError, match="lm_head.weight differs"):
        load_hf(out, tokenizer=False)
    save_file({**sd, "model.extra.weight": torch.zeros(2)}, f)
    with pytest.raises(HFImportError, match="unexpected weight.*model.extra.weight"):
        load_hf(out, tokenizer=False)
    with open(f, "r+b") as fh:  # truncated: was safetensors' own SafetensorError, a traceback in the CLI
        fh.truncate(100)
    with pytest.raises(HFImportError, match="model.safetensors: cannot read the weights"):
        load_hf(out, tokenizer=False)
    os.remove(f)
    assert not is_hf_dir(out) and not is_hf_dir(str(tmp_path))
    with pytest.raises(HFImportError, match="no weights"):
        load_hf(out, tokenizer=False)
    with pytest.raises(HFImportError, match="no config.json"):
        load_hf(str(tmp_path), tokenizer=False)


def test_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.AutoConfig.for_model("llama", **LLAMA)).eval()
    hf.save_pretrained(str(tmp_path / "hf"), max_shard_size="100KB")
    assert os.path.isfile(tmp_path / "hf" / "model.safetensors.index.json")
    model, _ = load_hf(str(tmp_path / "hf"), tokenizer=False)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_config_fields():
    cfg = gpt_config_from_hf({**LLAMA, "model_type": "llama", "rope_theta": 1e6})
    assert (cfg.n_kv_head, cfg.rope_theta, cfg.norm_eps, cfg.mlp) == (2, 1e6, 1e-6, "swiglu")
    with pytest.raises(HFImportError, match="missing field 'hidden_size'"):
        gpt_config_from_hf({"model_type": "llama"})
