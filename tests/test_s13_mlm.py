"""Masked-LM audit: Encoder logits and hidden states vs the exported transformers model (ModernBERT,
MegatronBERT) on odd configurations, fp32 and fp64, with and without padding masks; mask_tokens /
MLMCollator vs the documented 80/10/10 recipe and transformers' collator; the MLM loss vs F.cross_entropy."""
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402

from fastlm.models import Encoder, EncoderConfig  # noqa: E402
from fastlm.models.export import export_hf, to_hf_model  # noqa: E402
from fastlm.train.collate import IGNORE_INDEX, MLMCollator, mask_tokens  # noqa: E402
from test_export import perturb  # noqa: E402  (non-trivial weights, so a swapped tensor shows)

torch.set_num_threads(2)
MODERN = dict(positions="rotary", mlp="swiglu", embed_norm=True)


def ids(shape, v, seed=0):
    return torch.randint(0, v, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- Encoder vs transformers

ENCODERS = {
    "modern-v41-1layer-tied": dict(MODERN, vocab_size=41, n_layer=1, n_head=2, d_model=16, max_seq_len=8),
    "modern-v41-3layer-untied": dict(MODERN, vocab_size=41, n_layer=3, n_head=4, d_model=32, max_seq_len=8,
                                     tie_embeddings=False),
    "modern-v50257": dict(MODERN, vocab_size=50257, n_layer=1, n_head=2, d_model=16, max_seq_len=12),
    "modern-headdim2": dict(MODERN, vocab_size=41, n_layer=2, n_head=8, d_model=16, max_seq_len=12),
    "modern-headdim128-gqa": dict(MODERN, vocab_size=41, n_layer=2, n_head=2, n_kv_head=1, d_model=256,
                                  max_seq_len=12),
    "modern-mqa-bias-theta3": dict(MODERN, vocab_size=97, n_layer=3, n_head=6, n_kv_head=1, d_model=36,
                                   bias=True, rope_theta=3.0, norm_eps=1e-3, max_seq_len=40),
    "modern-theta1e9-msl1": dict(MODERN, vocab_size=41, n_layer=1, n_head=1, d_model=8, rope_theta=1e9,
                                 max_seq_len=1, bias=True),
    "megatron-v41-1layer": dict(vocab_size=41, n_layer=1, n_head=2, d_model=16, max_seq_len=8),
    "megatron-gqa-bias-untied": dict(vocab_size=41, n_layer=3, n_head=4, n_kv_head=2, d_model=32, max_seq_len=8,
                                     tie_embeddings=False, bias=True, norm_eps=1e-12),
    "megatron-v50257-msl1": dict(vocab_size=50257, n_layer=1, n_head=1, d_model=8, max_seq_len=1),
}

# fp64 tolerance: MegatronBERT agrees to rounding; both ModernBERTs rotate q/k in fp32 (fastlm's apply_rotary
# and transformers' apply_rotary_pos_emb), each rounding differently (fastlm's product in fp32, theirs in
# fp64 of fp32 operands): ~1e-10, up to ~1e-7 at head dim 128.
TOL = {(torch.float32, False): 2e-5, (torch.float32, True): 2e-5,
       (torch.float64, False): 1e-11, (torch.float64, True): 1e-6}


def _pad_mask(b, t, side):
    mask = torch.ones(b, t, dtype=torch.long)
    for i in range(b):
        k = max(1, t - 1 - i)  # row i keeps k tokens (row 0 one pad, the last row the most)
        if side == "right":
            mask[i, k:] = 0
        else:
            mask[i, :t - k] = 0
    return mask


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_matches_transformers(name):
    torch.manual_seed(0)
    cfg = EncoderConfig(**ENCODERS[name])
    model = perturb(Encoder(cfg))
    hf = to_hf_model(model)
    modern = cfg.positions == "rotary"
    assert type(hf).__name__ == ("ModernBertForMaskedLM" if modern else "MegatronBertForMaskedLM")
    T, V = cfg.max_seq_len, cfg.vocab_size
    for dtype in (torch.float64, torch.float32):
        ours, theirs = model.to(dtype), hf.to(dtype)
        tol = TOL[(dtype, modern)]
        for b, t in {(1, 1), (1, T), (3, T), (2, min(5, T))}:
            x = ids((b, t), V, seed=10 * b + t)
            with torch.no_grad():
                torch.testing.assert_close(ours(x), theirs(input_ids=x).logits, rtol=tol, atol=tol)
                torch.testing.assert_close(ours.hidden_states(x),
                                           theirs.base_model(input_ids=x).last_hidden_state, rtol=tol, atol=tol)
                for side in ("right", "left") if t > 1 else ():
                    mask = _pad_mask(b, t, side)
                    keep = mask.bool()
                    a = ours(x, attention_mask=mask)
                    h = theirs(input_ids=x, attention_mask=mask).logits
                    assert torch.isfinite(a[keep]).all()
                    torch.testing.assert_close(a[keep], h[keep], rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids((1, T + 1), V))


@pytest.mark.parametrize("kw", [dict(MODERN, n_kv_head=1, tie_embeddings=False), dict(bias=True)],
                         ids=["modernbert", "megatron"])
def test_exported_directory_matches_fp64(kw, tmp_path):
    """The written directory (config.json + safetensors, from_pretrained) gives the same logits in fp64."""
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=41, n_layer=3, n_head=2, d_model=8, max_seq_len=6, **kw)
    model = perturb(Encoder(cfg)).double()
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(export_hf(model.float(), None, str(tmp_path / "hf")),
                                                                 output_loading_info=True)
    assert not any(info.values()), info
    hf, model = hf.eval().double(), model.double()
    x = ids((2, 6), 41, seed=3)
    mask = _pad_mask(2, 6, "left")
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(input_ids=x).logits, rtol=1e-6, atol=1e-6)
        a, h = model(x, attention_mask=mask), hf(input_ids=x, attention_mask=mask).logits
    torch.testing.assert_close(a[mask.bool()], h[mask.bool()], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------- masking

V, MASK, PAD, CLS, SEP = 1000, 3, 0, 1, 2
SPECIALS = [CLS, SEP, MASK]


def big_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(10, V, (128, 512), generator=g)
    x[:, 0] = CLS
    x[:, ::37] = SEP
    x[64:, -50:] = PAD
    return x


def word_table(seed=0):
    ws = torch.rand(V, generator=torch.Generator().manual_seed(seed)) < 0.4  # ~2.5 tokens a word
    ws[:10] = True
    return ws


@pytest.mark.parametrize("whole_word", [False, True], ids=["token", "whole-word"])
@pytest.mark.parametrize("p,mr,rr", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3), (1.0, 0.0, 1.0), (0.5, 1.0, 0.0),
                                     (0.2, 0.0, 0.0), (0.0, 0.8, 0.1)])
