r"""Benchmark: fastlm MinHash+LSH vs datasketch, fastlm SimHash vs the simhash package (one run).

Measured 2026-11-27 06:19 UTC on the 2-core AVX-512 (IFMA) dev box, load average ~1.2-1.3 from
other jobs, 13 MB, kernel avx512ifma:
  fastlm minhash (auto)       188 MB/s  59x datasketch   recall 0.996 precision 0.999
  fastlm minhash (signature)  206 MB/s  64x datasketch   recall 0.872 precision 0.857
  datasketch MinHash+LSH      3.2 MB/s                   recall 0.550 precision 0.611
  fastlm simhash              533 MB/s 119x simhash pkg
  (--threads 1: minhash auto 103 MB/s (32x), signature 111 MB/s (35x), simhash 306 MB/s)
Before the 32-bit shingle hashes, the IFMA kernel and the kept-hash verification (commit 147b7e7,
same box, runs alternated with these): auto 104 / signature 131 MB/s, 1 thread 57 / 69 MB/s.

Same documents and parameters for every contender: real text (pydoc topics + Shakespeare, ~200-word
docs) with 30% injected near-copies (1-5% of words edited). Each contender runs end to end
(tokenize/shingle -> hash -> index/LSH -> clusters) in its own forked process; we report the median
time over --repeats, docs/s, MB/s, the ratio to the peer, peak memory (ru_maxrss growth of the
process) and recall/precision of same-cluster pairs against exact 5-gram Jaccard >= 0.8 (brute
force over all pairs). The peers are slow, so they run on the first --peer-docs documents and
their rate is extrapolated (the table says so); quality is measured on the docs each one saw.
Peers shingle with a plain Python tokenizer (``\w+`` words, lowercased), as a datasketch user would.

    PYTHONPATH=python python benchmarks/bench_dedup.py            # ~20 s on 2 cores
    PYTHONPATH=python python benchmarks/bench_dedup.py --docs 20000 --repeats 5
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import time

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package; tests/)

import reference_dedup as ref  # noqa: E402
from _child import ChildError, run_forked  # noqa: E402
from fastlm import _C  # noqa: E402
from fastlm.data import dedup  # noqa: E402

_WORD = re.compile(r"\w+")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------- contenders


def fastlm_minhash(docs, args, verify="auto"):
    return dedup.minhash_dedup(docs, threshold=0.8, num_perm=128, ngram=5, verify=verify,
                               num_threads=args.threads).cluster


def fastlm_simhash(docs, args):
    return dedup.simhash_dedup(docs, k=3, ngram=3, num_threads=args.threads).cluster


def _union_find_clusters(n, pairs):
    uf = ref.UnionFind(n)
    for i, j in pairs:
        uf.unite(i, j)
    return [uf.find(i) for i in range(n)]


def datasketch_minhash(docs, args):
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    pairs = []
    for i, d in enumerate(docs):
        w = _WORD.findall(d.lower())
        sh = {" ".join(w[k : k + 5]).encode() for k in range(max(1, len(w) - 4))} if w else set()
        m = MinHash(num_perm=128)
        m.update_batch(sh)
        pairs.extend((j, i) for j in lsh.query(m))
        lsh.insert(i, m)
    return _union_find_clusters(len(docs), pairs)


def simhash_package(docs, args):
    from simhash import Simhash, SimhashIndex

    objs = []
    for i, d in enumerate(docs):
        w = _WORD.findall(d.lower())
        feats = [" ".join(w[k : k + 3]) for k in range(max(1, len(w) - 2))] if w else [""]
        objs.append((str(i), Simhash(feats)))
    index = SimhashIndex(objs, k=3)
    pairs = [(int(j), i) for i, (_, s) in enumerate(objs) for j in index.get_near_dups(s) if int(j) < i]
    return _union_find_clusters(len(docs), pairs)


def _measure(fn, docs, args, extra):
    start = _rss_mb()
    times, cluster = [], None
    for _ in range(args.repeats if fn.__name__.startswith("fastlm") else args.peer_repeats):
        t = time.perf_counter()
        cluster = fn(docs, args, *extra)
        times.append(time.perf_counter() - t)
    return times, list(map(int, cluster)), _rss_mb() - start


def run(name, fn, docs, args, *extra):
    """(times, cluster, peak MB) of contender `name` run in a forked process, or the error (a str) if it
    raised (e.g. a peer package not installed), died (segfault, OOM kill) or exited non-zero: never a hang."""
    try:
        return run_forked(_measure, f"contender {name!r} ({len(docs)} docs)", fn, docs, args, extra)
    except ChildError as e:
        return str(e)


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8000, help="base real documents (before near-copies)")
    ap.add_argument("--peer-docs", type=int, default=1500, help="documents given to datasketch/simhash")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the fastlm runs (median)")
    ap.add_argument("--peer-repeats", type=int, default=3, help="repeats of the peer runs (median)")
    ap.add_argument("--threads", type=int, default=0, help="fastlm threads (0 = all cores)")
    args = ap.parse_args()

    base = ref.real_documents(args.docs)
    docs = ref.with_near_duplicates(base, frac=0.3, seed=0)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    t = time.perf_counter()
    sets = [set(_C.dedup_shingle_hashes(d, 5, 0).tolist()) for d in docs]
    truth = ref.true_pairs(sets, 0.8)
    print(f"{len(docs)} docs, {mb:.1f} MB ({len(base)} real + {len(docs) - len(base)} near-copies), "
          f"{len(truth)} pairs with J >= 0.8 (ground truth {time.perf_counter() - t:.1f}s), "
          f"{os.cpu_count()} cpus, fastlm threads={args.threads or os.cpu_count()}, "
          f"kernel={_C.dedup_kernel()}, load average {os.getloadavg()[0]:.2f}")
    peer = docs[: args.peer_docs]
    peer_mb = sum(len(d.encode()) for d in peer) / 1e6
    peer_truth = {(i, j) for i, j in truth if j < len(peer)}

    rows = []

    failed = []

    def add(name, fn, docs, size_mb, truth_set, *extra, note=""):
        res = run(name, fn, docs, args, *extra)
        if isinstance(res, str):  # the contender failed (a missing peer package: pip install it)
            failed.append((name, res))
            print(f"  not run: {res}", file=sys.stderr)
            return
        times, cluster, rss = res
        sec = statistics.median(times)
        r, p = ref.recall_precision(cluster, truth_set)
        n = len(docs)
        rows.append([name, n, size_mb, sec, n / sec, size_mb / sec, rss, r, p, note])
        print(f"  done: {name} ({sec:.2f}s)", file=sys.stderr)

    add("fastlm minhash (auto)", fastlm_minhash, docs, mb, truth)
    add("fastlm minhash (signature)", fastlm_minhash, docs, mb, truth, "signature")
    subset = f"first {len(peer)} docs, rate extrapolated" if len(peer) < len(docs) else ""
    add("datasketch MinHash+LSH", datasketch_minhash, peer, peer_mb, peer_truth, note=subset)
    add("fastlm simhash", fastlm_simhash, docs, mb, truth)
    add("simhash package", simhash_package, peer, peer_mb, peer_truth, note=subset)

    peers = {"fastlm minhash (auto)": "datasketch MinHash+LSH",
             "fastlm minhash (signature)": "datasketch MinHash+LSH",
             "fastlm simhash": "simhash package"}
    mbs = {r[0]: r[5] for r in rows}
    print(f"\n{'contender':28s} {'docs':>6s} {'MB':>6s} {'sec':>7s} {'docs/s':>9s} {'MB/s':>8s} "
          f"{'x peer':>7s} {'peak MB':>8s} {'recall':>7s} {'prec':>6s}  note")
    for name, n, size, sec, dps, mbps, rss, r, p, note in rows:
        ratio = (f"{mbps / mbs[peers[name]]:.0f}x" if peers[name] in mbs else "n/a") if name in peers else "1x"
        print(f"{name:28s} {n:6d} {size:6.1f} {sec:7.3f} {dps:9.0f} {mbps:8.1f} {ratio:>7s} "
              f"{rss:8.1f} {r:7.3f} {p:6.3f}  {note}")
    print(f"median of {args.repeats} (fastlm) / {args.peer_repeats} (peers) runs; load average now "
          f"{os.getloadavg()[0]:.2f} (other processes on this machine slow the 2-thread fastlm runs more "
          "than the 1-thread peers)")
    print("recall/precision: same-cluster pairs vs exact 5-gram Jaccard >= 0.8 (SimHash k=3 targets "
          "closer copies, so its recall at J >= 0.8 is low by design)")
    for name, why in failed:
        print(f"not run: {why.splitlines()[0]}")
    fastlm_failed = [why for name, why in failed if name.startswith("fastlm")]
    if fastlm_failed:
        raise SystemExit("a fastlm contender failed:\n" + "\n".join(fastlm_failed))


if __name__ == "__main__":
    main()
