"""Audit of the hashed n-gram classifier (s13): native features and probabilities vs the plain-Python
reference on arbitrary Unicode, odd documents and label sets; training determinism, learning and
option edges; model files (round trip, damage); the train-classifier / classify CLI reports."""

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_classifier as ref
from fastlm import _C
from fastlm.cli.main import main as cli
from fastlm.data.classifier import MAGIC, ClassifierConfig, ClassifierFilter, TextClassifier

# Arbitrary code points (surrogates excluded: a str holding one cannot be UTF-8), mixed with the
# scripts the tokenizer treats specially so that words form: ASCII, combining marks, Hebrew and
# Arabic (RTL), CJK, emoji, Latin-1 / Latin Extended-A case pairs, separators.
CHARS = st.one_of(
    st.characters(blacklist_categories=("Cs",)),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.characters(min_codepoint=0x300, max_codepoint=0x36F),
    st.characters(min_codepoint=0x590, max_codepoint=0x6FF),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4E40),
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    st.characters(min_codepoint=0xC0, max_codepoint=0x17F),
    st.sampled_from(" \t\n\u3000\u200b\ufeff\u2028.,"),
)
TEXT = st.text(CHARS, max_size=40)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_model(k=3, buckets=257, seed=0, config=(2, 3, 5)):
    """A model with random weights (a trained one is mostly zeros on unseen features)."""
    rng = np.random.default_rng(seed)
    wn, cmin, cmax = config
    cfg = ClassifierConfig(buckets=buckets, word_ngrams=wn, char_ngrams=(cmin, cmax) if cmin else None)
    return TextClassifier(rng.normal(0, 2, (buckets, k)).astype(np.float32),
                          rng.normal(0, 1, k).astype(np.float32), [f"c{i}" for i in range(k)], cfg)


def reference_proba(model, texts):
    cmin, cmax = model.config.char_range
    ids = [ref.featurize(t, model.config.buckets, model.config.word_ngrams, cmin, cmax) for t in texts]
    return ref.predict_proba(ids, model.weights, model.bias)


# -- features and probabilities vs the reference ---------------------------------------------------

@FAST
@given(TEXT)
def test_tokenize_and_features_match_reference_on_any_unicode(text):
    assert _C.classify_tokenize(text) == ref.tokenize(text)
    for buckets, wn, cmin, cmax in [(1000, 2, 3, 5), (1, 1, 1, 1), (2**32, 3, 0, 0)]:
        offsets, ids = _C.classify_featurize([text], buckets, wn, cmin, cmax)
        assert ids.tolist() == ref.featurize(text, buckets, wn, cmin, cmax)


MODELS = [small_model(2), small_model(3, config=(1, 0, 0)), small_model(40, buckets=31, config=(3, 1, 2))]


