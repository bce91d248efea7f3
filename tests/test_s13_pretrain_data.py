"""Pretraining data path on odd corpora, against plain-Python references: the rows a run trains on (packed and
random windows, every corpus shape and seq_len edge), the validation hold-out (its size is the share
val_fraction says), val loss / perplexity / bits per byte of a real run recomputed with F.cross_entropy, and
fastlm-train's reports on user inputs (folders, gz/zst, malformed JSONL, invalid UTF-8: every record counted,
the bad ones named by file:line)."""
import gzip
import json
import math
import os

import numpy as np
import pytest
import torch

from corpora import PYDOC
from train_fixtures import make_shards, tiny_config

from fastlm.config import from_dict
from fastlm.tokenizer import Tokenizer
from fastlm.tokenizer.shards import TokenShardWriter, encode_to_shards
from fastlm.train import prepare as prep
from fastlm.train.config import TrainConfig
from fastlm.train.data import GlobalRows, PackedBatches, RandomRows, TokenDataset, holdout_split

torch.set_num_threads(1)


def shards(tmp_path, docs, *, shard_tokens=10**8):
    w = TokenShardWriter(str(tmp_path), vocab_size=1000, tokenizer_sha256="x", shard_tokens=shard_tokens)
    for d in docs:
        w.add(np.asarray(d, dtype=np.int64))
    return TokenDataset(w.close())


def reference_rows(docs, subset, seq_len, n, *, seed, shuffle):
    """The documented windows: the subset's documents concatenated in the epoch's order ((seed, epoch)
    permutation, or file order), epochs back to back; row i = stream[i T : i T + T + 1]."""
    stream, epoch = [], 0
    while len(stream) < n * seq_len + 1:
        order = np.random.default_rng([seed, epoch]).permutation(subset) if shuffle else subset
        for d in order:
            stream += list(docs[d])
        epoch += 1
    return torch.tensor([stream[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])


_rng = np.random.default_rng(0)
CORPORA = {
    "one huge document": [list(_rng.integers(0, 1000, 4000))],
    "thousands of 1-token documents": [[int(t)] for t in _rng.integers(0, 1000, 2000)],
    "short, long and empty documents": [list(_rng.integers(0, 1000, int(n))) for n in _rng.integers(0, 300, 80)],
}


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("seq_len", [1, 7, 129])
@pytest.mark.parametrize("shuffle", [True, False])
def test_packed_rows_are_the_documented_windows(tmp_path, name, seq_len, shuffle):
    docs = CORPORA[name]
    ds = shards(tmp_path, docs, shard_tokens=333)  # documents spread over several shards
    train, _ = holdout_split(len(docs), 0.1) if len(docs) > 1 else (np.arange(1), None)
    n_train = sum(len(docs[d]) for d in train)
    n = min(60, 2 * n_train // seq_len + 2)  # past the first epoch
    it = PackedBatches(ds, batch=1, seq_len=seq_len, seed=11, shuffle=shuffle, docs=train)
    got = [it.next_rows(k) for k in (1, 2, 5, n - 8)]  # reads of any size continue the same stream
    x, y = torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])
    want = reference_rows(docs, train, seq_len, n, seed=11, shuffle=shuffle)
    assert torch.equal(x, want[:, :-1]) and torch.equal(y, want[:, 1:])
    if y.numel() >= n_train:  # the first epoch's targets: every train token once, less the very first
        from collections import Counter
        first = int(x[0, 0])
        assert Counter(y.flatten()[:n_train - 1].tolist()) + Counter([first]) == Counter(
            sum((docs[d] for d in train), []))


def test_a_corpus_shorter_than_one_row_is_refused(tmp_path):
    ds = shards(tmp_path, [[1, 2, 3], [4, 5]])
    # packed rows used to wrap around the epochs: a 33-token row of a 5-token corpus held it 6 times over
    with pytest.raises(ValueError, match="hold 5 tokens, fewer than seq_len \\+ 1 = 33"):
        PackedBatches(ds, batch=1, seq_len=32)
    with pytest.raises(ValueError, match="hold 5 tokens, fewer than seq_len \\+ 1 = 33"):
        RandomRows(ds, seq_len=32)
    x, y = PackedBatches(ds, batch=3, seq_len=4, shuffle=False).next_rows(3)  # smaller than a batch: epochs
    assert x.tolist() == [[1, 2, 3, 4], [5, 1, 2, 3], [4, 5, 1, 2]] and y[:, -1].tolist() == [5, 4, 3]


