"""Tests for fastlm.models.generate: KV-cache logits against full forwards, greedy with and without
the cache (and across a sliding window), top-k/top-p/temperature against transformers' warpers,
seeded sampling, eos, transformers' greedy generate on the same weights, UTF-8 streaming."""
import pytest

torch = pytest.importorskip("torch")

from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig  # noqa: E402
from fastlm.models.generate import (KVCache, generate, process_logits, sample_next,  # noqa: E402
                                    stream_text, top_k_filter, top_p_filter)

torch.set_num_threads(1)
V = 97


def tiny(**kw):
    base = dict(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64)
    base.update(kw)
    return GPTConfig(**base)


def model_for(seed=0, **kw):
    torch.manual_seed(seed)
    m = GPT(tiny(**kw)).eval()
    with torch.no_grad():  # larger weights: sharper distributions, greedy ties unlikely
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.mul_(5.0)
    return m


CASES = [dict(),                                              # MHA
         dict(n_head=6, n_kv_head=2, d_model=36, mlp_hidden=50),  # GQA, odd sizes (hd 6)
         dict(n_head=3, n_kv_head=1, d_model=42, tie_embeddings=False, n_layer=3)]  # MQA


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("chunks", [(7, 1, 1, 1, 1), (5, 3, 1, 4, 2)])
def test_cached_logits_equal_full_forward(kw, chunks):
    """Prefill, then one token (or a few) at a time: every step's logits equal a full forward."""
    model = model_for(**kw)
    T = sum(chunks)
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)
        cache, pos, got = KVCache(max_len=32), 0, []
        for n in chunks:
            got.append(model(x[:, pos:pos + n], kv_cache=cache))
            pos += n
        assert cache.pos == T
    torch.testing.assert_close(torch.cat(got, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_errors_and_reset():
    model = model_for()
    cache = KVCache(max_len=8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="KV cache full"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="batch"):
            model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
        cache.reset()
        a = model(torch.ones(1, 4, dtype=torch.long), kv_cache=cache)
    torch.testing.assert_close(a, model(torch.ones(1, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="max_len"):
        KVCache(0)


@pytest.mark.parametrize("kw", CASES[:2])
def test_greedy_cache_equals_no_cache_with_sliding(kw):
    """max_seq_len 16: the window slides twice; the cache and full recomputation agree."""
    model = model_for(**kw, max_seq_len=16)
    prompt = [3, 1, 4, 1, 5]
    a = list(generate(model, prompt, max_new_tokens=40, temperature=0))
    b = list(generate(model, prompt, max_new_tokens=40, temperature=0, use_cache=False))
    assert a == b and len(a) == 40
    # the no-cache path is itself a plain reference: crop to the last `keep` when over 16
    ref, ctx = [], list(prompt)
    with torch.no_grad():
        for _ in range(40):
            nxt = int(model(torch.tensor([ctx]))[0, -1].argmax())
            ref.append(nxt)
            ctx.append(nxt)
            if len(ctx) > 16:
                ctx = ctx[-12:]
    assert ref == a


def test_long_prompt_keeps_the_tail():
    model = model_for(max_seq_len=16)
    prompt = list(range(1, 30))
    with pytest.warns(UserWarning, match="keeping the last 12"):
        a = list(generate(model, prompt, max_new_tokens=6, temperature=0))
    b = list(generate(model, prompt[-12:], max_new_tokens=6, temperature=0))
    assert a == b


def _warpers(temperature, top_k, top_p):
    lp = pytest.importorskip("transformers.generation.logits_process")
    procs = []
    if temperature != 1.0:
        procs.append(lp.TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(lp.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(lp.TopPLogitsWarper(top_p))
    return lp.LogitsProcessorList(procs)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 5, 1.0), (1.0, 0, 0.9), (0.7, 10, 0.8), (1.3, 1, 1.0), (1.0, 0, 0.05), (1.0, 500, 0.99),
    (0.5, 0, 1.0)])
def test_filters_match_transformers(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, V, generator=g) * 3
    logits[0, :10] = logits[0, 10]  # ties at the boundary
    ids = torch.zeros(4, 1, dtype=torch.long)
    ours = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    theirs = _warpers(temperature, top_k, top_p)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_p_filter(logits, 1.0),
                                                                          logits)


def test_temperature_and_seeded_sampling():
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(2))
    # the draw is torch.multinomial over softmax(logits / T) with the given generator
    for t in (0.5, 1.0, 2.0):
        got = [int(sample_next(logits, temperature=t, generator=torch.Generator().manual_seed(s)))
               for s in range(20)]
        want = [int(torch.multinomial((logits / t).softmax(-1), 1,
                                      generator=torch.Generator().manual_seed(s)))
                for s in range(20)]
        assert got == want
    # low temperature concentrates on the argmax, high spreads out
    g = torch.Generator().manual_seed(0)
    cold = {int(sample_next(logits, temperature=0.01, generator=g)) for _ in range(50)}
    hot = {int(sample_next(logits, temperature=5.0, generator=g)) for _ in range(50)}
    assert cold == {int(logits.argmax())} and len(hot) > 10
    model = model_for()
    run = lambda seed: list(generate(model, [1, 2], max_new_tokens=20, temperature=1.0,  # noqa
                                     top_k=20, top_p=0.95,
                                     generator=torch.Generator().manual_seed(seed)))
    assert run(7) == run(7) and run(7) != run(8)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        process_logits(logits, top_p=0.0)


def test_eos_stops_and_errors():
    model = model_for()
    first = list(generate(model, [5, 6], max_new_tokens=5, temperature=0))
    assert list(generate(model, [5, 6], max_new_tokens=5, temperature=0, eos_id=first[0])) == \
        first[:1]
    assert list(generate(model, [5, 6], max_new_tokens=0)) == []
    assert list(generate(model, torch.tensor([5, 6]), max_new_tokens=5, temperature=0)) == first
    with pytest.raises(ValueError, match="empty"):
        list(generate(model, [], max_new_tokens=3))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        list(generate(model, [V], max_new_tokens=3))
    enc = Encoder(EncoderConfig(vocab_size=V, n_layer=1, n_head=2, d_model=32, max_seq_len=16))
    with pytest.raises(ValueError, match="causal LM"):
        list(generate(enc, [1], max_new_tokens=3))
    assert model.training is False
    model.train()
    list(generate(model, [5], max_new_tokens=2, temperature=0))
    assert model.training is True  # restored


def test_prompt_ids_must_be_integers():
    """Float ids were truncated (1.5 -> 1, a float tensor accepted) and bools read as 0/1."""
    model = model_for()
    for bad in ([1.5, 2], [5.0, 6.0], torch.tensor([5.0, 6.0]), torch.tensor([True, False]), [True, 6],
                torch.tensor([[5, 6]]), [[5, 6]]):
        with pytest.raises(ValueError, match="prompt_ids must be"):
            list(generate(model, bad, max_new_tokens=2, temperature=0))
    ref = list(generate(model, [5, 6], max_new_tokens=2, temperature=0))
    for ok in (torch.tensor([5, 6], dtype=torch.int32), (5, 6), torch.tensor([5, 6]).numpy()):
        assert list(generate(model, ok, max_new_tokens=2, temperature=0)) == ref


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_head=2, tie_embeddings=False)])
def test_greedy_matches_transformers_generate(kw):
    from test_models import _llama_from  # same weight mapping as the logits parity test
    model = model_for(**kw)
    hf = _llama_from(model)
    prompt = [11, 22, 33, 44, 55, 66, 77]
    ours = list(generate(model, prompt, max_new_tokens=24, temperature=0))
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=0, attention_mask=torch.ones(1, 7,
                                                                                      dtype=torch.long))
    assert ours == out[0, len(prompt):].tolist()