def test_mask_rates_and_labels(whole_word, p, mr, rr):
    x0 = big_batch()
    ws = word_table() if whole_word else None
    x, y = mask_tokens(x0, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, pad_id=PAD, mlm_probability=p,
                       mask_replace_prob=mr, random_replace_prob=rr, word_start=ws,
                       generator=torch.Generator().manual_seed(5))
    maskable = ~torch.isin(x0, torch.tensor([PAD, *SPECIALS]))
    chosen = y != IGNORE_INDEX
    assert not (chosen & ~maskable).any()             # specials and padding never chosen
    assert torch.equal(y[chosen], x0[chosen])          # labels: the original ids, -100 exactly elsewhere
    assert torch.equal(x[~chosen], x0[~chosen])        # nothing else changes
    m, n = int(maskable.sum()), int(chosen.sum())
    # whole words: each word is one draw, so the token share varies more (words average ~2.5 tokens)
    spread = 4 * math.sqrt(p * (1 - p) / m) * (2 if whole_word else 1)
    assert abs(n / m - p) <= spread + 1e-12
    if n == 0:
        return
    to_mask = (x[chosen] == MASK).float().mean().item()
    to_rand = ((x[chosen] != MASK) & (x[chosen] != x0[chosen])).float().mean().item()
    keep = 1.0 - mr - rr
    # a random id can equal the original (1/V) or be the mask id (1/V): within the tolerance
    for got, want in ((to_mask, mr), (to_rand, rr), (1.0 - to_mask - to_rand, keep)):
        assert abs(got - want) <= 4 * math.sqrt(max(want * (1 - want), 1e-4) / n) + 2.0 / V
    rnd = x[chosen][(x[chosen] != MASK) & (x[chosen] != x0[chosen])]
    assert ((rnd >= 0) & (rnd < V)).all()
    if whole_word:  # a word is chosen whole or not at all
        starts = ws[x0] | torch.roll(~maskable, 1, dims=-1)
        starts[:, 0] = True
        wid = torch.cumsum(starts.long(), -1)
        for r in range(0, 128, 17):
            for w in wid[r][maskable[r]].unique():
                c = chosen[r][(wid[r] == w) & maskable[r]]
                assert c.all() or not c.any()


