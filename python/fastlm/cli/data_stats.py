"""`fastlm data stats`: document counts, sizes, length percentiles, formats and malformed records."""

from __future__ import annotations

import argparse
import json

from fastlm.data.readers import FORMATS, TEXT_MODES
from fastlm.data.stats import PERCENTILES, corpus_stats


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stats", help="corpus statistics: documents, bytes, words, lengths, formats")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs, '-' or builtin:NAME")
    p.add_argument("--text-field", default="text", help="text field of JSON records (default: text)")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS, help="input format (default: auto)")
    p.add_argument("--text-mode", default="document", choices=TEXT_MODES, help="plain text: per file or paragraph")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=run)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:,.1f}"


def run(args: argparse.Namespace) -> int:
    s = corpus_stats(args.inputs, text_field=args.text_field, text_mode=args.text_mode, fmt=args.fmt)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"files {s['files']}  documents {s['documents']:,}  bytes {s['bytes']:,}  "
          f"chars {s['chars']:,}  words {s['words']:,}")
    cols = ["mean", "min", *[f"p{p}" for p in PERCENTILES], "max"]
    print(f"{'length':<10}" + "".join(f"{c:>11}" for c in cols))
    for key, label in (("chars_per_doc", "chars"), ("words_per_doc", "words")):
        print(f"{label:<10}" + "".join(f"{_fmt(s[key][c]):>11}" for c in cols))
    print("formats   " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["formats"].items())))
    print("kinds     " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["record_kinds"].items())))
    bad = s["malformed"]
    print(f"malformed {bad['total']:,}" + "".join(f"  {r} {n:,}" for r, n in sorted(bad["by_reason"].items())))
    for sample in bad["samples"][:5]:
        print(f"  e.g. {sample['source']}:{sample['line']}: {sample['reason']}: {sample['detail']}")
    return 0
