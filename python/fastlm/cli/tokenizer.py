"""`fastlm tokenizer ...`: train a tokenizer, encode corpora into token shards, inspect encodings."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from fastlm.cli.checks import check_output, check_range, check_threads
from fastlm.data.readers import FORMATS, TEXT_MODES, read_records, record_text
from fastlm.data.records import ErrorLog

HELD_OUT_EVERY = 50  # every 50th document (2%) is held out from training to measure compression
MAX_VOCAB_SIZE = 2**31 - 1  # sentencepiece's int32 and the native trainer's 2**31 merges
MAX_MIN_FREQUENCY = 2**63 - 1  # pair counts are int64
MAX_SHARD_TOKENS = 2**32  # the shard in progress is held in memory: up to 16 GiB of uint32 ids
MAX_BATCH_DOCS = 2**20  # a batch's texts and ids are held in memory at once


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs, '-' or builtin:NAME")
    p.add_argument("--text-field", default="text", help="text field of JSON records (default: text)")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS, help="input format (default: auto)")
    p.add_argument("--text-mode", default="document", choices=TEXT_MODES, help="plain text: per file or paragraph")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0 = all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("tokenizer", help="train tokenizers, encode text into token shards")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser("train", help="train a byte-level BPE (or sentencepiece) tokenizer")
    _add_input_args(p)
    p.add_argument("--vocab-size", type=int, required=True,
                   help="ids in total: 256 bytes + merges + specials, at most 2**31 - 1")
    p.add_argument("-o", "--output", required=True, help="output directory (tokenizer.fastlm, tokenizer.json)")
    p.add_argument("--pattern", help="native backend: gpt2, gpt4, o200k or a custom regex (default: gpt4)")
    p.add_argument("--backend", default="native", choices=("native", "sentencepiece"), help="default: native BPE")
    p.add_argument("--model-type", choices=("bpe", "unigram"), help="sentencepiece backend: model type (default: bpe)")
    p.add_argument("--min-frequency", type=int,
                   help="native backend: stop merging below this pair count, >= 1 (default: 2)")
    p.set_defaults(func=run_train)

    p = commands.add_parser("encode", help="encode documents into token shards (.bin/.idx/.json)")
    _add_input_args(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    p.add_argument("-o", "--output", required=True, help="output directory for the shards")
    p.add_argument("--separator", default="bos", choices=("bos", "eos", "none"),
                   help="bos: prepend <|bos|> to each document (default); eos: append <|endoftext|>/<|eos|>")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="tokens per shard, at most 2**32 (default: 1e8)")
    p.add_argument("--batch-docs", type=int, default=256,
                   help="documents encoded per parallel batch, at most 2**20 (default: 256)")
    p.set_defaults(func=run_encode)

    p = commands.add_parser("encode-text", help="encode one text and show its ids and tokens")
    p.add_argument("text", help="the text to encode")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    p.add_argument("--allow-special", action="store_true", help="encode special-token text as special tokens")
    p.set_defaults(func=run_encode_text)

    p = commands.add_parser("decode", help="decode token ids to text")
    p.add_argument("ids", nargs="+", type=int, help="token ids")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    p.set_defaults(func=run_decode)


def _texts(args, log: ErrorLog):
    for rec in read_records(args.inputs, text_field=args.text_field, text_mode=args.text_mode, fmt=args.fmt, errors=log):
        yield record_text(rec, args.text_field)


def run_train(args: argparse.Namespace) -> int:
    from fastlm.tokenizer import Tokenizer, _backend, formats

    check_threads(args.threads)
    check_range(args.vocab_size, "--vocab-size", 256, MAX_VOCAB_SIZE)
    # an option of the other backend would be ignored: refused instead
    if args.backend == "sentencepiece" and args.min_frequency is not None:
        raise ValueError("--min-frequency applies to --backend native only: sentencepiece has no minimum pair count")
    if args.backend == "sentencepiece" and args.pattern is not None:
        raise ValueError("--pattern applies to --backend native only: sentencepiece splits text its own way")
    if args.backend == "native" and args.model_type is not None:
        raise ValueError("--model-type applies to --backend sentencepiece only: the native backend trains byte-level BPE")
    args.min_frequency = 2 if args.min_frequency is None else args.min_frequency
    args.pattern = args.pattern or "gpt4"
    args.model_type = args.model_type or "bpe"
    check_range(args.min_frequency, "--min-frequency", 1, MAX_MIN_FREQUENCY)
    check_output(args.output, "-o", folder=True)
    log = ErrorLog(strict=args.strict)
    held_out: list[str] = []
    stats = {"docs": 0, "bytes": 0}

    def training_texts():
        for i, text in enumerate(_texts(args, log)):
            if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
                held_out.append(text)
                continue
            stats["docs"] += 1
            stats["bytes"] += len(text.encode("utf-8", "surrogatepass"))
            yield text

    backend = "bpe" if args.backend == "native" else "sentencepiece"
    engine = _backend.describe(args.pattern) if backend == "bpe" else "sentencepiece"
    t0 = time.perf_counter()
    texts = training_texts()
    first = next(texts, None)
    if first is None:  # a bytes-only tokenizer (native) or sentencepiece's internal error otherwise
        raise ValueError(f"no text to train on: the inputs gave no usable records"
                         + (f" ({log.total} malformed: {dict(log.counts)})" if log.total else ""))
    tok = Tokenizer.train_from_iterator(
        itertools.chain([first], texts), args.vocab_size, pattern=args.pattern, min_frequency=args.min_frequency,
        num_threads=args.threads, progress=not args.quiet, backend=backend, model_type=args.model_type,
    )
    seconds = time.perf_counter() - t0
    os.makedirs(args.output, exist_ok=True)
    path = formats.save(tok, os.path.join(args.output, formats.FILE_NAME))
    if backend == "bpe":
        tok.save_hf(os.path.join(args.output, "tokenizer.json"))
    print(f"trained {tok.n_vocab} ids ({engine}) on {stats['docs']:,} documents, {stats['bytes'] / 1e6:.2f} MB "
          f"in {seconds:.2f} s ({stats['bytes'] / 1e6 / max(seconds, 1e-9):.2f} MB/s)")
    if tok.n_vocab < args.vocab_size:
        print(f"note: the data supports {tok.n_vocab} ids, fewer than --vocab-size {args.vocab_size} "
              "(no pair is left to merge)", file=sys.stderr)
    if held_out:
        ids = tok.encode_batch(held_out, num_threads=args.threads, disallowed_special=())
        nbytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in held_out)
        ntok = sum(len(x) for x in ids)
        print(f"held-out ({len(held_out)} documents, every {HELD_OUT_EVERY}th): {nbytes / max(ntok, 1):.3f} bytes/token")
    if backend == "bpe":
        longest = sorted(range(tok.n_mergeable), key=lambda i: (-len(tok.token_bytes(i)), i))[:10]
        shown = [repr(t if len(t) <= 40 else t[:37] + "...") for t in map(tok.id_to_token, longest)]
        print(f"longest tokens ({len(tok.token_bytes(longest[0]))} bytes max): " + ", ".join(shown))
    if log.total:
        print(f"skipped {log.total} malformed records: {dict(log.counts)}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


def _separator_id(tok, kind: str):
    if kind == "none":
        return None
    if kind == "bos":
        return tok.special_id("<|bos|>")
    for name in ("<|endoftext|>", "<|eos|>"):
        if name in tok.special_tokens:
            return tok.special_tokens[name]
    raise ValueError("--separator eos needs a <|endoftext|> or <|eos|> special token; this tokenizer has "
                     f"{sorted(tok.special_tokens)} (use --separator bos)")


def run_encode(args: argparse.Namespace) -> int:
    from fastlm.cli.progress import DocProgress
    from fastlm.tokenizer import formats, load
    from fastlm.tokenizer.shards import encode_to_shards, file_sha256

    check_threads(args.threads)
    check_range(args.shard_tokens, "--shard-tokens", 1, MAX_SHARD_TOKENS)
    check_range(args.batch_docs, "--batch-docs", 1, MAX_BATCH_DOCS)
    check_output(args.output, "-o", folder=True)
    tok_path = formats.resolve_path(args.tokenizer)
    tok = load(tok_path)
    sep = _separator_id(tok, args.separator)
    log = ErrorLog(strict=args.strict)
    progress = DocProgress("encode", enabled=not args.quiet)
    t0 = time.perf_counter()
    try:
        st = encode_to_shards(tok, _texts(args, log), args.output, tokenizer_sha256=file_sha256(tok_path),
                              separator_id=sep, separator_at="end" if args.separator == "eos" else "start",
                              shard_tokens=args.shard_tokens, batch_docs=args.batch_docs,
                              num_threads=args.threads, progress=progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    print(f"encoded {st.docs:,} documents, {st.bytes / 1e6:.2f} MB -> {st.tokens:,} tokens "
          f"({st.bytes / max(st.tokens, 1):.3f} bytes/token) in {seconds:.2f} s "
          f"({st.bytes / 1e6 / max(seconds, 1e-9):.2f} MB/s); {len(st.headers)} shard(s) in {args.output}")
    if log.total:
        print(f"skipped {log.total} malformed records: {dict(log.counts)}", file=sys.stderr)
    return 0


def run_encode_text(args: argparse.Namespace) -> int:
    from fastlm.tokenizer import load

    tok = load(args.tokenizer)
    ids = tok.encode(args.text, allowed_special="all" if args.allow_special else set(), disallowed_special=())
    print(" ".join(map(str, ids)))
    print(" | ".join(repr(tok.id_to_token(i)) for i in ids))
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8', 'surrogatepass'))} bytes")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from fastlm.tokenizer import load

    tok = load(args.tokenizer)
    sys.stdout.write(tok.decode(args.ids) + "\n")
    return 0