@pytest.mark.parametrize("mr,rr", [(0.8, 0.1), (0.5, 0.3), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)])
def test_same_draws_as_transformers(mr, rr):
    """For the same generator state, mask_tokens gives transformers' torch_mask_tokens output exactly."""
    from tokenizers import Tokenizer as HFTok, models
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast
    vocab = {f"t{i}": i for i in range(V)}
    for tok, i in (("[PAD]", PAD), ("[CLS]", CLS), ("[SEP]", SEP), ("[MASK]", MASK), ("[UNK]", 4)):
        del vocab[f"t{i}"]
        vocab[tok] = i
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=HFTok(models.WordLevel(vocab, unk_token="[UNK]")),
                                     pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                     unk_token="[UNK]")
    coll = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.3, mask_replace_prob=mr, random_replace_prob=rr)
    x0 = big_batch(1)[:16, :64]
    special = torch.isin(x0, torch.tensor([PAD, CLS, SEP, MASK, 4]))
    coll.generator = torch.Generator().manual_seed(7)
    hx, hy = coll.torch_mask_tokens(x0.clone(), special_tokens_mask=special)
    x, y = mask_tokens(x0, mask_token_id=MASK, vocab_size=len(hf_tok), special_ids=[CLS, SEP, MASK, 4], pad_id=PAD,
                       mlm_probability=0.3, mask_replace_prob=mr, random_replace_prob=rr,
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, hx) and torch.equal(y, hy)


def test_deterministic_by_seed():
    x0, ws = big_batch()[:8], word_table()
    for word in (None, ws):
        def run(seed):
            return mask_tokens(x0, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, pad_id=PAD, word_start=word,
                               generator=torch.Generator().manual_seed(seed))
        a, b, c = run(3), run(3), run(4)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    ex = [[CLS, 11, 12, 13, SEP], [CLS, 20, SEP], [CLS, 30, 31, 32, 33, 34, SEP]] * 10
    c1, c2 = (MLMCollator(mask_token_id=MASK, pad_id=PAD, vocab_size=V, special_ids=SPECIALS, word_start=ws, seed=9)
              for _ in range(2))
    o1, o2 = c1(ex), c2(ex)
    assert all(torch.equal(o1[k], o2[k]) for k in o1)
    o3 = c1(ex)  # the collator's generator moves on: the next batch is masked differently
    assert not torch.equal(o1["labels"], o3["labels"])
    pad = o1["attention_mask"] == 0
    assert (o1["input_ids"][pad] == PAD).all() and (o1["labels"][pad] == IGNORE_INDEX).all()


def test_odd_inputs_give_correct_output():
    kw = dict(mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, pad_id=PAD, mask_replace_prob=1.0,
              random_replace_prob=0.0)
    ws = word_table()
    for word in (None, ws):
        everything_special = torch.tensor([[CLS, SEP, MASK, PAD, SEP]])
        x, y = mask_tokens(everything_special, mlm_probability=1.0, word_start=word, **kw)
        assert torch.equal(x, everything_special) and (y == IGNORE_INDEX).all()
        one = torch.tensor([[17]])
        x, y = mask_tokens(one, mlm_probability=1.0, word_start=word, **kw)
        assert x.tolist() == [[MASK]] and y.tolist() == [[17]]
        x, y = mask_tokens(one, mlm_probability=0.0, word_start=word, **kw)
        assert x.tolist() == [[17]] and y.tolist() == [[IGNORE_INDEX]]
        x, y = mask_tokens(torch.tensor([17, 18, SEP, 19]), mlm_probability=1.0, word_start=word, **kw)  # 1-D
        assert x.tolist() == [MASK, MASK, SEP, MASK] and y.tolist() == [17, 18, IGNORE_INDEX, 19]
        for empty in (torch.zeros(0, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.long)):
            x, y = mask_tokens(empty, word_start=word, **kw)
            assert x.shape == y.shape == empty.shape
    out = MLMCollator(mask_token_id=MASK, pad_id=PAD, vocab_size=V, word_start=ws, seed=0)([[], [17]])
    assert out["attention_mask"].tolist() == [[0], [1]] and out["labels"][0].tolist() == [IGNORE_INDEX]


