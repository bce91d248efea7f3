"""Tests for `fastlm generate` and `fastlm eval` on checkpoints written with save_checkpoint: greedy output
against a no-cache reference, seeds, streaming of split UTF-8, MLM refusal; eval figures against a plain
cross-entropy reference, text == shards, tokenizer mismatch, --json, MLM accuracy."""
import json
import math
import os

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from fastlm.cli.main import main  # noqa: E402
from fastlm.config import from_dict  # noqa: E402
from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig, config_to_dict  # noqa: E402
from fastlm.models.generate import generate  # noqa: E402
from fastlm.tokenizer import Tokenizer  # noqa: E402
from fastlm.tokenizer.shards import TokenShardWriter, file_sha256  # noqa: E402
from fastlm.train.checkpoint import load_model, save_checkpoint  # noqa: E402
from fastlm.train.config import TrainConfig  # noqa: E402

torch.set_num_threads(1)
DOCS = ["The quick brown fox jumps over the lazy dog. " * 3,
        "Grüße aus Köln: naïve café, 日本語のテキスト. " * 2,
        "def f(x):\n    return x * 2  # doubled\n" * 4]
SPECIALS = ["<|bos|>", "<|mask|>", "<|pad|>"]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = Tokenizer.train_from_iterator(DOCS * 5, 320, special_tokens=SPECIALS)
    p = str(d / "tokenizer.fastlm")
    tok.save(p)
    return p


def _ckpt(root, tok_path, model, task):
    cfg = from_dict(TrainConfig, {"task": task, "data": {"seq_len": 16},
                                  "model": {"kernels": "torch"}})
    return save_checkpoint(str(root / "checkpoints"), 3, model_state=model.state_dict(),
                           optimizer_state=None,
                           meta={"model_config": config_to_dict(model.config),
                                 "train_config": cfg.to_dict()},
                           tokenizer_path=tok_path)


def _sharp_gpt(seed, max_seq_len):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=320, n_layer=2, n_head=2, d_model=32, max_seq_len=max_seq_len))
    with torch.no_grad():  # sharper distributions than the 0.02 init
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory, tok_path):
    root = tmp_path_factory.mktemp("clm")
    _ckpt(root, tok_path, _sharp_gpt(0, 32), "clm")
    return str(root)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, tok_path):
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, max_seq_len=32))
    root = tmp_path_factory.mktemp("mlm")
    _ckpt(root, tok_path, model, "mlm")
    return str(root)