@FAST
@given(st.lists(TEXT, max_size=6))
def test_probabilities_match_reference_and_sum_to_one(texts):
    for model in MODELS:
        p = model.predict_proba(texts, num_threads=2)
        assert p.dtype == np.float32 and p.shape == (len(texts), len(model.labels))
        if texts:
            np.testing.assert_allclose(p, reference_proba(model, texts), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
            assert model.predict(texts) == [model.labels[i] for i in reference_proba(model, texts).argmax(1)]


def test_empty_and_whitespace_documents_score_the_bias_alone():
    model = small_model(4)
    bias = model.bias.astype(np.float64)
    expected = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
    docs = ["", " ", "\n\t\r ", "\u3000\u200b\ufeff", "...!?", "\U0001F600\U0001F600"]  # no word characters
    np.testing.assert_allclose(model.predict_proba(docs), np.tile(expected, (len(docs), 1)), rtol=1e-6)
    assert model.predict_proba([]).shape == (0, 4) and model.predict([]) == []


def test_lone_surrogates_are_refused_naming_the_text():
    model = small_model(2)
    for bad in ["\ud800", "ok \udfff ok", "\ud83d\ude00"]:
        with pytest.raises(ValueError, match=r"texts\[1\] cannot be encoded as UTF-8"):
            model.predict_proba(["fine", bad])


def test_very_long_document_matches_a_memoized_reference():
    # 300,000 words (~2.4 MB) in one document: the features are those of the reference, which is
    # computed here with the n-gram hashes memoized (the same function, only faster).
    rng = np.random.default_rng(1)
    vocab = ["alpha", "Beta", "gamma", "naïve", "東京", "שלום", "x", "ĳssel", "q9"]
    words = [vocab[i] for i in rng.integers(0, len(vocab), 300_000)]
    text = " ".join(words)
    model = small_model(3, buckets=1009)
    toks = ref.tokenize(" ".join(vocab))
    lower = dict(zip(vocab, toks))
    h = {}

    def hid(s, seed):
        if (s, seed) not in h:
            h[s, seed] = ref.hash64(s.encode(), seed) % 1009
        return h[s, seed]

    lw = [lower[w] for w in words]
    ids = [hid(w, 1) for w in lw] + [hid(a + " " + b, 1) for a, b in zip(lw, lw[1:])]
    grams = {w: [hid(g, 2) for g in _char_grams(w, 3, 5)] for w in set(lw)}
    for w in lw:
        ids += grams[w]
    offsets, native = _C.classify_featurize([text], 1009, 2, 3, 5)
    assert native.tolist() == ids
    p = model.predict_proba([text])
    np.testing.assert_allclose(p, ref.predict_proba([ids], model.weights, model.bias), rtol=1e-5)
    assert abs(float(p.sum()) - 1) < 1e-5


def _char_grams(word, lo, hi):
    w = "<" + word + ">"
    return [w[i : i + n] for n in range(lo, hi + 1) for i in range(len(w) - n + 1)]


# -- label sets ------------------------------------------------------------------------------------

def test_odd_label_sets(tmp_path):
    texts = [f"topic{i % 7} word{i % 7}" for i in range(140)]
    labels = ["with space", "ünïcödé ☺", "", "__label__x", "a\nb", "0", "東京"]
    y = [labels[i % 7] for i in range(140)]
    clf = TextClassifier.train(texts, y, buckets=512, epochs=10)
    assert clf.labels == sorted(labels) and clf.predict(texts) == y
    clf.save(tmp_path / "m.cls")
    back = TextClassifier.load(tmp_path / "m.cls")
    assert back.labels == clf.labels
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        TextClassifier.train(["a", "b"], ["only", "only"])
    with pytest.raises(ValueError, match="not one of the model's labels"):
        ClassifierFilter(clf, label="never seen")
    # int labels keep their type (and sort numerically)
    ints = TextClassifier.train(texts, [[10, -3, 2**40][i % 3] for i in range(140)], buckets=64)
    assert ints.labels == [-3, 10, 2**40]


def test_many_classes_and_imbalance():
    k = 200
    texts = [f"marker{i % k} filler text" for i in range(4 * k)]
    clf = TextClassifier.train(texts, [i % k for i in range(4 * k)], buckets=2**14, epochs=8, char_ngrams=None)
    p = clf.predict_proba(texts[:k])
    assert p.shape == (k, k) and np.abs(p.sum(1) - 1).max() < 1e-5
    assert clf.predict(texts[:k]) == list(range(k))
    # 1 : 99 imbalance, separable: the minority class is still learned
    texts = ["rare signal here"] * 5 + [f"common thing {i}" for i in range(495)]
    y = ["rare"] * 5 + ["common"] * 495
    clf = TextClassifier.train(texts, y, buckets=4096, epochs=10)
    assert clf.predict(["rare signal here", "common thing"]) == ["rare", "common"]


def test_threshold_filter_uses_the_probability_column():
    model = small_model(3)
    texts = [f"doc {i} words {i * 7}" for i in range(50)]
    p = model.predict_proba(texts)[:, 1]
    t = float(np.median(p))
    got = ClassifierFilter(model, label="c1", threshold=t).check_batch(texts)
    assert got == ["classifier:c1" if x >= t else None for x in p]
    assert ClassifierFilter(model, label="c1", threshold=0).check_batch(texts) == ["classifier:c1"] * 50


# -- training --------------------------------------------------------------------------------------

def separable(n=600):
    rng = np.random.default_rng(0)
    pos, neg = ["sunny", "bright", "warm"], ["rainy", "grey", "cold"]
    texts, y = [], []
    for i in range(n):
        lab = i % 2
        words = list(rng.choice(pos if lab else neg, 3)) + [f"noise{rng.integers(0, 50)}" for _ in range(3)]
        texts.append(" ".join(rng.permutation(words)))
        y.append("pos" if lab else "neg")
    return texts, y


def test_separable_task_is_learned_and_loss_decreases():
    texts, y = separable()
    clf = TextClassifier.train(texts, y, buckets=2**12, epochs=6)
    assert clf.evaluate(texts, y)["accuracy"] >= 0.99
    losses = clf.train_losses
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])), losses


def test_one_thread_training_is_bit_identical():
    texts, y = separable(300)
    a = TextClassifier.train(texts, y, buckets=2**10, seed=5, epochs=3)
    b = TextClassifier.train(texts, y, buckets=2**10, seed=5, epochs=3)
    c = TextClassifier.train(texts, y, buckets=2**10, seed=6, epochs=3)
    assert a.weights.tobytes() == b.weights.tobytes() and a.bias.tobytes() == b.bias.tobytes()
    assert a.train_losses == b.train_losses
    assert a.weights.tobytes() != c.weights.tobytes()  # the seed does reach the example order


