"""MLM masking (rates, specials, labels, determinism, vs transformers), SFT padding, packing, block mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastlm.train.collate import (IGNORE_INDEX, MLMCollator, block_causal_mask, mask_tokens, pack, pad_collate,
                                  word_start_table)

V, MASK, PAD, CLS, SEP = 500, 3, 0, 1, 2
SPECIALS = [CLS, SEP, MASK]


def batch(n=64, t=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, V, (n, t), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[:, 100] = SEP
    ids[n // 2:, -30:] = PAD
    return ids


def rates(ids, x, y):
    maskable = ~(ids == PAD) & ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = y != IGNORE_INDEX
    n = chosen.sum().item()
    return (maskable, chosen, n / maskable.sum().item(), (x[chosen] == MASK).float().mean().item(),
            (x[chosen] == ids[chosen]).float().mean().item())


def test_mask_rates_labels_specials():
    ids = batch()
    x, y = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, pad_id=PAD,
                       generator=torch.Generator().manual_seed(1))
    maskable, chosen, p, p_mask, p_same = rates(ids, x, y)
    m = maskable.sum().item()
    assert abs(p - 0.15) < 4 * math.sqrt(0.15 * 0.85 / m)
    nc = chosen.sum().item()
    assert abs(p_mask - 0.8) < 4 * math.sqrt(0.16 / nc)
    # unchanged: 10% kept + random hits of the same id (1/V of the 10%)
    assert abs(p_same - (0.1 + 0.1 / V)) < 4 * math.sqrt(0.09 / nc)
    assert not (chosen & ~maskable).any()                       # specials and padding never chosen
    assert torch.equal(x[~chosen], ids[~chosen])                 # only chosen positions change
    assert torch.equal(y[chosen], ids[chosen])                   # labels = original ids
    assert (y[~chosen] == IGNORE_INDEX).all()
    rnd = chosen & (x != MASK) & (x != ids)
    assert rnd.any() and (x[rnd] >= 0).all() and (x[rnd] < V).all()


def test_mask_deterministic():
    ids = batch()
    a = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, generator=torch.Generator().manual_seed(9))
    b = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, generator=torch.Generator().manual_seed(9))
    c = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIALS, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    col1 = MLMCollator(mask_token_id=MASK, pad_id=PAD, vocab_size=V, special_ids=SPECIALS, seed=4)
    col2 = MLMCollator(mask_token_id=MASK, pad_id=PAD, vocab_size=V, special_ids=SPECIALS, seed=4)
    ex = [[CLS, 11, 12, 13, SEP], [CLS, 20, SEP]] * 20
    o1, o2 = col1(ex), col2(ex)
    assert all(torch.equal(o1[k], o2[k]) for k in o1)
    assert (o1["labels"][o1["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (o1["input_ids"][o1["attention_mask"] == 0] == PAD).all()


def test_same_as_transformers_collator():
    """Same RNG draws as transformers' torch_mask_tokens: identical output for the same generator state,
    and matching rate statistics over many batches."""
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling
    from tokenizers import Tokenizer as HFTok, models
    vocab = {f"t{i}": i for i in range(V)}
    vocab.update({"[PAD]": PAD, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK, "[UNK]": 4})
    inv = {i: s for s, i in vocab.items()}
    vocab = {inv[i]: i for i in range(V)}
    hf = BertTokenizerFast(tokenizer_object=HFTok(models.WordLevel(vocab, unk_token="[UNK]")),
                           pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                           unk_token="[UNK]")
    assert len(hf) == V
    coll = DataCollatorForLanguageModeling(hf, mlm_probability=0.15)
    ids = batch(32, 128)
    special = torch.isin(ids, torch.tensor([PAD, CLS, SEP, MASK, 4]))
    g = torch.Generator().manual_seed(123)
    coll.generator = g
    hx, hy = coll.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
    x, y = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=[CLS, SEP, MASK, 4], pad_id=PAD,
                       generator=torch.Generator().manual_seed(123))
    assert torch.equal(x, hx) and torch.equal(y, hy)
    # statistics over several batches (independent seeds) agree within tolerance
    ours, theirs = [], []
    for s in range(5):
        ids = batch(32, 128, seed=s)
        special = torch.isin(ids, torch.tensor([PAD, CLS, SEP, MASK, 4]))
        coll.generator = torch.Generator().manual_seed(1000 + s)
        theirs.append(rates(ids, *coll.torch_mask_tokens(ids.clone(), special_tokens_mask=special))[2:])
        ours.append(rates(ids, *mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=[CLS, SEP, MASK, 4],
                                            pad_id=PAD, generator=torch.Generator().manual_seed(2000 + s)))[2:])
    for k, tol in zip(range(3), (0.005, 0.02, 0.02)):
        assert abs(sum(o[k] for o in ours) / 5 - sum(t[k] for t in theirs) / 5) < tol


def test_whole_word_masking():
    from fastlm.tokenizer import Tokenizer
    tok = Tokenizer([bytes([b]) for b in range(256)] + [b" t", b" th", b" the", b"at"],
                    special_tokens={"<|mask|>": 260, "<|pad|>": 261})
    ws = word_start_table(tok)
    assert ws[258] and ws[ord(" ")] and ws[260] and not ws[ord("a")] and not ws[259]
    assert 258 in tok.encode(" the cat")
    g = torch.Generator().manual_seed(0)
    text = " the cats sat on the mat and the dogs ran far away" * 40
    ids = torch.tensor([tok.encode(text)] * 16)
    x, y = mask_tokens(ids, mask_token_id=260, vocab_size=tok.n_vocab, special_ids=[260, 261], pad_id=261,
                       word_start=ws, generator=g)
    chosen = y != IGNORE_INDEX
    starts = ws[ids]
    # a word is fully chosen or not at all
    for r in range(ids.shape[0]):
        word = torch.cumsum(starts[r].long(), 0)
        for w in word.unique():
            c = chosen[r][word == w]
            assert c.all() or not c.any()
    n_words = starts.sum().item()
    p_words = (chosen & starts).sum().item() / n_words
    assert abs(p_words - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n_words)
    assert torch.equal(y[chosen], ids[chosen])


def test_pad_collate_right_left():
    ex = [([1, 5, 6, 7], [0, 0, 1, 1]), ([1, 8], [0, 1]), ([1, 9, 9], [0, 0, 0])]
    r = pad_collate(ex, pad_id=0)
    assert r["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 0, 0], [1, 9, 9, 0]]
    assert r["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100], [-100] * 4]
    assert r["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    l = pad_collate(ex, pad_id=0, side="left", pad_to_multiple_of=8)
    assert l["input_ids"].shape == (3, 8)
    assert l["input_ids"][1].tolist() == [0] * 6 + [1, 8] and l["labels"][1].tolist() == [-100] * 6 + [8, -100]
    assert l["position_ids"][1].tolist() == [0] * 6 + [0, 1]
    with pytest.raises(ValueError):
        pad_collate(ex, pad_id=0, side="middle")
    with pytest.raises(ValueError):
        pad_collate([([1, 2], [1])], pad_id=0)


def test_pad_collate_chat_template():
    from fastlm.tokenizer import Tokenizer
    from fastlm.tokenizer.chat_template import CHAT_SPECIALS, render_conversation
    tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})
    ex = [render_conversation(tok, {"instruction": "hi", "output": "yo"}),
          render_conversation(tok, {"instruction": "what is up", "output": "not much"})]
    out = pad_collate(ex, pad_id=0)
    for i, (ids, mask) in enumerate(ex):
        assert mask[0] == 0 and sum(mask) > 0
        targets = [t for t, m in zip(ids, mask) if m]
        assert out["labels"][i][out["labels"][i] != -100].tolist() == targets
        assert out["labels"][i, :len(ids) - 1].tolist() == [t if m else -100 for t, m in zip(ids[1:], mask[1:])]


def test_pack_and_block_mask_attention():
    g = torch.Generator().manual_seed(0)
    lens = [5, 9, 3, 12, 7, 2, 16, 4]
    ex = [(torch.randint(5, 100, (n,), generator=g).tolist(), [0] + [1] * (n - 1)) for n in lens]
    out = pack(ex, 16, pad_id=0)
    ids, doc, pos, lab = out["input_ids"], out["doc_ids"], out["position_ids"], out["labels"]
    assert ids.shape[1] == 16
    assert math.isclose(out["padding_fraction"], 1 - sum(lens) / ids.numel())
    for j, (e, m) in enumerate(ex):                                  # every example placed once, intact
        sel = doc == j
        assert sel.sum().item() == len(e) and ids[sel].tolist() == e
        assert pos[sel].tolist() == list(range(len(e)))
        assert lab[sel].tolist() == e[1:] + [-100]
    assert (lab[doc < 0] == -100).all() and (ids[doc < 0] == 0).all()

    mask = block_causal_mask(doc)
    b, t, h, d = ids.shape[0], 16, 2, 8
    q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    w = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    other = (doc.unsqueeze(-1) != doc.unsqueeze(-2)).unsqueeze(1).expand_as(w)
    assert (w[other] == 0).all()                                     # no weight on other examples / padding
    assert not torch.isnan(w).any()
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for r in range(b):                                               # same as attending to each example alone
        for j in doc[r].unique().tolist():
            if j < 0:
                continue
            sel = (doc[r] == j).nonzero().squeeze(1)
            alone = F.scaled_dot_product_attention(q[r:r + 1, :, sel], k[r:r + 1, :, sel], v[r:r + 1, :, sel],
                                                   is_causal=True)
            torch.testing.assert_close(o[r:r + 1, :, sel], alone)


def test_pack_truncation_and_waste():
    out = pack([([1] * 20, [1] * 20), ([2] * 3, [1] * 3)], 8)
    assert out["n_truncated"] == 1 and out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0].tolist() == [1] * 8
    assert out["padding_fraction"] == pytest.approx(5 / 16)
    with pytest.raises(ValueError, match="more than seq_len"):
        pack([([1] * 20, [1] * 20)], 8, truncate=False)
    tight = pack([([1] * 4, [1] * 4)] * 4, 8)
    assert tight["padding_fraction"] == 0.0 and tight["input_ids"].shape == (2, 8)
