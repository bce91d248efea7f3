"""Tests for fastlm.models.export and `fastlm export`: transformers loads the directory and gives the
same logits (random-init and briefly trained models), AutoTokenizer gives the same ids, refusals."""
import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from corpora import PYDOC, shakespeare_paragraphs  # noqa: E402
from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig  # noqa: E402
from fastlm.models.export import (ExportError, export_hf, hf_architecture,  # noqa: E402
                                  to_hf_model)
from fastlm.tokenizer import DEFAULT_SPECIALS, Tokenizer  # noqa: E402

torch.set_num_threads(1)
V = 97  # prime vocab
SPECIALS = list(dict.fromkeys([*DEFAULT_SPECIALS, "<|mask|>", "<|pad|>"]))


def perturb(model, seed=0):
    """Non-trivial norm weights/biases (and every other weight) so a swapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def ids(b=2, t=16, seed=0, v=V):
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


def load_hf(out):
    cfg = json.load(open(os.path.join(out, "config.json")))
    auto = (transformers.AutoModelForMaskedLM if cfg["architectures"][0].endswith("MaskedLM")
            else transformers.AutoModelForCausalLM)
    hf, info = auto.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return hf.eval()


GPT_CASES = {
    "mha-tied": dict(),
    "gqa-untied-bias": dict(n_kv_head=2, tie_embeddings=False, bias=True, rope_theta=500000.0,
                            norm_eps=1e-6),
    "odd-mqa": dict(d_model=48, n_head=3, n_kv_head=1, mlp_hidden=100, n_layer=3),
    "gelu-arcee": dict(mlp="gelu", n_kv_head=2),
    "gelu-untied-bias": dict(mlp="gelu", tie_embeddings=False, bias=True),
}


@pytest.mark.parametrize("name", list(GPT_CASES))
def test_gpt_logits_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64),
                       **GPT_CASES[name]})
    model = perturb(GPT(cfg))
    out = export_hf(model, None, str(tmp_path / "hf"))
    hf = load_hf(out)
    assert type(hf).__name__ == ("LlamaForCausalLM" if cfg.mlp == "swiglu" else "ArceeForCausalLM")
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == cfg.tie_embeddings
    x = ids(2, 40, 3)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)
        pos = torch.arange(7, 47)[None].expand(2, -1)  # offset positions: same rotary tables
        torch.testing.assert_close(hf(input_ids=x, position_ids=pos).logits,
                                   model(x, position_ids=pos), rtol=1e-5, atol=1e-5)


MODERN = dict(positions="rotary", mlp="swiglu", embed_norm=True)
ENCODER_CASES = {
    "default-tied": dict(),
    "gqa-bias": dict(n_kv_head=2, bias=True, norm_eps=1e-12),
    "odd-untied": dict(d_model=48, n_head=3, mlp_hidden=100, n_layer=3, tie_embeddings=False),
    "modernbert-tied": dict(MODERN, rope_theta=160000.0),
    "modernbert-gqa-bias-untied": dict(MODERN, n_kv_head=2, bias=True, tie_embeddings=False),
    "modernbert-odd": dict(MODERN, d_model=48, n_head=3, n_kv_head=1, mlp_hidden=100, n_layer=3),
}


@pytest.mark.parametrize("name", list(ENCODER_CASES))
def test_encoder_logits_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    cfg = EncoderConfig(**{**dict(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64),
                           **ENCODER_CASES[name]})
    model = perturb(Encoder(cfg))
    hf = load_hf(export_hf(model, None, str(tmp_path / "hf")))
    assert type(hf).__name__ == ("ModernBertForMaskedLM" if cfg.embed_norm else
                                 "MegatronBertForMaskedLM")
    x = ids(2, 40, 3)
    mask = torch.ones_like(x)
    mask[1, 25:] = 0  # padding: the real tokens' logits match
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)
        ours = model(x, attention_mask=mask)
        theirs = hf(input_ids=x, attention_mask=mask).logits
        torch.testing.assert_close(theirs[0], ours[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs[1, :25], ours[1, :25], rtol=1e-5, atol=1e-5)


def test_default_and_named_configs_are_exportable():
    for name in ("tiny", "small", "gpt2-124m"):
        assert hf_architecture(GPTConfig.named(name)).endswith("ForCausalLM")
    for name in ("tiny", "bert-base"):
        assert hf_architecture(EncoderConfig.named(name)) == "MegatronBertForMaskedLM"


@pytest.mark.parametrize("kw,needles", [
    (dict(norm="rmsnorm"), ["MegatronBert", "norm='layernorm'"]),
    (dict(mlp="swiglu"), ["MegatronBert", "mlp='gelu'"]),
    (dict(embed_norm=True), ["MegatronBert", "embed_norm=False"]),
    (dict(positions="rotary"), ["ModernBert", "mlp='swiglu'", "embed_norm=True"]),
    (dict(MODERN, norm="rmsnorm"), ["ModernBert", "norm='layernorm'"]),
])
def test_unexportable_encoders_refused(kw, needles, tmp_path):
    model = Encoder(EncoderConfig.named("tiny", vocab_size=V, n_layer=1, **kw))
    with pytest.raises(ExportError, match="no exact Hugging Face equivalent") as e:
        export_hf(model, None, str(tmp_path / "hf"))
    for needle in needles:
        assert needle in str(e.value)
    assert not os.listdir(tmp_path)  # nothing written, no temp dir left


def test_output_dir_refusals_and_force(tmp_path):
    model = GPT(GPTConfig.named("tiny", vocab_size=V, n_layer=1))
    out = tmp_path / "hf"
    out.mkdir()
    export_hf(model, None, str(out))  # an empty directory is fine
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_hf(model, None, str(out))
    (out / "stale.txt").write_text("old")
    export_hf(model, None, str(out), force=True)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temp or old dirs left
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_hf(model, None, str(tmp_path / "file"), force=True)
    small = Tokenizer([bytes([b]) for b in range(256)])  # 256 ids > vocab_size 97
    with pytest.raises(ExportError, match="vocab_size"):
        export_hf(model, small, str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
    with pytest.raises(ExportError, match="dtype"):
        export_hf(model, None, str(tmp_path / "other"), dtype="int8")


def test_bfloat16_export(tmp_path):
    torch.manual_seed(0)  # the init draws from the global RNG: the same model whatever ran before
    model = perturb(GPT(GPTConfig.named("tiny", vocab_size=V, n_layer=1)))
    hf = load_hf(export_hf(model, None, str(tmp_path / "hf"), dtype="bfloat16"))
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    x = ids(1, 20)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(hf(input_ids=x).logits.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["gpt"] + list(ENCODER_CASES))
def test_to_hf_model_in_memory(name):
    # a tied ModernBERT was refused ('missing decoder.weight': transformers ties it to the embedding)
    torch.manual_seed(0)  # the init draws from the global RNG (perturb is seeded on its own)
    if name == "gpt":
        model = perturb(GPT(GPTConfig.named("tiny", vocab_size=V, n_layer=1, n_kv_head=2)))
    else:
        model = perturb(Encoder(EncoderConfig(**{**dict(vocab_size=V, n_layer=2, n_head=4, d_model=64,
                                                         max_seq_len=64), **ENCODER_CASES[name]})))
    hf = to_hf_model(model)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)


# ---- real text: a trained tokenizer, briefly trained models -------------------------------------

@pytest.fixture(scope="module")
def texts():
    paras = shakespeare_paragraphs(300, files=4, min_chars=40)
    return paras, [PYDOC[k] for k in sorted(PYDOC)[:40]]


@pytest.fixture(scope="module")
def tok(texts):
    paras, docs = texts
    return Tokenizer.train_from_iterator(paras[:200] + docs[:20], 600, special_tokens=SPECIALS)


def _stream(tok, texts):
    bos = tok.special_id("<|bos|>")
    out = []
    for t in texts:
        out += [bos] + tok.encode_ordinary(t)
    return torch.tensor(out)


def _train(model, batches, loss_fn, steps=15):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        loss = loss_fn(model, batches[step % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def test_tokenizer_same_ids_on_real_text(tok, texts, tmp_path):
    model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1))
    out = export_hf(model, tok, str(tmp_path / "hf"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    sp = tok.special_tokens
    assert hf_tok.bos_token_id == sp["<|bos|>"] and hf_tok.eos_token_id == sp["<|bos|>"]
    assert hf_tok.pad_token_id == sp["<|pad|>"]
    assert set(hf_tok.all_special_tokens) == set(sp)
    paras, docs = texts
    samples = paras[200:] + docs[20:]
    samples += ["<|bos|>" + paras[0] + "<|user_start|>hi<|user_end|><|assistant_start|>",
                "  spaces\t\ttabs\n\n\nnewlines  ", "naïve café — “quotes” 東京 🙂", ""]
    for text in samples:
        want = tok.encode(text, allowed_special="all")
        got = hf_tok(text)["input_ids"]
        assert got == want, text[:80]
        assert hf_tok.decode(got) == text
    plain = "<|user_start|>" + paras[1]
    assert hf_tok.decode(hf_tok(plain)["input_ids"], skip_special_tokens=True) == paras[1]
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert gen["eos_token_id"] == [sp["<|bos|>"], sp["<|assistant_end|>"]]
    enc = Encoder(EncoderConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1))
    hf_tok = transformers.AutoTokenizer.from_pretrained(export_hf(enc, tok, str(tmp_path / "mlm")))
    assert hf_tok.mask_token_id == sp["<|mask|>"] and hf_tok.pad_token_id == sp["<|pad|>"]
    assert hf_tok(paras[3])["input_ids"] == tok.encode_ordinary(paras[3])  # no [CLS]/[SEP] added


def test_trained_gpt_logits_and_greedy_match(tok, texts, tmp_path):
    torch.manual_seed(0)
    stream = _stream(tok, texts[0][:200])
    T = 48
    rows = stream[: (len(stream) // (T + 1)) * (T + 1)].view(-1, T + 1)
    batches = [rows[i:i + 8] for i in range(0, len(rows) - 8, 8)]
    cfg = GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=2, d_model=64, n_kv_head=2,
                          max_seq_len=64)
    model = _train(GPT(cfg), batches, lambda m, b: m(b[:, :-1], b[:, 1:]))
    out = export_hf(model, tok, str(tmp_path / "hf"))
    hf = load_hf(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    x = torch.tensor([hf_tok(p)["input_ids"][:T] for p in texts[0][200:260] if
                      len(tok.encode_ordinary(p)) >= T][:4])
    assert x.shape == (4, T)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)
        prompt = x[:1, :10]
        ours = prompt
        for _ in range(12):  # greedy without a cache; transformers uses its own
            ours = torch.cat([ours, model(ours)[:, -1].argmax(-1, keepdim=True)], dim=1)
        theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None,
                             attention_mask=torch.ones_like(prompt))
    assert theirs.tolist() == ours.tolist()


@pytest.mark.parametrize("kw", [dict(bias=True), MODERN], ids=["megatron", "modernbert"])
def test_trained_encoder_logits_match(kw, tok, texts, tmp_path):
    from fastlm.train.collate import mask_tokens
    torch.manual_seed(0)
    stream = _stream(tok, texts[0][:200])
    T = 48
    rows = stream[: (len(stream) // T) * T].view(-1, T)
    g = torch.Generator().manual_seed(0)
    masked = [mask_tokens(rows[i:i + 8], mask_token_id=tok.special_id("<|mask|>"),
                          vocab_size=tok.n_vocab, special_ids=tok.special_tokens.values(),
                          generator=g) for i in range(0, len(rows) - 8, 8)]
    cfg = EncoderConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=2, d_model=64,
                              max_seq_len=64, **kw)
    model = _train(Encoder(cfg), masked, lambda m, b: m(b[0], b[1]))
    hf = load_hf(export_hf(model, tok, str(tmp_path / "hf")))
    x = masked[0][0][:4]
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)


def test_chat_template_same_ids(tok, tmp_path):
    from fastlm.tokenizer.chat_template import render_conversation, render_prompt
    model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1))
    hf_tok = transformers.AutoTokenizer.from_pretrained(export_hf(model, tok, str(tmp_path / "hf")))
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is a sonnet?\n  Fourteen lines?"},
                {"role": "assistant", "content": "Yes: fourteen lines, iambic pentameter."},
                {"role": "user", "content": "naïve 🙂"}]
    rec = {"messages": messages}

    def hf_ids(msgs, gen):
        out = hf_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    assert hf_ids(messages, True) == render_prompt(tok, rec)
    assert hf_ids(messages[:3], False) == render_conversation(tok, {"messages": messages[:3]})[0]


def test_doctests():
    import doctest

    import fastlm.models.export as export
    assert doctest.testmod(export).failed == 0


# ---- `fastlm export` on checkpoints written by fastlm.train.checkpoint.save_checkpoint ------------

def _checkpoint(tmp_path, model, tok):
    from fastlm.models import config_to_dict
    from fastlm.train.checkpoint import save_checkpoint
    tok_path = str(tmp_path / "tokenizer.fastlm")
    tok.save(tok_path)
    run = tmp_path / "run"
    save_checkpoint(str(run / "checkpoints"), 7, model_state=model.state_dict(), optimizer_state=None,
                    meta={"model_config": config_to_dict(model.config)}, tokenizer_path=tok_path)
    return str(run)


@pytest.mark.parametrize("make", ["gpt", "encoder"])
def test_cli_round_trip(make, tok, texts, tmp_path, capsys):
    from fastlm.cli.main import main
    torch.manual_seed(0)
    if make == "gpt":
        model = perturb(GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=2, d_model=64,
                                            n_kv_head=2, tie_embeddings=False)))
    else:
        model = perturb(Encoder(EncoderConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=2,
                                                    d_model=64, **MODERN)))
    run = _checkpoint(tmp_path, model, tok)
    out = str(tmp_path / "hf")
    assert main(["export", "--ckpt", run, "--to", "hf", out]) == 0
    assert "step 7" in capsys.readouterr().err
    hf = load_hf(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = texts[0][250]
    x = torch.tensor([hf_tok(text)["input_ids"][:40]])
    assert x[0].tolist() == tok.encode_ordinary(text)[:40]
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)
    # an existing export is kept unless --force
    assert main(["export", "--ckpt", run, out]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert main(["export", "--ckpt", run, out, "--force", "--dtype", "bfloat16"]) == 0
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"


def test_cli_errors(tok, tmp_path, capsys):
    from fastlm.cli.main import main
    assert main(["export", "--ckpt", str(tmp_path / "nope"), str(tmp_path / "hf")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    model = Encoder(EncoderConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1, norm="rmsnorm"))
    run = _checkpoint(tmp_path, model, tok)
    assert main(["export", "--ckpt", run, str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "fastlm: error:" in err and "norm='layernorm'" in err
    assert not (tmp_path / "hf").exists()
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", run, "--to", "onnx", str(tmp_path / "hf")])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the help named MegatronBERT only, not the rotary encoders' ModernBERT
        main(["export", "--help"])
    assert "ModernBertForMaskedLM" in " ".join(capsys.readouterr().out.split())


def test_reward_model_refused_plainly_before_any_work(tok, tmp_path, capsys, monkeypatch):
    """A reward checkpoint failed inside the weight mapping with "no Hugging Face name for parameter(s)
    ['score.bias', 'score.weight']"; it is now refused from state.json, before any weights are loaded or
    OUT is created, naming the checkpoint and the format."""
    from fastlm.cli.main import main
    from fastlm.models import RewardModel
    from fastlm.train import checkpoint
    rm = RewardModel.from_gpt(GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1, d_model=32)))
    run = _checkpoint(tmp_path, rm, tok)
    ckpt = checkpoint.latest_checkpoint(run)

    def no_loading(*a, **k):
        raise AssertionError("weights loaded before the refusal")
    monkeypatch.setattr(checkpoint, "load_model", no_loading)
    monkeypatch.setattr(checkpoint, "load_checkpoint", no_loading)
    out = tmp_path / "hf"
    assert main(["export", "--ckpt", run, "--to", "hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "score.bias" not in err, err
    assert f"{ckpt} is a reward model" in err and "reward models cannot be exported to the Hugging Face format" in err
    assert "(--to hf)" in err and not out.exists()
    with pytest.raises(ExportError, match="reward models cannot be exported to the Hugging Face format"):
        export_hf(rm, None, str(out))  # the library call refuses it too, before writing
    assert not out.exists()