def test_whole_words_in_3d_input_match_flattened_rows():
    """A (B, T1, T2) input masks as its B * T1 rows (each row drew its own words); it crashed in gather."""
    x0 = big_batch()[:6, :40]
    kw = dict(mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, pad_id=PAD, word_start=word_table(),
              mlm_probability=0.4)
    x, y = mask_tokens(x0.view(2, 3, 40), generator=torch.Generator().manual_seed(1), **kw)
    fx, fy = mask_tokens(x0, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(x.view(6, 40), fx) and torch.equal(y.view(6, 40), fy)


@pytest.mark.parametrize("kw,needle", [
    (dict(mask_replace_prob=-0.5), "mask_replace_prob"),
    (dict(mask_replace_prob=1.5, random_replace_prob=-0.6), "mask_replace_prob"),
    (dict(random_replace_prob=-0.1), "random_replace_prob"),           # was taken as 0
    (dict(random_replace_prob=float("nan")), "random_replace_prob"),   # was taken as 0
    (dict(mask_replace_prob=float("nan")), "mask_replace_prob"),
    (dict(mlm_probability=True), "mlm_probability"),
    (dict(mlm_probability=1.5), "mlm_probability"),
    (dict(mask_replace_prob=0.9, random_replace_prob=0.2), "must not exceed 1"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(mask_token_id=-1), "mask_token_id"),
    (dict(input_ids=torch.tensor([[5.7, 6.0]])), "integer token ids"),   # was truncated to 5
    (dict(input_ids=torch.tensor([[True, False]])), "integer token ids"),
    (dict(input_ids=torch.tensor([[-100, 6]])), "negative id"),          # masked with label -100
])
def test_bad_settings_refused_by_name(kw, needle):
    args = dict(input_ids=torch.tensor([[5, 6, 7, 8]]), mask_token_id=1, vocab_size=50, mlm_probability=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=needle):
        mask_tokens(args.pop("input_ids"), **args)


def test_collator_refusals():
    with pytest.raises(ValueError, match="no examples"):
        MLMCollator(mask_token_id=MASK, pad_id=PAD, vocab_size=V)([])
    with pytest.raises(ValueError, match="random_replace_prob"):  # at construction, not the first batch
        MLMCollator(mask_token_id=MASK, pad_id=PAD, vocab_size=V, random_replace_prob=-1.0)


# ---------------------------------------------------------------------------------------- MLM loss

@pytest.mark.parametrize("kernels", ["fastlm", "torch"])
@pytest.mark.parametrize("cfg_kw", [dict(vocab_size=41), dict(MODERN, vocab_size=50257, tie_embeddings=False)],
                         ids=["megatron-v41", "modern-v50257"])
def test_mlm_loss_matches_cross_entropy(kernels, cfg_kw):
    from fastlm.posttrain.objective import LMObjective
    torch.manual_seed(0)
    cfg = EncoderConfig(n_layer=1, n_head=2, d_model=16, max_seq_len=32, **cfg_kw)
    Vc = cfg.vocab_size
    model = perturb(Encoder(cfg)).train()
    x0 = ids((3, 32), Vc, seed=1)
    x, y = mask_tokens(x0, mask_token_id=0, vocab_size=Vc, mlm_probability=0.3, generator=torch.Generator().manual_seed(2))
    obj = object.__new__(LMObjective)  # loss() reads nothing of the objective's data
    loss_sum, n, extra = obj.loss(model, (x, y), kernels=kernels)
    assert n == float((y != IGNORE_INDEX).sum()) > 0 and extra == {}
    logits = model(x).double()
    ref = F.cross_entropy(logits.view(-1, Vc), y.view(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(loss_sum.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x, y, kernels=kernels).double(), ref / n, rtol=1e-5, atol=1e-6)
    ref_none = F.cross_entropy(logits.view(-1, Vc), y.view(-1), ignore_index=IGNORE_INDEX, reduction="none")
    torch.testing.assert_close(model(x, y, kernels=kernels, reduction="none").double(), ref_none.view(3, 32),
                               rtol=1e-5, atol=1e-5)
    # gradients of the summed loss
    model.zero_grad()
    loss_sum.backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x).view(-1, Vc), y.view(-1), ignore_index=IGNORE_INDEX, reduction="sum").backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, rtol=1e-4, atol=1e-5, msg=k)
    # nothing masked: a zero loss with a graph, and zero units
    none_masked = torch.full_like(y, IGNORE_INDEX)
    loss_sum, n, _ = obj.loss(model, (x, none_masked), kernels=kernels)
    assert loss_sum.item() == 0.0 and n == 0.0 and loss_sum.requires_grad
