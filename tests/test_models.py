"""Tests for fastlm.models: shapes, causality, GQA, fused vs torch loss, transformers parity,
encoder bidirectionality and MLM loss, parameter counts, overfitting a tiny batch."""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig  # noqa: E402

V = 97  # prime vocab: no accidental alignment


def tiny(**kw):
    base = dict(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64)
    base.update(kw)
    return GPTConfig(**base)


def ids(b=2, t=16, seed=0):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [{}, dict(n_kv_head=2), dict(mlp="gelu"),
                                dict(tie_embeddings=False), dict(bias=True)])
def test_shapes_and_backward(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw))
    x = ids()
    assert model(x).shape == (2, 16, V)
    assert model(x, x, reduction="none").shape == (2, 16)
    loss = model(x, x)
    assert loss.shape == ()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert (model.lm_head.weight is model.tok_emb.weight) == model.config.tie_embeddings


@pytest.mark.parametrize("kernels", ["fastlm", "torch"])
def test_causality(kernels):
    torch.manual_seed(0)
    model = GPT(tiny(n_kv_head=2)).eval()
    x = ids(1, 20)
    y = x.clone()
    y[0, 12] = (x[0, 12] + 1) % V
    with torch.no_grad():
        a, b = model(x, kernels=kernels), model(y, kernels=kernels)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4


def test_gqa_equals_mha_with_repeated_kv():
    torch.manual_seed(0)
    gqa = GPT(tiny(n_head=4, n_kv_head=2)).eval()
    mha = GPT(tiny(n_head=4)).eval()
    sd = gqa.state_dict()
    hd = 16
    for k, w in list(sd.items()):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            # (n_kv*hd, d) -> each kv head serves n_head/n_kv consecutive query heads
            sd[k] = w.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(sd)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, dict(n_kv_head=1, tie_embeddings=False)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_loss_matches_torch_and_cross_entropy(kw, reduction):
    torch.manual_seed(0)
    model = GPT(tiny(**kw))
    x, t = ids(2, 24, 1), ids(2, 24, 2)
    t[0, :5] = -100
    grads = []
    losses = []
    for kernels in ("fastlm", "torch"):
        model.zero_grad()
        loss = model(x, t, kernels=kernels, reduction=reduction)
        loss.sum().backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    with torch.no_grad():
        ref = F.cross_entropy(model(x, kernels="torch").reshape(-1, V).double(), t.reshape(-1),
                              ignore_index=-100, reduction=reduction)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[0].double(), ref.reshape(losses[0].shape), rtol=1e-5,
                               atol=1e-6)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def _llama_from(model):
    """The same weights in transformers' LlamaForCausalLM (name map: fastlm.models.export)."""
    pytest.importorskip("transformers")
    from fastlm.models.export import to_hf_model
    hf = to_hf_model(model)
    assert type(hf).__name__ == "LlamaForCausalLM"
    return hf


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_head=2, tie_embeddings=False,
                                            rope_theta=500000.0, norm_eps=1e-6)])
def test_logits_match_transformers_llama(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw)).eval()
    with torch.no_grad():  # non-trivial norm weights so a swapped norm would show
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    hf = _llama_from(model)
    x = ids(2, 40, 3)
    with torch.no_grad():
        ours = model(x)
        theirs = hf(input_ids=x).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # offset positions: position_ids flow through the same rotary tables
    pos = torch.arange(5, 45)[None].expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, position_ids=pos),
                                   hf(input_ids=x, position_ids=pos).logits,
                                   rtol=1e-5, atol=1e-5)


def test_param_counts():
    for name in ("tiny", "small", "gpt2-124m"):
        cfg = GPTConfig.named(name)
        with torch.device("meta"):
            model = GPT(cfg)
        assert model.num_params() == cfg.num_params()
        assert model.num_params() == sum(p.numel() for p in set(model.parameters()))
        assert model.num_params(non_embedding=True) == cfg.num_params(non_embedding=True)
    assert 123e6 < GPTConfig.named("gpt2-124m").num_params() < 125e6
    for kw in (dict(n_kv_head=2, tie_embeddings=False, bias=True), dict(mlp="gelu")):
        cfg = tiny(**kw)
        assert GPT(cfg).num_params() == cfg.num_params()
    for kw in (dict(), dict(positions="rotary", tie_embeddings=False, bias=True), dict(bias=True),
               dict(norm="rmsnorm", bias=True, n_kv_head=2),
               dict(positions="rotary", mlp="swiglu", embed_norm=True, bias=True)):
        cfg = EncoderConfig.named("tiny", **kw)
        m = Encoder(cfg)
        assert m.num_params() == cfg.num_params()
        assert m.num_params(non_embedding=True) == cfg.num_params(non_embedding=True)


