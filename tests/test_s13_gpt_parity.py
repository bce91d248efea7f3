"""fastlm's GPT against transformers on configurations the other tests do not try (audit s13): export
parity (LlamaForCausalLM / ArceeForCausalLM) on odd sizes in fp32 and fp64, left padding, the round trip
through `fastlm.posttrain.hf_import` and the import of transformers' own checkpoints; `generate` against
`generate()` (greedy with and without caches, left-padded batches, eos, seeded sampling); the
top-k / top-p / temperature filters against transformers' warpers on boundary ties; odd arguments."""
import warnings
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lp = pytest.importorskip("transformers.generation.logits_process")

from fastlm.models import GPT, GPTConfig  # noqa: E402
from fastlm.models.export import export_hf, to_hf_model  # noqa: E402
from fastlm.models.generate import generate, process_logits, sample_next  # noqa: E402
from fastlm.posttrain.hf_import import load_hf  # noqa: E402
from test_generate import _warpers  # noqa: E402

torch.set_num_threads(1)


def perturb(model, seed=0, scale=0.05):
    """Every weight moved (norm weights and biases too) so a swapped or dropped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def rand_ids(b, t, v, seed=0):
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


def quiet_hf(model):
    """to_hf_model without transformers' notes about the absent bos/eos/pad ids."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_hf_model(model)


# ---- logits: odd configs, fp32 and fp64 -------------------------------------------------------------

CONFIGS = {  # head dim 2 .. 128, MQA / GQA / MHA, rope_theta and norm_eps extremes, 1 and 3 layers
    "v41-l1-mqa-hd2-theta1e-3-eps1": dict(vocab_size=41, n_layer=1, n_head=4, n_kv_head=1, d_model=8,
                                          max_seq_len=16, rope_theta=1e-3, norm_eps=1.0),
    "v41-l3-gqa-hd128-untied-bias-theta1e9": dict(vocab_size=41, n_layer=3, n_head=2, n_kv_head=1,
                                                  d_model=256, tie_embeddings=False, bias=True,
                                                  rope_theta=1e9, max_seq_len=24),
    "v50257-l1-tied-eps1e-12": dict(vocab_size=50257, n_layer=1, n_head=2, d_model=16, norm_eps=1e-12,
                                    max_seq_len=12),
    "gelu-l3-mqa-bias-hidden7": dict(vocab_size=41, n_layer=3, n_head=6, n_kv_head=1, d_model=24,
                                     mlp="gelu", mlp_hidden=7, bias=True, tie_embeddings=False,
                                     max_seq_len=20),
    "swiglu-hidden1-max_seq_len1": dict(vocab_size=41, n_layer=1, n_head=2, d_model=8, mlp_hidden=1,
                                        max_seq_len=1),
    "gqa-theta1-hd12": dict(vocab_size=41, n_layer=2, n_head=4, n_kv_head=2, d_model=48, rope_theta=1.0,
                            max_seq_len=32),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_on_odd_configs(name):
    """fp32 within 1e-6 and fp64 within 1e-12 (an fp64 GPT rotated q, k in fp32 with fp64 angles:
    ~1e-7 .. 4e-6 from Llama's fp64 logits)."""
    torch.manual_seed(0)
    model = perturb(GPT(GPTConfig(**CONFIGS[name])))
    c = model.config
    hf = quiet_hf(model)
    assert type(hf).__name__ == ("LlamaForCausalLM" if c.mlp == "swiglu" else "ArceeForCausalLM")
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        model, hf = model.to(dtype), hf.to(dtype)
        for b, t in ((1, 1), (3, c.max_seq_len)):  # batch 1 x length 1, and the whole context
            x = rand_ids(b, t, c.vocab_size, seed=t)
            with torch.no_grad():
                ours, theirs = model(x), hf(input_ids=x).logits
            assert ours.dtype == theirs.dtype == dtype
            torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol, msg=f"{dtype} {b}x{t}")
        if c.max_seq_len >= 8:  # offset positions up to the last one
            x = rand_ids(2, 5, c.vocab_size, seed=9)
            pos = torch.arange(c.max_seq_len - 5, c.max_seq_len)[None].expand(2, -1)
            with torch.no_grad():
                torch.testing.assert_close(model(x, position_ids=pos),
                                           hf(input_ids=x, position_ids=pos).logits, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_left_padding_matches_transformers_attention_mask(dtype):
    """fastlm's GPT has no attention_mask: left padding is doc_ids -1 on the pads (attention to them
    blocked) with positions counted from the first real token, as transformers does from its mask."""
    torch.manual_seed(0)
    model = perturb(GPT(GPTConfig(vocab_size=41, n_layer=2, n_head=4, n_kv_head=1, d_model=32,
                                  max_seq_len=16, bias=True))).to(dtype)
    hf = quiet_hf(model).to(dtype)
    lengths = [16, 9, 1, 4]
    x = rand_ids(4, 16, 41, seed=2)
    mask = torch.stack([torch.arange(16) >= 16 - n for n in lengths]).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(input_ids=x, attention_mask=mask, position_ids=pos).logits
        ours = model(x, doc_ids=torch.where(mask.bool(), 0, -1), position_ids=pos)
        for i, n in enumerate(lengths):  # each row alone, unpadded
            alone = model(x[i:i + 1, 16 - n:])
            torch.testing.assert_close(ours[i, 16 - n:], alone[0], rtol=1e-6, atol=1e-6)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], rtol=tol, atol=tol)