@pytest.mark.parametrize("seq_len", [1, 16])
def test_random_rows_are_seeded_windows_of_the_train_documents(tmp_path, seq_len):
    docs = CORPORA["short, long and empty documents"]
    ds = shards(tmp_path, docs, shard_tokens=500)
    train, _ = holdout_split(len(docs), 0.25)
    stream = sum((docs[d] for d in train), [])
    g = GlobalRows(RandomRows(ds, seq_len=seq_len, seed=4, docs=train))
    g.take(6)
    x, y, ids = g.take(6, rank=1, world_size=2)  # global rows 9, 10, 11
    starts = [int(np.random.default_rng([4, i]).integers(0, len(stream) - seq_len)) for i in ids.tolist()]
    want = torch.tensor([stream[s:s + seq_len + 1] for s in starts])
    assert ids.tolist() == [9, 10, 11] and torch.equal(x, want[:, :-1]) and torch.equal(y, want[:, 1:])


@pytest.mark.parametrize("n_docs", [2, 3, 10, 101, 1000])
@pytest.mark.parametrize("fraction", [0.001, 0.02, 0.1, 0.25, 0.3, 0.4, 0.6, 0.7, 0.9, 0.99, 1.0])
def test_the_hold_out_is_the_share_val_fraction_says(n_docs, fraction):
    train, val = holdout_split(n_docs, fraction)
    # round(1/f)-th documents held out 50% for f=0.4 (and for 0.6) and 99% for f=0.7
    assert len(val) == min(max(1, math.floor(n_docs * fraction + 1e-9)), n_docs - 1)
    assert sorted(train.tolist() + val.tolist()) == list(range(n_docs)) and not set(train) & set(val)
    if len(val) > 1 and fraction < 1:  # evenly spread: gaps differ by at most one document
        gaps = np.diff(val)
        assert gaps.max() - gaps.min() <= 1
    k = round(1 / fraction)
    if abs(k * fraction - 1) < 1e-12 and k <= n_docs and k > 1:  # 1/k: every k-th document, as before
        assert val.tolist() == list(range(k - 1, n_docs, k))
    assert holdout_split(n_docs, 0.0)[1].size == 0