def test_flops_per_token():
    cfg = GPTConfig.named("gpt2-124m")
    with torch.device("meta"):
        model = GPT(cfg)
    n = cfg.num_params(non_embedding=True) + cfg.vocab_size * cfg.d_model
    assert model.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_config_errors():
    with pytest.raises(ValueError, match="n_kv_head"):
        tiny(n_kv_head=3)
    with pytest.raises(ValueError, match="mlp"):
        tiny(mlp="relu")
    with pytest.raises(ValueError, match="unknown size"):
        GPTConfig.named("huge")
    with pytest.raises(ValueError, match="max_seq_len"):
        GPT(tiny())(ids(1, 65))
    with pytest.raises(ValueError, match="kernels"):
        GPT(tiny())(ids(), kernels="cuda")
    # wrong types / ranges from YAML overrides or a checkpoint's model_config: refused, naming the field
    # (were TypeErrors deep in the model, a truthy "maybe", or NaN weights after the first steps)
    for bad, match in [({"n_layer": 2.5}, "n_layer must be an integer"), ({"n_layer": "2"}, "n_layer must be"),
                       ({"tie_embeddings": "maybe"}, "tie_embeddings must be true/false"),
                       ({"bias": 2}, "bias must be true/false"), ({"rope_theta": "nan"}, "rope_theta must be"),
                       ({"rope_theta": float("nan")}, "rope_theta must be a finite number"),
                       ({"rope_theta": -1.0}, "rope_theta must be > 0"), ({"norm_eps": 0.0}, "norm_eps must be > 0"),
                       ({"init_std": -1.0}, "init_std must be >= 0"), ({"mlp_multiple_of": 0}, "mlp_multiple_of")]:
        with pytest.raises(ValueError, match=match):
            tiny(**bad)
        with pytest.raises(ValueError, match=match):
            EncoderConfig.named("tiny", **bad)
    assert tiny(rope_theta=500).rope_theta == 500 and tiny(n_kv_head=None).kv_heads == 4
    assert GPTConfig.named("small").mlp_hidden_size == 1024  # 8*384/3 = 1024
    assert tiny(d_model=96, n_head=4).mlp_hidden_size == 256  # 256 = ceil(256/64)*64


def test_max_seq_len_holds_with_position_ids_and_kv_cache():
    """max_seq_len is the longest context with explicit position_ids or a longer KVCache too (both
    used to accept any length: only the default-positions path was checked)."""
    from fastlm.models.generate import KVCache
    model = GPT(tiny(max_seq_len=8, n_layer=1)).eval()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids(1, 9), position_ids=torch.arange(9))
    with torch.no_grad():
        with pytest.raises(ValueError, match="max_seq_len"):
            model(ids(1, 9), kv_cache=KVCache(max_len=32))
        cache = KVCache(max_len=32)
        model(ids(1, 6), kv_cache=cache)
        model(ids(1, 2), kv_cache=cache)  # 8 tokens: exactly the context
        with pytest.raises(ValueError, match="8 cached \\+ 1 new tokens > max_seq_len 8"):
            model(ids(1, 1), kv_cache=cache)
    assert model(ids(1, 8), position_ids=torch.arange(8)).shape == (1, 8, V)


@pytest.mark.parametrize("make", [lambda: GPT(tiny(n_layer=1)), lambda: Encoder(EncoderConfig.named("tiny", n_layer=1,
                                                                                       vocab_size=V))])
def test_token_ids_outside_the_vocabulary_are_refused_naming_it(make):
    """An id >= vocab_size or < 0 raised the embedding's bare IndexError; float ids a dtype error."""
    model = make().eval()
    good = ids(2, 5)
    for bad_id in (V, -1, V + 1000):
        x = good.clone()
        x[1, 3] = bad_id
        with pytest.raises(ValueError, match=f"token id {bad_id} is outside the vocabulary \\[0, {V}\\)"):
            model(x)
    with pytest.raises(ValueError, match="integer token ids, got torch.float32"):
        model(good.float())
    with pytest.raises(ValueError, match="idx must be \\(batch, time\\)"):
        model(good[0])
    good[0, 0], good[1, 4] = 0, V - 1  # the ends of the range are fine
    assert model(good) is not None