# ---- the directory: export -> transformers, export -> import, transformers' own -> import ----------

@pytest.mark.parametrize("name", ["v41-l1-mqa-hd2-theta1e-3-eps1", "gelu-l3-mqa-bias-hidden7"])
def test_export_directory_and_import_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = perturb(GPT(GPTConfig(**CONFIGS[name])))
    out = export_hf(model, None, str(tmp_path / "hf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back, tok = load_hf(out, tokenizer=False)
    assert back.config == model.config and tok is None
    x = rand_ids(2, model.config.max_seq_len, 41, seed=5)
    with torch.no_grad():
        ours = model(x)
        assert torch.equal(back(x), ours)  # the same weights, the same function
        torch.testing.assert_close(hf.eval()(input_ids=x).logits, ours, rtol=1e-6, atol=1e-6)


HF_NATIVE = {  # checkpoints transformers wrote itself: biases on one side only, MQA, tied, odd theta
    "llama-attn-bias-tied-mqa": ("llama", dict(attention_bias=True, mlp_bias=False, tie_word_embeddings=True,
                                               num_key_value_heads=1, rope_theta=3.0, rms_norm_eps=0.3)),
    "llama-mlp-bias-gqa": ("llama", dict(attention_bias=False, mlp_bias=True, num_key_value_heads=2)),
    "arcee-gelu-mqa": ("arcee", dict(hidden_act="gelu", num_key_value_heads=1)),
}


@pytest.mark.parametrize("name", list(HF_NATIVE))
def test_import_transformers_checkpoint(name, tmp_path):
    kind, kw = HF_NATIVE[name]
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(kind, vocab_size=41, hidden_size=24, intermediate_size=10,
                                            num_hidden_layers=2, num_attention_heads=6,
                                            max_position_embeddings=20, bos_token_id=None,
                                            eos_token_id=None, **kw)
    hf = perturb(getattr(transformers, "LlamaForCausalLM" if kind == "llama" else "ArceeForCausalLM")(cfg))
    hf.save_pretrained(str(tmp_path))
    model, _ = load_hf(str(tmp_path), tokenizer=False)
    assert model.config.kv_heads == cfg.num_key_value_heads and model.config.max_seq_len == 20
    x = rand_ids(2, 20, 41, seed=1)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        model, hf = model.to(dtype), hf.to(dtype)
        with torch.no_grad():
            torch.testing.assert_close(model(x), hf(input_ids=x).logits, rtol=tol, atol=tol)


# ---- generation --------------------------------------------------------------------------------------

def sharp_model(seed=0, **kw):
    """Weights x5: peaked distributions, so greedy has no near-ties for float noise to break."""
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**dict(vocab_size=41, n_layer=3, n_head=4, n_kv_head=1, d_model=32, max_seq_len=24,
                              tie_embeddings=False, bias=True), **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return perturb(model)


def hf_generate(hf, prompts, n, **kw):
    """transformers' generate on left-padded prompts -> the new ids of each row."""
    L = max(len(p) for p in prompts)
    x = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    kw = {"eos_token_id": None, "pad_token_id": 0, **kw}
    with torch.no_grad():
        return hf.generate(x, attention_mask=mask, max_new_tokens=n, **kw)[:, L:].tolist()


@pytest.fixture(scope="module")
def pair():
    model = sharp_model()
    return model, quiet_hf(model)


def test_greedy_matches_transformers_with_and_without_caches(pair):
    model, hf = pair
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 23):  # up to max_seq_len: transformers has no sliding window to compare
        prompt = torch.randint(0, 41, (n,), generator=g).tolist()
        new = 24 - n
        ours = list(generate(model, prompt, max_new_tokens=new, temperature=0))
        assert len(ours) == new
        assert list(generate(model, prompt, max_new_tokens=new, temperature=0, use_cache=False)) == ours
        assert hf_generate(hf, [prompt], new, do_sample=False)[0] == ours, n
        assert hf_generate(hf, [prompt], new, do_sample=False, use_cache=False)[0] == ours, n


def test_left_padded_batch_and_eos_match_transformers(pair):
    model, hf = pair
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 41, (n,), generator=g).tolist() for n in (1, 5, 12, 3)]
    ours = [list(generate(model, p, max_new_tokens=12, temperature=0)) for p in prompts]
    assert hf_generate(hf, prompts, 12, do_sample=False) == ours
    # eos: an id several rows emit (at different steps); each row stops right after its first eos
    rows_with = Counter(t for row in ours for t in set(row))
    eos = max(rows_with, key=lambda t: (rows_with[t], -t))
    assert 2 <= rows_with[eos] < len(prompts)
    stopped = [list(generate(model, p, max_new_tokens=12, temperature=0, eos_id=eos)) for p in prompts]
    pad = 40 if eos != 40 else 39
    theirs = hf_generate(hf, prompts, 12, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    for row, full, mine in zip(theirs, ours, stopped):
        want = full[:full.index(eos) + 1] if eos in full else full
        assert mine == want
        assert row[:len(mine)] == mine and set(row[len(mine):]) <= {pad}


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (0.8, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.7), (0.6, 3, 0.9), (2.0, 1, 1.0), (1.0, 41, 0.5)])
def test_seeded_sampling_draws_the_same_ids_as_transformers(pair, temperature, top_k, top_p):
    """Same filtered fp32 distribution and the same torch.multinomial call: with the same global seed
    (generator=None), the same ids as generate(do_sample=True) (top_k=0 there: its default is 50)."""
    model, hf = pair
    prompt = [7, 3, 30, 1, 12]
    torch.manual_seed(11)
    ours = list(generate(model, prompt, max_new_tokens=15, temperature=temperature, top_k=top_k,
                         top_p=top_p))
    torch.manual_seed(11)
    theirs = hf_generate(hf, [prompt], 15, do_sample=True, temperature=temperature, top_k=top_k,
                         top_p=top_p)[0]
    assert ours == theirs


