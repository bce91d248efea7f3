"""Benchmark: native pre-tokenizer (_C.tok_pretokenize / tok_count_pieces) vs regex.findall.

Run: PYTHONPATH=python python benchmarks/bench_pretokenize.py [--repeats 3] [--threads 0] [--patterns gpt2,gpt4,o200k]

Corpus: Shakespeare (each file one document, ~9.5 MB) + pydoc topics. Each contender runs in its own
subprocess (peak memory = its ru_maxrss growth after loading the corpus and a warm-up); times are
medians over --repeats runs. Prints MB/s (UTF-8 bytes), the ratio to regex.findall, and whether the
output equals regex's.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import resource
import statistics
import sys
import time

from _child import run_script_json

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package; tests/)

CONTENDERS = ["regex.findall", "native 1 thread", "native all threads",
              "Counter(regex.findall)", "native counts 1 thread", "native counts all threads"]


def corpus() -> list[str]:
    from corpora import PYDOC, shakespeare_texts

    return [t for _, t in shakespeare_texts()] + list(PYDOC.values())


def make(contender: str, pattern: str, threads: int):
    from fastlm import _C
    from test_pretokenize import IDS, PATTERNS
    import regex

    pat, pid = regex.compile(PATTERNS[pattern]), IDS[pattern]
    if contender == "regex.findall":
        return lambda docs: [pat.findall(d) for d in docs]
    if contender.startswith("native counts"):
        t = 1 if "1 thread" in contender else threads
        return lambda docs: dict(zip(*_C.tok_count_pieces(docs, pid, t)))
    if contender.startswith("native"):
        t = 1 if "1 thread" in contender else threads
        return lambda docs: _C.tok_pretokenize(docs, pid, t)
    if contender == "Counter(regex.findall)":
        def count(docs):
            c = collections.Counter()
            for d in docs:
                c.update(pat.findall(d))
            return {k.encode("utf-8", "surrogatepass"): v for k, v in c.items()}
        return count
    raise ValueError(contender)


def digest(out) -> str:
    h = hashlib.sha256()
    if isinstance(out, dict):
        for k in sorted(out):
            h.update(k + b"\0" + str(int(out[k])).encode() + b"\0")
    else:
        for pieces in out:
            h.update("\0".join(pieces).encode("utf-8", "surrogatepass") + b"\1")
    return h.hexdigest()


def child(args) -> None:
    docs = corpus()
    fn = make(args.contender, args.pattern, args.threads)
    fn(docs[-10:])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out = [], None
    for _ in range(args.repeats):
        out = None
        t0 = time.perf_counter()
        out = fn(docs)
        times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": peak, "digest": digest(out)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--patterns", default="gpt2,gpt4,o200k")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--contender")
    ap.add_argument("--pattern")
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    mb = sum(len(d.encode("utf-8", "surrogatepass")) for d in corpus()) / 1e6
    print(f"corpus: {mb:.1f} MB UTF-8; threads={args.threads or os.cpu_count()}; median of {args.repeats}")
    print(f"{'pattern':7} {'contender':26} {'seconds':>8} {'MB/s':>8} {'x regex':>8} {'peak MB':>8}  same")
    for pattern in args.patterns.split(","):
        ref = {}
        for contender in CONTENDERS:
            cmd = [sys.executable, __file__, "--child", "--contender", contender,
                   "--pattern", pattern, "--repeats", str(args.repeats), "--threads", str(args.threads)]
            r = run_script_json(cmd, f"contender {contender!r}, pattern {pattern!r}")
            kind = "counts" if "ount" in contender else "pieces"
            ref.setdefault(kind, r)
            base = ref[kind]
            print(f"{pattern:7} {contender:26} {r['median_s']:8.3f} {mb / r['median_s']:8.1f} "
                  f"{base['median_s'] / r['median_s']:8.2f} {r['peak_mb']:8.1f}  {r['digest'] == base['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