def test_reward_model_input_checks():
    """Float lengths were truncated (2.7 -> 2) and a 1-D idx failed with 'not enough values to unpack'."""
    from fastlm.models import RewardModel
    rm = RewardModel(tiny(n_layer=1)).eval()
    x = ids(2, 5)
    with pytest.raises(ValueError, match="lengths must be integers"):
        rm(x, lengths=torch.tensor([2.7, 5.0]))
    with pytest.raises(ValueError, match=r"idx must be \(batch, time\)"):
        rm(x[0], lengths=torch.tensor([5]))
    assert rm(x, lengths=torch.tensor([2, 5], dtype=torch.int32)).shape == (2,)
    assert rm(x, lengths=[2, 5]).shape == (2,)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_encoder_bidirectional_and_mlm_loss(positions):
    torch.manual_seed(0)
    cfg = EncoderConfig.named("tiny", vocab_size=V, positions=positions, n_kv_head=2)
    model = Encoder(cfg).eval()
    x = ids(1, 20)
    y = x.clone()
    y[0, 15] = (x[0, 15] + 1) % V
    with torch.no_grad():
        assert model(x).shape == (1, 20, V)
        assert (model(x)[:, :15] - model(y)[:, :15]).abs().max() > 1e-4  # later -> earlier
    labels = torch.full_like(x, -100)
    labels[0, [2, 7, 11]] = torch.tensor([5, 6, 7])
    with torch.no_grad():
        logits = model(x)
        ref = F.cross_entropy(logits[0, [2, 7, 11]], torch.tensor([5, 6, 7]))
        for kernels in ("fastlm", "torch"):
            torch.testing.assert_close(model(x, labels, kernels=kernels), ref, rtol=1e-5,
                                       atol=1e-6)
            none = model(x, labels, kernels=kernels, reduction="none")
            assert none.shape == (1, 20) and (none[labels == -100] == 0).all()
        empty = torch.full_like(x, -100)  # nothing masked: zero loss, not NaN
        assert model(x, empty).item() == 0.0
    model.train()
    loss = model(x, labels)
    loss.backward()
    assert model.tok_emb.weight.grad is not None


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_encoder_attention_mask_ignores_padding(positions):
    torch.manual_seed(0)
    model = Encoder(EncoderConfig.named("tiny", vocab_size=V, positions=positions)).eval()
    a, b = ids(1, 12, 1), ids(1, 7, 2)
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, :7] = a[0], b[0]
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[0], mask[1, :7] = 1, 1
    with torch.no_grad():
        out = model(batch, attention_mask=mask)
        torch.testing.assert_close(out[0], model(a)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1, :7], model(b)[0], rtol=1e-5, atol=1e-5)
        batch[1, 7:] = 5  # other padding ids change nothing
        torch.testing.assert_close(model(batch, attention_mask=mask)[1, :7], out[1, :7])


@pytest.mark.parametrize("make", ["gpt", "encoder"])
def test_overfits_tiny_batch(make):
    torch.manual_seed(0)
    if make == "gpt":
        model = GPT(GPTConfig.named("tiny", vocab_size=V, max_seq_len=32))
        x = ids(4, 32, 5)
        inp, tgt = x[:, :-1], x[:, 1:]
    else:
        model = Encoder(EncoderConfig.named("tiny", vocab_size=V, max_seq_len=32))
        x = ids(4, 32, 5)
        g = torch.Generator().manual_seed(1)
        mask = torch.rand(x.shape, generator=g) < 0.3
        inp = x.masked_fill(mask, 0)
        tgt = x.masked_fill(~mask, -100)
    # the encoder is less stable at 1e-2 (masked rows only: few, noisy gradients)
    lr = 1e-2 if make == "gpt" else 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = None
    for _ in range(100):
        loss = model(inp, tgt)
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.1, (first, loss.item())


def test_bf16_autocast_loss_close_to_torch():
    torch.manual_seed(0)
    model = GPT(tiny())
    x, t = ids(2, 24, 1), ids(2, 24, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model(x, t)
        plain = model(x, t, kernels="torch")
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
    fused.backward()


def test_doctests():
    import doctest

    import fastlm.models.config as config
    import fastlm.models.encoder as encoder
    import fastlm.models.gpt as gpt
    for mod in (config, gpt, encoder):
        assert doctest.testmod(mod).failed == 0, mod.__name__


@pytest.mark.slow
def test_torch_compile_same_loss_and_grads():
    torch.manual_seed(0)
    model = GPT(tiny(n_kv_head=2))
    x, t = ids(2, 32, 1), ids(2, 32, 2)
    eager = model(x, t)
    eager.backward()
    g_eager = model.lm_head.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model)(x, t)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.lm_head.weight.grad, g_eager, rtol=1e-4, atol=1e-6)