def test_val_metrics_are_cross_entropy_of_the_val_rows_with_the_final_weights(tmp_path):
    from fastlm.models import build_model, model_config_for
    from fastlm.train.checkpoint import load_checkpoint
    from fastlm.train.trainer import run

    root = str(tmp_path / "data")
    cfg = tiny_config(root, str(tmp_path / "out"), max_steps=5, log_every=2, eval_tokens=200,
                      optim={"warmup_steps": 1})
    res = run(cfg, console=False)
    ck = load_checkpoint(res.checkpoint)
    model = build_model(model_config_for("clm", "tiny", cfg.model.overrides,
                                         vocab_size=ck.meta["model_config"]["vocab_size"]))
    model.load_state_dict(ck.model_state)
    model.eval()
    tok_file, shard_dir = make_shards(root)
    tok, ds = Tokenizer.from_file(tok_file), TokenDataset(shard_dir)
    _, val = holdout_split(ds.n_docs, cfg.data.val_fraction)
    stream = np.concatenate([ds.document(int(d)) for d in val])  # val documents in file order, packed
    T = cfg.data.seq_len
    n = min(math.ceil(cfg.eval_tokens / T), (stream.size - 1) // T)
    rows = torch.tensor(np.stack([stream[i * T:i * T + T + 1] for i in range(n)]))
    x, y = rows[:, :-1], rows[:, 1:]
    with torch.no_grad():
        logits = model(x, kernels="torch").float()
    nats = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                   reduction="sum"))
    specials = set(tok.special_tokens.values())  # a separator costs bits but stands for no bytes
    n_bytes = sum(0 if t in specials else len(tok.token_bytes(t)) for t in y.flatten().tolist())
    assert res.val["loss"] == pytest.approx(nats / y.numel(), rel=1e-5)
    assert res.val["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert res.val["ppl"] == pytest.approx(math.exp(res.val["loss"]), rel=1e-9)
    logged = [json.loads(line) for line in open(os.path.join(res.run_dir, "metrics.jsonl"))]
    steps = [r for r in logged if "tokens" in r]
    per_step = cfg.micro_batch * T
    assert [(r["step"], r["tokens"]) for r in steps] == [(2, 2 * per_step), (4, 4 * per_step), (5, 5 * per_step)]
    assert all(r["tokens_per_s"] > 0 for r in steps)


def test_bytes_of_a_documents_tokens_are_its_utf8_bytes_in_any_script(tmp_path):
    from fastlm.train.evaluate import token_byte_lengths

    texts = ["Съешь же ещё этих мягких французских булок, да выпей чаю.", "日本語のテキスト、絵文字 🙂🙂 も。",
             "naïve café <|bos|> déjà vu", PYDOC["assert"][:500]]
    tok = Tokenizer.train_from_iterator(texts * 3, 300)  # few merges: characters split across tokens
    encode_to_shards(tok, texts, str(tmp_path), tokenizer_sha256="x", separator_id=tok.special_tokens["<|bos|>"])
    ds, lengths = TokenDataset(str(tmp_path)), token_byte_lengths(tok)
    for i, text in enumerate(texts):
        ids = torch.from_numpy(ds.document(i))
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # <|bos|>: 0 bytes; literal text: its bytes


@pytest.fixture()
def user_inputs(tmp_path):
    """Natural documents (pydoc topics) in every input kind, with malformed records among them."""
    zstandard = pytest.importorskip("zstandard")
    docs = [t for _, t in sorted(PYDOC.items()) if len(t.split()) >= 150][:14]
    d = tmp_path / "in"
    (d / "folder").mkdir(parents=True)
    for i in range(3):
        (d / "folder" / f"d{i}.txt").write_text(docs[i], encoding="utf-8")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs[3:5])
    (d / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": t}) + "\n" for t in docs[5:7]).encode()))
    (d / "bad.jsonl").write_text("\n".join([json.dumps({"text": docs[7]}), "{not json", json.dumps({"text": 5}),
                                            json.dumps({"content": docs[8]}), json.dumps({"text": docs[9]})]) + "\n")
    (d / "bad.txt").write_bytes(docs[10].encode() + b"\xff" + docs[11].encode())
    return [str(d / p) for p in ("folder", "c.jsonl.gz", "z.jsonl.zst", "bad.jsonl", "bad.txt")]


def test_fastlm_train_reports_every_dropped_record(tmp_path, user_inputs):
    cfg = from_dict(TrainConfig, {"out": str(tmp_path / "runs"), "data": {"text": user_inputs, "vocab_size": 300}})
    lines = []
    got = prep.prepare_data(cfg, log=lines.append)
    with open(os.path.join(got.cache_dir, "text", "report.json")) as f:
        rep = json.load(f)
    # 3 + 2 + 2 + 5 + 1 records; 4 malformed: bad.jsonl lines 2, 3, 4 and bad.txt's invalid byte
    assert rep["documents_in"] == 13 and rep["malformed"] == {"bad_json": 1, "invalid_utf8": 1,
                                                              "missing_field": 1, "wrong_type": 1}
    dropped = rep["documents_in"] - rep["kept"]
    assert TokenDataset(got.train).n_docs == rep["kept"]
    assert rep["outputs"] and all(os.path.dirname(o) == os.path.join(got.cache_dir, "text") for o in rep["outputs"])
    said = [s for s in lines if s.startswith("data: dropped")]
    # the console used to say only "cleaned 13 documents -> 9 kept"
    assert len(said) == 1 and said[0].startswith(f"data: dropped {dropped} of 13 documents: ")
    assert "1 bad_json" in said[0] and f"e.g. {user_inputs[3]}:2: bad_json:" in said[0] and "report.json" in said[0]
    again = []
    prep.prepare_data(cfg, log=again.append)  # a run reusing the cache says it too
    assert [s for s in again if s.startswith("data: dropped")] == said


def test_a_corpus_the_english_filter_removes_says_how_to_train_on_it(tmp_path):
    ru = ("Москва является столицей России и крупнейшим городом страны. Город расположен на реке Москве, "
          "в нём находятся многочисленные музеи, театры, университеты и исторические памятники. ") * 3
    path = tmp_path / "ru.jsonl"
    path.write_text(json.dumps({"text": ru}, ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = from_dict(TrainConfig, {"out": str(tmp_path / "runs"), "data": {"text": [str(path)], "vocab_size": 300}})
    with pytest.raises(ValueError, match="removed 1 gopher_quality:stop_words; .*English text only.*data.tokens"):
        prep.prepare_data(cfg, log=lambda s: None)


def test_the_cache_key_changes_only_for_a_share_the_old_split_read_otherwise():
    key = lambda f: prep.cache_key(from_dict(TrainConfig, {"data": {"val_fraction": f}}))[1]  # noqa: E731
    assert "holdout_split" not in key(0.02) and "holdout_split" not in key(0.5) and "holdout_split" not in key(0)
    assert key(0.3)["holdout_split"] == "share"