def test_option_edges():
    texts, y = separable(40)
    zero = TextClassifier.train(texts, y, buckets=64, epochs=0)
    assert not zero.weights.any() and zero.train_losses == []
    np.testing.assert_allclose(zero.predict_proba(["sunny"]), [[0.5, 0.5]])
    one = TextClassifier.train(texts, y, buckets=1, epochs=2)  # every feature in one bucket: handled
    assert one.weights.shape == (1, 2) and np.isfinite(one.predict_proba(texts)).all()
    for kwargs, match in [
        (dict(epochs=2**31), r"epochs must be in \[0, 2\*\*31 - 1\]"),
        (dict(epochs=-1), "epochs must be"),
        (dict(lr=0), "lr must be"), (dict(lr=1e-50), "lr must be"), (dict(lr=1e39), "lr must be"),
        (dict(lr=float("inf")), "lr must be"), (dict(l2=1e39), "l2 must be"),
        (dict(buckets=0), "buckets must be"), (dict(buckets=2**32 + 1), "buckets must be"),
        (dict(num_threads=2**31), "num_threads must be"), (dict(num_threads=-1), "num_threads must be"),
        (dict(lr=3e38), "training diverged"),
    ]:
        with pytest.raises(ValueError, match=match):
            TextClassifier.train(texts, y, **{"buckets": 64, **kwargs})
    with pytest.raises(ValueError, match="num_threads must be"):
        zero.predict_proba(["x"], num_threads=-1)


def test_out_of_memory_names_buckets(monkeypatch):
    def no_memory(*args):
        raise MemoryError("Unable to allocate 32.0 GiB")

    monkeypatch.setattr(_C, "classify_train", no_memory)
    with pytest.raises(ValueError, match=r"buckets=4294967296 with 2 classes needs 64\.0 GiB.*lower buckets"):
        TextClassifier.train(["a", "b"], ["x", "y"], buckets=2**32)


# -- model files -----------------------------------------------------------------------------------

def test_save_load_gives_identical_predictions(tmp_path):
    texts, y = separable(200)
    clf = TextClassifier.train(texts, y, buckets=2**11, epochs=3)
    clf.save(tmp_path / "m.cls")
    back = TextClassifier.load(tmp_path / "m.cls")
    probe = texts + ["", "unseen words only", "ÜNÏCÖDÉ 東京 😀"]
    assert back.predict_proba(probe).tobytes() == clf.predict_proba(probe).tobytes()
    assert back.train_losses == clf.train_losses


def _rewrite_header(path, out, mutate):
    data = open(path, "rb").read()
    (hlen,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + hlen])
    mutate(header)
    hb = json.dumps(header).encode()
    open(out, "wb").write(MAGIC + struct.pack("<I", len(hb)) + hb + data[12 + hlen :])


@pytest.mark.parametrize("name,mutate", [
    ("train_not_object", lambda h: h.__setitem__("train", [])),
    ("losses_not_list", lambda h: h["train"].__setitem__("losses", 5)),
    ("losses_str", lambda h: h["train"].__setitem__("losses", "abc")),
    ("labels_str", lambda h: h.__setitem__("labels", "xy")),
    ("labels_dict", lambda h: h.__setitem__("labels", {"x": 0, "y": 1})),
    ("crc_float", lambda h: h.__setitem__("crc32", h["crc32"] + 0.5)),
])
def test_damaged_headers_are_refused_naming_the_file(tmp_path, name, mutate):
    TextClassifier.train(["a", "b"], ["x", "y"], buckets=16).save(tmp_path / "ok.cls")
    bad = tmp_path / f"{name}.cls"
    _rewrite_header(tmp_path / "ok.cls", bad, mutate)
    with pytest.raises(ValueError, match=f"{name}.cls: not a valid fastlm classifier file"):
        TextClassifier.load(bad)


def test_every_truncation_and_nan_weights_are_refused(tmp_path):
    TextClassifier.train(["a", "b"], ["x", "y"], buckets=8).save(tmp_path / "ok.cls")
    data = open(tmp_path / "ok.cls", "rb").read()
    for n in range(len(data)):
        (tmp_path / "t.cls").write_bytes(data[:n])
        with pytest.raises(ValueError, match="t.cls: not a valid fastlm classifier file"):
            TextClassifier.load(tmp_path / "t.cls")
    (tmp_path / "t.cls").write_bytes(data[:9])
    with pytest.raises(ValueError, match="truncated after the signature"):
        TextClassifier.load(tmp_path / "t.cls")
    m = small_model(2, buckets=8)
    m.weights[3, 1] = np.nan
    m.save(tmp_path / "nan.cls")  # a model a diverged run (or an old fastlm) could have written
    with pytest.raises(ValueError, match="nan.cls: .*NaN or infinity"):
        TextClassifier.load(tmp_path / "nan.cls")


