"""fastlm.train.evaluate: bits per byte and loss against hand computations, MLM accuracy."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig
from fastlm.tokenizer import Tokenizer
from fastlm.train.evaluate import evaluate_clm, evaluate_mlm, token_byte_lengths

torch.set_num_threads(1)


def _tok():
    return Tokenizer([bytes([b]) for b in range(256)] + [b" the", b"ing"],
                     special_tokens={"<|bos|>": 258, "<|mask|>": 259})


def test_token_byte_lengths():
    t = token_byte_lengths(_tok())
    assert t.shape == (260,) and t.dtype == torch.long
    assert t[:256].tolist() == [1] * 256
    assert t[256].item() == 4 and t[257].item() == 3
    assert t[258].item() == 0 and t[259].item() == 0


@pytest.mark.parametrize("kernels", ["fastlm", "torch"])
def test_clm_loss_and_bpb_by_hand(kernels):
    torch.manual_seed(0)
    tok = _tok()
    model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1, d_model=32, n_head=2))
    x = torch.randint(0, 260, (3, 12))
    y = torch.randint(0, 260, (3, 12))
    y[0, :4] = -100
    y[1, 5] = 258  # a special target: costs nats, adds no bytes
    lengths = token_byte_lengths(tok)
    r = evaluate_clm(model, [(x[:2], y[:2]), (x[2:], y[2:])], byte_lengths=lengths, kernels=kernels)
    with torch.no_grad():
        logits = model(x, kernels="torch").float()
    keep = y != -100
    nats = F.cross_entropy(logits[keep], y[keep], reduction="sum").item()
    n = int(keep.sum())
    n_bytes = int(lengths[y[keep]].sum())
    assert r["tokens"] == n
    assert r["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(nats / n), rel=1e-5)
    assert r["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert model.training  # mode restored


def test_clm_empty_refused():
    model = GPT(GPTConfig.named("tiny", vocab_size=64, n_layer=1, d_model=32, n_head=2))
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no target tokens"):
        evaluate_clm(model, [(x, torch.full_like(x, -100))], byte_lengths=torch.ones(64, dtype=torch.long))


def test_mlm_loss_accuracy():
    torch.manual_seed(0)
    model = Encoder(EncoderConfig.named("tiny", vocab_size=50, n_layer=1, d_model=32, n_head=2))
    x = torch.randint(0, 50, (2, 10))
    y = torch.full_like(x, -100)
    y[0, 1], y[0, 7], y[1, 3] = 4, 9, 11
    attn = torch.ones_like(x)
    r1 = evaluate_mlm(model, [(x, y)])
    r2 = evaluate_mlm(model, [{"input_ids": x, "labels": y, "attention_mask": attn}])
    with torch.no_grad():
        logits = model(x, kernels="torch")
    keep = y != -100
    loss = F.cross_entropy(logits[keep], y[keep]).item()
    acc = (logits[keep].argmax(-1) == y[keep]).float().mean().item()
    for r in (r1, r2):
        assert r["tokens"] == 3
        assert r["loss"] == pytest.approx(loss, rel=1e-5)
        assert r["accuracy"] == pytest.approx(acc)
    # a model that predicts the label is always right
    y2 = torch.full_like(x, -100)
    y2[keep] = logits[keep].argmax(-1)
    assert evaluate_mlm(model, [(x, y2)])["accuracy"] == 1.0