def _warped(logits, temperature, top_k, top_p):
    """transformers' warpers in generate()'s order (test_generate's list) applied to ``logits``."""
    return _warpers(temperature, top_k, top_p)(torch.zeros(len(logits), 1, dtype=torch.long), logits.clone())


def _edge_logits():
    V = 41
    x = torch.randn(6, V, generator=torch.Generator().manual_seed(0)) * 3
    x[0] = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5] + [0.0] * 36)   # a three-way tie at the top-k boundary
    x[1] = 0.0                                                    # every token tied
    x[2] = float("-inf")                                          # two finite tokens, tied
    x[2, 3] = x[2, 7] = 1.0
    x[3] = torch.log(torch.tensor([0.5, 0.25, 0.25] + [1e-30] * 38))  # cumulative 0.5 / 0.75 exactly
    x[4, :20] = x[4, 20]                                          # a wide tie in the middle
    return x


@pytest.mark.parametrize("temperature", [1.0, 1e-3, 1e-20, 100.0])
@pytest.mark.parametrize("top_k", [0, 1, 2, 3, 40, 41, 1000])
@pytest.mark.parametrize("top_p", [1.0, 0.75, 0.5, 0.25, 1e-9])
def test_filtered_distribution_equals_transformers_warpers(temperature, top_k, top_p):
    logits = _edge_logits()
    ours = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    theirs = _warped(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))  # the same tokens kept
    assert torch.equal(ours.softmax(-1), theirs.softmax(-1))           # exactly the same probabilities


def test_tiny_temperature_and_bad_logits_are_named():
    """logits / 1e-40 overflow float32: torch.multinomial failed with 'probability tensor contains
    either inf, nan or element < 0' (transformers' warper gives the same NaN)."""
    logits = _edge_logits()[5:]
    assert int(sample_next(logits, temperature=1e-20)) == int(logits.argmax())
    for t in (1e-38, 1e-40, 5e-324):
        with pytest.raises(ValueError, match="temperature .* too small.*temperature=0"):
            sample_next(logits, temperature=t)
    for bad in (torch.full((1, 41), float("nan")), torch.full((1, 41), float("-inf"))):
        with pytest.raises(ValueError, match="NaN or \\+inf, or are -inf for every token"):
            sample_next(bad, temperature=1.0)
    with pytest.raises(ValueError, match="temperature .* too small"):
        list(generate(sharp_model(), [1], max_new_tokens=2, temperature=1e-40))