# -- CLI -------------------------------------------------------------------------------------------

def _write_labeled(path):
    texts, y = separable(200)
    lines = [json.dumps({"text": t, "label": lab, "id": i}) for i, (t, lab) in enumerate(zip(texts, y))]
    bad = {3: "{not json", 7: json.dumps({"text": 5, "label": "pos"}), 11: json.dumps({"label": "pos"}),
           15: json.dumps({"text": "a", "label": 1.5}), 19: '{"text": "lone \\ud800", "label": "pos"}',
           23: json.dumps([1, 2])}
    for i in sorted(bad):
        lines.insert(i, bad[i])
    path.write_text("\n".join(lines) + "\n")
    return len(texts), sorted(bad)


def test_train_report_counts_every_record_and_is_deterministic(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    n_good, bad_lines = _write_labeled(data)
    assert cli(["data", "train-classifier", str(data), "-o", str(tmp_path / "a.cls"), "--buckets", "4096"]) == 0
    out, err = capsys.readouterr()
    assert f"read {n_good} labeled records" in out and f"skipped {len(bad_lines)} malformed records" in err
    for i in bad_lines:  # 0-based insert positions are 1-based line numbers + 1
        assert f"train.jsonl:{i + 1}:" in err
    assert cli(["data", "train-classifier", str(data), "-o", str(tmp_path / "b.cls"), "--buckets", "4096"]) == 0
    assert (tmp_path / "a.cls").read_bytes() == (tmp_path / "b.cls").read_bytes()


@pytest.mark.parametrize("flag,value", [("--lr", "1e-50"), ("--lr", "1e39"), ("--l2", "1e39"),
                                        ("--epochs", "2147483648")])
def test_train_cli_refuses_edge_options_before_reading(tmp_path, capsys, flag, value):
    data = tmp_path / "train.jsonl"
    _write_labeled(data)
    assert cli(["data", "train-classifier", str(data), "-o", str(tmp_path / "m.cls"), flag, value]) == 2
    out, err = capsys.readouterr()
    assert f"fastlm: error: {flag[2:]} must be" in err and "read " not in out and "skipped" not in err
    assert not (tmp_path / "m.cls").exists()


def test_classify_keeps_every_record_and_writes_atomically(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    n_good, bad_lines = _write_labeled(data)
    model = tmp_path / "m.cls"
    assert cli(["data", "train-classifier", str(data), "-o", str(model), "--buckets", "4096"]) == 0
    capsys.readouterr()
    out_path = tmp_path / "out.jsonl"
    assert cli(["data", "classify", str(data), "-m", str(model), "-o", str(out_path), "--batch-size", "7"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out_path.read_text().splitlines()]
    # every record with a text (the bad-label one too: classify needs no label), in input order
    assert len(rows) == n_good + 1 and f"scored {len(rows)} records" in out
    assert [r["id"] for r in rows if "id" in r] == list(range(n_good))
    assert f"skipped {len(bad_lines) - 1} malformed records" in err
    clf = TextClassifier.load(model)
    texts = [r["text"] for r in rows]
    expected = clf.predict_proba(texts)
    for r, p in zip(rows, expected):
        assert set(r["classifier"]) == {"neg", "pos"} and abs(sum(r["classifier"].values()) - 1) < 1e-5
        assert r["classifier"] == {lab: round(float(x), 6) for lab, x in zip(clf.labels, p)}
    # --strict stops at the first bad record: the old output stays whole and no temp file is left
    out_path.write_text("old\n")
    assert cli(["data", "classify", str(data), "-m", str(model), "-o", str(out_path), "--strict"]) == 2
    assert out_path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["in.jsonl", "m.cls", "out.jsonl"]


def test_classify_refuses_to_overwrite_its_model(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    _write_labeled(data)
    model = tmp_path / "m.cls"
    assert cli(["data", "train-classifier", str(data), "-o", str(model), "--buckets", "256"]) == 0
    before = model.read_bytes()
    assert cli(["data", "classify", str(data), "-m", str(model), "-o", str(model)]) == 2
    assert "is the model file (-m)" in capsys.readouterr().err and model.read_bytes() == before