def test_reward_model_checkpoints_are_refused(tmp_path, tok_path, capsys):
    """A RewardModel is a GPT subclass: generate sampled from its unused head, eval raised a TypeError."""
    from fastlm.models import RewardModel
    torch.manual_seed(0)
    model = RewardModel.from_gpt(GPT(GPTConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, max_seq_len=32)))
    _ckpt(tmp_path, tok_path, model, "reward")
    files = _text_files(tmp_path, DOCS[:1])
    for argv in (["generate", "--prompt", "x"], ["eval", files[0]], ["eval", "--task", "copy"]):
        assert main(argv + ["--ckpt", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastlm: error: ") and "reward" in err and "Traceback" not in err


def _shards(tmp_path, tok_path, docs, sha=None):
    tok = Tokenizer.from_file(tok_path)
    w = TokenShardWriter(str(tmp_path / "shards"), vocab_size=tok.n_vocab,
                         tokenizer_sha256=sha or file_sha256(tok_path))
    for d in docs:
        w.add([tok.special_id("<|bos|>")] + tok.encode_ordinary(d))
    w.close()
    return str(tmp_path / "shards")


def _text_files(tmp_path, docs):
    d = tmp_path / "text"
    d.mkdir()
    for i, t in enumerate(docs):
        (d / f"{i}.txt").write_text(t, encoding="utf-8")
    return [str(d / f"{i}.txt") for i in range(len(docs))]


# ------------------------------------------------------------------------------------------ generate

def test_generate_greedy_matches_reference(clm_run, capsys):
    model, tok, _ = load_model(clm_run)
    prompt = "The quick"
    ids = [tok.special_id("<|bos|>")] + tok.encode_ordinary(prompt)
    bos = tok.special_id("<|bos|>")
    ref = []
    for i in generate(model, ids, max_new_tokens=40, temperature=0, use_cache=False):
        if i == bos:
            break
        ref.append(i)
    assert main(["generate", "--ckpt", clm_run, "--prompt", prompt, "--temperature", "0",
                 "--max-tokens", "40", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert out.out == prompt + tok.decode(ref) + "\n"
    assert "tokens/s" in out.err and "step 3" in out.err


def test_generate_seeded_and_checkpoint_dir(clm_run, capsys):
    ckdir = os.path.join(clm_run, "checkpoints", "step-00000003")
    def args(seed):
        return ["generate", "--ckpt", ckdir, "--prompt", "def", "--max-tokens", "30", "--seed",
                str(seed), "--top-k", "50", "--top-p", "0.9", "--ignore-eos"]
    assert main(args(5)) == 0
    a = capsys.readouterr().out
    assert main(args(5)) == 0
    assert capsys.readouterr().out == a
    assert main(args(6)) == 0
    assert capsys.readouterr().out != a


def test_generate_streams_complete_characters(clm_run, capsys, monkeypatch):
    """A character split over byte tokens is printed once complete, never as U+FFFD pieces."""
    import fastlm.models.generate as g
    _, tok, _ = load_model(clm_run)
    byte_ids = [tok.token_to_id(bytes([b])) for b in "日本!".encode()]
    writes = []

    def fake(model, ids, **kw):
        yield from byte_ids

    monkeypatch.setattr(g, "generate", fake)
    import sys

    class Out:
        def write(self, s):
            writes.append(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Out())
    assert main(["generate", "--ckpt", clm_run, "--prompt", "x"]) == 0
    assert "".join(writes) == "x日本!\n"
    assert "日" in writes and "本" in writes and not any("\ufffd" in w for w in writes)


def test_generate_errors(mlm_run, clm_run, tmp_path, capsys):
    assert main(["generate", "--ckpt", mlm_run, "--prompt", "x"]) == 2
    assert "causal LM" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(tmp_path), "--prompt", "x"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert main(["generate", "--ckpt", clm_run, "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert main(["generate", "--ckpt", clm_run, "--no-bos"]) == 2  # said "the tokenizer has no <|bos|>"
    assert "the prompt is empty and --no-bos leaves no token" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- eval

def _reference_clm(model, tok, docs, seq_len, max_tokens=0):
    """Plain cross-entropy on logits over the <|bos|>-separated stream, rows of seq_len."""
    bos = tok.special_id("<|bos|>")
    s = torch.tensor([t for d in docs for t in [bos] + tok.encode_ordinary(d)])
    n = len(s) - 1 if not max_tokens else min(len(s) - 1, max_tokens)
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for a in range(0, n, seq_len):
            b = min(a + seq_len, n)
            logits = model(s[a:b][None], kernels="torch")[0]
            nats += float(F.cross_entropy(logits, s[a + 1:b + 1], reduction="sum"))
            nbytes += sum(0 if int(t) == bos else len(tok.token_bytes(int(t))) for t in s[a + 1:b + 1])
    return nats / n, nats / math.log(2) / nbytes, n


def test_eval_clm_shards_text_and_reference(clm_run, tok_path, tmp_path, capsys):
    model, tok, _ = load_model(clm_run)
    loss, bpb, n = _reference_clm(model, tok, DOCS, 16)
    shards = _shards(tmp_path, tok_path, DOCS)
    out = str(tmp_path / "r" / "eval.json")
    assert main(["eval", "--ckpt", clm_run, shards, "--json", out, "--batch", "3"]) == 0
    assert "bpb" in capsys.readouterr().out
    r = json.load(open(out))
    assert r["tokens"] == n and r["task"] == "clm" and r["seq_len"] == 16 and r["step"] == 3
    assert r["loss"] == pytest.approx(loss, rel=1e-5) and r["bpb"] == pytest.approx(bpb, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    # the same documents as text give the same figures
    out2 = str(tmp_path / "r2.json")
    assert main(["eval", "--ckpt", clm_run, *_text_files(tmp_path, DOCS), "--json", out2]) == 0
    r2 = json.load(open(out2))
    for k in ("loss", "bpb", "tokens"):
        assert r2[k] == pytest.approx(r[k], rel=1e-6)
    # --max-tokens and --seq-len
    loss7, _, n7 = _reference_clm(model, tok, DOCS, 8, max_tokens=37)
    assert main(["eval", "--ckpt", clm_run, shards, "--max-tokens", "37", "--seq-len", "8",
                 "--json", out2]) == 0
    r3 = json.load(open(out2))
    assert r3["tokens"] == n7 == 37 and r3["loss"] == pytest.approx(loss7, rel=1e-5)


def test_eval_errors(clm_run, tok_path, tmp_path, capsys):
    bad = _shards(tmp_path, tok_path, DOCS, sha="0" * 64)
    assert main(["eval", "--ckpt", clm_run, bad]) == 2
    assert "sha256" in capsys.readouterr().err
    files = _text_files(tmp_path, DOCS[:1])
    assert main(["eval", "--ckpt", clm_run, bad, files[0]]) == 2
    assert "mixes token shards" in capsys.readouterr().err
    assert main(["eval", "--ckpt", clm_run, files[0], "--seq-len", "64"]) == 2
    assert "max_seq_len" in capsys.readouterr().err
    assert main(["eval", "--ckpt", clm_run, str(tmp_path / "missing.txt")]) == 2


def test_eval_mlm(mlm_run, tok_path, tmp_path, capsys):
    from fastlm.train.batches import MLMMasker
    model, tok, _ = load_model(mlm_run)
    shards = _shards(tmp_path, tok_path, DOCS)
    out = str(tmp_path / "m.json")
    assert main(["eval", "--ckpt", mlm_run, shards, "--json", out, "--seed", "1", "--batch", "3"]) == 0
    assert "accuracy" in capsys.readouterr().out
    r = json.load(open(out))
    # reference: rows of 16 masked one at a time (as the trainer masks), plain cross-entropy
    bos = tok.special_id("<|bos|>")
    s = torch.tensor([t for d in DOCS for t in [bos] + tok.encode_ordinary(d)])
    masker = MLMMasker(tok, seed=1, mlm_probability=0.15)
    nats = correct = count = 0
    with torch.no_grad():
        for i, a in enumerate(range(0, len(s), 16)):
            x, y = masker(s[a:a + 16][None], torch.tensor([i]))
            keep = y != -100
            logits = model(x, kernels="torch")[keep]
            nats += float(F.cross_entropy(logits, y[keep], reduction="sum"))
            correct += int((logits.argmax(-1) == y[keep]).sum())
            count += int(keep.sum())
    assert r["task"] == "mlm" and r["tokens"] == count > 0
    assert r["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert r["accuracy"] == pytest.approx(correct / count)
    # the figures do not depend on --batch
    assert main(["eval", "--ckpt", mlm_run, shards, "--json", out, "--seed", "1", "--batch", "1"]) == 0
    assert json.load(open(out))["loss"] == pytest.approx(r["loss"], rel=1e-6)


@pytest.fixture(scope="module")
def chat_tok_path(tmp_path_factory):
    from fastlm.tokenizer.core import DEFAULT_SPECIALS
    p = str(tmp_path_factory.mktemp("chat-tok") / "tokenizer.fastlm")
    Tokenizer.train_from_iterator(DOCS * 5, 320, special_tokens=DEFAULT_SPECIALS).save(p)
    return p


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, chat_tok_path):
    root = tmp_path_factory.mktemp("sft")
    _ckpt(root, chat_tok_path, _sharp_gpt(1, 64), "sft")
    return str(root)


def test_generate_answers_as_the_assistant_for_chat_checkpoints(sft_run, capsys):
    """An sft/dpo/RL checkpoint: the prompt is a user turn in the chat template and the answer stops at
    <|assistant_end|> (before: the raw prompt was continued as a document, past the end of the answer);
    --no-chat gives the document continuation, --chat the chat form for any checkpoint."""
    from fastlm.tokenizer.chat_template import render_prompt
    model, tok, _ = load_model(sft_run)
    ids = render_prompt(tok, {"messages": [{"role": "user", "content": "hi"}]})
    end = tok.special_id("<|assistant_end|>")
    ref = []
    for i in generate(model, ids, max_new_tokens=30, temperature=0, use_cache=False):
        if i == end:
            break
        ref.append(i)
    base = ["generate", "--ckpt", sft_run, "--prompt", "hi", "--temperature", "0", "--max-tokens", "30",
            "--device", "cpu"]
    assert main(base) == 0
    assert capsys.readouterr().out == tok.decode(ref) + "\n"
    assert main(base + ["--no-chat"]) == 0
    assert capsys.readouterr().out.startswith("hi")


def test_eval_task_uses_the_runs_seed_by_default(sft_run, tmp_path):
    """eval --task draws the run's own held-out problems unless --seed says otherwise (it drew seed 0's,
    so a checkpoint's figures differed from its own run's)."""
    import json
    seed = load_model(sft_run)[2]["train_config"]["seed"]
    assert seed != 0
    for extra, want in (([], seed), (["--seed", "3"], 3)):
        out = str(tmp_path / f"e{len(extra)}.json")
        assert main(["eval", "--ckpt", sft_run, "--task", "copy", "--examples", "2", "--max-new-tokens", "2",
                     "--device", "cpu", "--json", out, *extra]) == 0
        with open(out) as f:
            assert json.load(f)["seed"] == want