# ---- odd arguments -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(max_new_tokens=1.5), "max_new_tokens must be an integer, got 1.5"),  # TypeError from range()
    (dict(max_new_tokens=2.0), "max_new_tokens must be an integer"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer, got True"),  # was 1 token
    (dict(max_new_tokens=None), "max_new_tokens must be an integer, got None"),
    (dict(max_new_tokens="3"), "max_new_tokens must be an integer"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    (dict(eos_id=41), "eos_id must be None or a token id in \\[0, 41\\), got 41"),  # never stopped
    (dict(eos_id=-1), "eos_id must be None or a token id"),
    (dict(eos_id=1.5), "eos_id must be None or a token id"),
    (dict(eos_id=True), "eos_id must be None or a token id"),                       # matched id 1
    (dict(top_k=2.5), "top_k must be an integer, got 2.5"),                         # TypeError in topk
    (dict(top_k=True), "top_k must be an integer"),
    (dict(top_k=None), "top_k must be an integer"),
    (dict(top_p="0.5"), "top_p must be a number"),
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
    (dict(temperature=None), "temperature must be a number, got None"),
    (dict(temperature="1"), "temperature must be a number"),
    (dict(temperature=float("nan")), "temperature must be >= 0"),
    (dict(prompt_ids=5), "prompt_ids must be a list or 1-D tensor of token ids, got int"),  # TypeError
    (dict(prompt_ids=None), "prompt_ids must be a list or 1-D tensor of token ids, got NoneType"),
    (dict(prompt_ids="abc"), "prompt_ids must be a list or 1-D tensor of token ids, got str"),
    (dict(prompt_ids=[]), "prompt_ids is empty"),
    (dict(prompt_ids=torch.tensor([], dtype=torch.long)), "prompt_ids is empty"),
    (dict(prompt_ids=np.array([1.0, 2.0])), "prompt_ids must be integer token ids"),
    (dict(prompt_ids=[3, 41]), "prompt id 41 is outside the model's vocabulary \\[0, 41\\)"),
])
def test_odd_generate_arguments_are_refused_by_name(kw, match):
    model = sharp_model(max_seq_len=8)
    args = {"prompt_ids": [1, 2], "max_new_tokens": 3, **kw}
    with pytest.raises(ValueError, match=match):
        list(generate(model, args.pop("prompt_ids"), **args))


def test_documented_edge_behaviour():
    model = sharp_model(max_seq_len=8)
    assert list(generate(model, [1, 2], max_new_tokens=0)) == []
    ref = list(generate(model, [1, 2], max_new_tokens=3, temperature=0, eos_id=None))
    for n in (np.int64(3), torch.tensor(3)):  # integer types other than int
        assert list(generate(model, [1, 2], max_new_tokens=n, temperature=0, top_k=np.int64(0))) == ref
    assert list(generate(model, np.array([1, 2]), max_new_tokens=3, temperature=0,
                         eos_id=np.int64(ref[0]))) == ref[:1]
    # a prompt longer than max_seq_len keeps its last max_seq_len - max_seq_len // 4 = 6 tokens
    long = list(range(1, 20))
    with pytest.warns(UserWarning, match="prompt has 19 tokens > max_seq_len 8: keeping the last 6"):
        got = list(generate(model, long, max_new_tokens=10, temperature=0))
    assert got == list(generate(model, long[-6:], max_new_tokens=10, temperature=0, use_cache=False))
    # exactly max_seq_len tokens: no warning, the window slides after the first new token
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(generate(model, long[:8], max_new_tokens=5, temperature=0))) == 5
    # top_k >= vocab and top_p 1.0 are off; top_k 1 is greedy
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = list(generate(model, [1, 2], max_new_tokens=8, generator=g()))
    assert list(generate(model, [1, 2], max_new_tokens=8, top_k=1000, top_p=1.0, generator=g())) == plain
    assert list(generate(model, [1, 2], max_new_tokens=8, top_k=1, generator=g())) == \
        list(generate(model, [1, 2], max_new_tokens=8, temperature=0))
