"""`fastlm data train-classifier` and `fastlm data classify`: train a hashed n-gram text
classifier on labeled records, and score records with it."""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter

from fastlm.cli.checks import check_output, check_threads
from fastlm.data.io import atomic_write, json_line
from fastlm.data.records import ErrorLog


def _char_ngrams(value: str):
    if value.lower() in ("none", "0", "off"):
        return None
    try:
        lo, hi = (int(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (e.g. 3,5) or 'none', got {value!r}") from None
    return (lo, hi)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-classifier",
        help="train a fast linear text classifier (toxicity, quality) on labeled JSONL",
        description="Train a fastText-like linear classifier over hashed word and character n-grams "
                    "on labeled records, report train/valid accuracy and per-class precision/recall, "
                    "and write the model (use it with fastlm.data.ClassifierFilter).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="labeled files (JSONL/JSON/Parquet), dirs, globs or -")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.fastlm-cls)")
    p.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    p.add_argument("--label-field", default="label", help="field holding the label, str or int (default: label)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="held-out fraction for evaluation (default 0.1)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--buckets", type=int, default=2**20, help="hashed feature buckets (default 2**20)")
    p.add_argument("--word-ngrams", type=int, default=2, help="word n-grams 1..N (default 2)")
    p.add_argument("--char-ngrams", type=_char_ngrams, default=(3, 5), help="MIN,MAX char n-grams or none (default 3,5)")
    p.add_argument("--seed", type=int, default=0, help="split and example order seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="training threads; 1 is deterministic (default 1)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    p.set_defaults(func=run)

    c = subparsers.add_parser(
        "classify", help="score records with a trained classifier (adds class probabilities)",
        description="Add each record's class probabilities (a {label: probability} object) under "
                    "--field and write JSONL; every other field is kept.")
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="files (txt/JSONL/JSON/Parquet), dirs, globs or -")
    c.add_argument("-m", "--model", required=True, help="model written by train-classifier")
    c.add_argument("-o", "--output", required=True, help="JSONL file to write (atomically)")
    c.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    c.add_argument("--field", default="classifier", help="output field for the probabilities (default: classifier)")
    c.add_argument("--batch-size", type=int, default=4096, help="records per native call (default 4096)")
    c.add_argument("--threads", type=int, default=0, help="prediction threads, 0 = all (default)")
    c.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    c.set_defaults(func=run_classify)


def _read_labeled(args, errors: ErrorLog):
    from fastlm.data.chat import ConversionError, get_field
    from fastlm.data.readers import read_records, record_text

    texts, labels = [], []
    for rec in read_records(args.inputs, text_field=args.text_field, errors=errors, exclude=(args.output,)):
        try:  # the text `classify` scores: the field (a dotted path too) or the conversation's turns
            text = record_text(rec.data, args.text_field)
        except ConversionError:
            errors.add(rec.source, rec.line, "missing_field", f"no string field {args.text_field!r}")
            continue
        label = get_field(rec.data, args.label_field)
        if label is None:
            errors.add(rec.source, rec.line, "missing_label", f"no field {args.label_field!r}")
            continue
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            errors.add(rec.source, rec.line, "bad_label",
                       f"label must be a string or an integer, got {type(label).__name__}")
            continue
        texts.append(text)
        labels.append(label)
    return texts, labels


def _print_eval(name: str, ev: dict) -> None:
    print(f"{name}: {ev['n']} records, accuracy {ev['accuracy']:.4f}")
    for label, m in ev["per_class"].items():
        print(f"  {str(label):<20} precision {m['precision']:.4f}  recall {m['recall']:.4f}  support {m['support']}")


def run(args: argparse.Namespace) -> int:
    from fastlm.data.classifier import ClassifierConfig, TextClassifier

    if not 0 <= args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    check_threads(args.threads)
    # the training options' own checks, before any record is read or anything is printed
    ClassifierConfig(buckets=args.buckets, word_ngrams=args.word_ngrams, char_ngrams=args.char_ngrams,
                     epochs=args.epochs, lr=args.lr, l2=args.l2, seed=args.seed).validate()
    check_output(args.output, "-o", folder=False, inputs=args.inputs)
    errors = ErrorLog(strict=args.strict)
    texts, labels = _read_labeled(args, errors)
    if errors.total:
        print(f"skipped {errors.total} malformed records: "
              + ", ".join(f"{r} {n}" for r, n in sorted(errors.counts.items())), file=sys.stderr)
        for bad in errors.samples:
            print(f"  {bad}", file=sys.stderr)
    if any(isinstance(y, str) for y in labels) and not all(isinstance(y, str) for y in labels):
        raise ValueError(f"labels in field {args.label_field!r} mix strings and integers; use one type")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"need at least 2 distinct labels in field {args.label_field!r}, found {classes!r} "
                         f"in {len(labels)} records")

    order = list(range(len(texts)))
    random.Random(args.seed).shuffle(order)
    n_valid = int(round(len(order) * args.valid_fraction))
    valid, train = order[:n_valid], order[n_valid:]
    train_classes = sorted({labels[i] for i in train})
    if len(train_classes) < 2:
        raise ValueError(f"the training split ({len(train)} of {len(labels)} records, --valid-fraction "
                         f"{args.valid_fraction}) holds {len(train_classes)} distinct label(s) {train_classes!r}; "
                         "lower --valid-fraction or add records")
    counts = {c: labels.count(c) for c in classes}
    print(f"read {len(texts)} labeled records ({', '.join(f'{c}: {n}' for c, n in counts.items())}); "
          f"train {len(train)}, valid {len(valid)}")

    t0 = time.perf_counter()
    clf = TextClassifier.train(
        [texts[i] for i in train], [labels[i] for i in train], buckets=args.buckets,
        word_ngrams=args.word_ngrams, char_ngrams=args.char_ngrams, epochs=args.epochs, lr=args.lr,
        l2=args.l2, seed=args.seed, num_threads=args.threads)
    dt = time.perf_counter() - t0
    mb = sum(len(texts[i].encode("utf-8")) for i in train) / 1e6
    losses = " ".join(f"{x:.4f}" for x in clf.train_losses)
    print(f"trained {args.epochs} epochs in {dt:.2f} s ({mb * args.epochs / max(dt, 1e-9):.1f} MB/s); loss per epoch: {losses}")
    _print_eval("train", clf.evaluate([texts[i] for i in train], [labels[i] for i in train]))
    if valid:
        _print_eval("valid", clf.evaluate([texts[i] for i in valid], [labels[i] for i in valid]))
    clf.save(args.output)
    print(f"wrote {args.output}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from fastlm.data.classifier import TextClassifier
    from fastlm.data.readers import read_records, record_text

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_threads(args.threads)
    if args.field == args.text_field:
        raise ValueError(f"--field {args.field!r} would replace each record's text with its probabilities; "
                         "choose another output field")
    check_output(args.output, "-o", folder=False, inputs=args.inputs)
    if os.path.exists(args.output) and os.path.exists(args.model) and os.path.samefile(args.output, args.model):
        raise ValueError(f"-o {args.output!r} is the model file (-m): writing it would replace the model; "
                         "choose another output file")
    model = TextClassifier.load(args.model)
    errors = ErrorLog(strict=args.strict)
    predicted: Counter = Counter()
    written = 0
    t0 = time.perf_counter()
    with atomic_write(args.output) as out:
        batch: list = []

        def flush() -> None:
            nonlocal written
            texts = [record_text(r.data, args.text_field) for r in batch]  # text field, or the chat's turns
            proba = model.predict_proba(texts, num_threads=args.threads)
            for rec, p in zip(batch, proba):
                rec.data[args.field] = {str(label): round(float(x), 6) for label, x in zip(model.labels, p)}
                predicted[model.labels[int(p.argmax())]] += 1
                out.write(json_line(rec.data) + "\n")
            written += len(batch)
            batch.clear()

        for rec in read_records(args.inputs, text_field=args.text_field, errors=errors, exclude=(args.output,)):
            batch.append(rec)
            if len(batch) >= args.batch_size:
                flush()
        if batch:
            flush()
    dt = time.perf_counter() - t0
    if errors.total:
        print(f"skipped {errors.total} malformed records: "
              + ", ".join(f"{r} {n}" for r, n in sorted(errors.counts.items())), file=sys.stderr)
        for bad in errors.samples:
            print(f"  {bad}", file=sys.stderr)
    print(f"scored {written} records in {dt:.2f} s; predicted: "
          + ", ".join(f"{label}: {predicted[label]}" for label in model.labels))
    print(f"wrote {args.output}")
    return 0