def test_stream_text_multibyte():
    from fastlm.tokenizer import Tokenizer
    tok = Tokenizer.train_from_iterator(["héllo wörld 日本語 😀"] * 20, 300, special_tokens=["<|bos|>"])
    text = "日本語 😀 é"
    ids = tok.encode_ordinary(text) + [tok.special_id("<|bos|>")]
    pieces = list(stream_text(tok, ids))
    assert "".join(pieces) == text + "<|bos|>"
    assert all("\ufffd" not in p for p in pieces)
    byte_ids = list("😀".encode())  # one byte per token: held back until the 4th
    assert list(stream_text(tok, byte_ids)) == ["", "", "", "😀"]
    assert "".join(stream_text(tok, [0xF0, 0x9F])) == "\ufffd"  # truncated at the end


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_cache_matches_full_forward():
    """bf16 autocast on CUDA, head dim 64 (the prefill takes fastlm's flash kernel when built):
    cached logits stay within bf16 noise of full forwards; seeded sampling is reproducible."""
    torch.manual_seed(0)
    model = GPT(tiny(d_model=256, n_head=4, n_kv_head=2, max_seq_len=128)).cuda().eval()
    x = torch.randint(0, V, (2, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(x).float()
        cache = KVCache(64)
        parts = [model(x[:, :30], kv_cache=cache)] + [model(x[:, t:t + 1], kv_cache=cache)
                                                      for t in range(30, 40)]
        got = torch.cat(parts, dim=1).float()
        a = list(generate(model, x[0, :5].tolist(), max_new_tokens=20, temperature=0))
    torch.testing.assert_close(got, full, rtol=0.05, atol=0.05)
    assert len(a) == 20
    logits = torch.randn(1, V, device="cuda")
    draws = [sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
             for _ in range(2)]  # a CPU generator drives the draw for CUDA logits
    assert int(draws[0]) == int(draws[1]) and draws[0].device.type == "cuda"
