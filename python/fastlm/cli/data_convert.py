"""`fastlm data convert`: convert chat/instruction data between Alpaca, messages and ShareGPT formats."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
from typing import IO

from fastlm.cli.checks import check_output
from fastlm.data.chat import TARGETS, convert_records
from fastlm.data.io import atomic_write, json_line
from fastlm.data.readers import FORMATS, TEXT_MODES, read_records
from fastlm.data.records import ErrorLog


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert chat/instruction records (alpaca, sharegpt, messages, prompt/completion)",
        description="Convert chat/instruction records to one format. A multi-turn chat converted to "
        "alpaca gives one record per assistant turn, earlier turns as context in 'input'; a turn's keys "
        "other than role/content (name, weight...) have no place there: such records are converted and "
        "counted as turn_keys_dropped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs, '-' or builtin:NAME")
    p.add_argument("--to", required=True, choices=TARGETS, help="output format")
    p.add_argument("-o", "--output", required=True, help="output JSONL file (.gz/.zst compressed by name; '-' = stdout)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed or unconvertible record")
    p.add_argument("--text-field", default="text", help="text field of non-chat records (default: text)")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS, help="input format (default: auto)")
    p.add_argument("--text-mode", default="document", choices=TEXT_MODES, help="plain text: per file or paragraph")
    p.add_argument("--report", help="also write the counts as JSON to this file")
    p.set_defaults(func=run)


def _write(out: IO[bytes], lines, compression: str) -> int:
    if compression == "gz":
        stream: IO[bytes] = gzip.GzipFile(fileobj=out, mode="wb", mtime=0)
    elif compression == "zst":
        import zstandard

        stream = zstandard.ZstdCompressor(write_checksum=True).stream_writer(out, closefd=False)
    else:
        stream = out
    n = 0
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n", write_through=True)
    for record in lines:
        text.write(json_line(record) + "\n")
        n += 1
    text.flush()
    text.detach()
    if stream is not out:
        stream.close()
    return n


def run(args: argparse.Namespace) -> int:
    if args.output != "-":
        check_output(args.output, "-o", folder=False, inputs=args.inputs)
    if args.report:
        check_output(args.report, "--report", folder=False, inputs=args.inputs)
        if args.output != "-" and os.path.abspath(args.report) == os.path.abspath(args.output):
            raise ValueError(f"--report {args.report!r} is also -o: the counts would replace the converted records")
    malformed = ErrorLog(strict=args.strict)
    failed = ErrorLog(strict=args.strict)
    dropped = ErrorLog()  # converted, but turn keys the target cannot hold were left out
    counter = {"read": 0}

    def counted(records):
        for r in records:
            counter["read"] += 1
            yield r

    records = read_records(args.inputs, text_field=args.text_field, text_mode=args.text_mode, fmt=args.fmt,
                           errors=malformed, exclude=() if args.output == "-" else (args.output,))
    converted = convert_records(counted(records), args.to, errors=failed, dropped=dropped)
    if args.output == "-":
        sys.stdout.flush()
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a text-only stdout (e.g. replaced in tests)
            n_out = 0
            for record in converted:
                sys.stdout.write(json_line(record) + "\n")
                n_out += 1
        else:
            n_out = _write(buffer, converted, "")
            buffer.flush()
    else:
        name = args.output.lower()
        compression = "gz" if name.endswith(".gz") else "zst" if name.endswith((".zst", ".zstd")) else ""
        with atomic_write(args.output, "wb") as f:
            n_out = _write(f, converted, compression)
    report = {
        "records": counter["read"] + malformed.total,  # every record in the inputs, malformed ones included
        "read": counter["read"],  # the well-formed ones: converted + failed
        "converted": counter["read"] - failed.total,
        "failed": failed.to_dict(),
        "output_records": n_out,
        "malformed": malformed.to_dict(),
        "turn_keys_dropped": dropped.to_dict(),
        "to": args.to,
        "output": args.output,
    }
    if args.report:
        with atomic_write(args.report) as f:
            json.dump(report, f, indent=2)
    log = sys.stderr if args.output == "-" else sys.stdout
    print(f"read {report['records']} records: {report['read']} well-formed, {malformed.total} malformed (skipped)",
          file=log)
    lost = f" ({dropped.total} with turn keys dropped)" if dropped.total else ""
    print(f"converted {report['converted']}{lost}, failed {failed.total}; wrote {n_out} {args.to} records to "
          f"{args.output}", file=log)
    for title, errlog in (("malformed", malformed), ("not converted", failed), ("keys dropped", dropped)):
        for reason, count in sorted(errlog.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {title:<14} {reason:<28} {count:>8}", file=log)
        for sample in errlog.samples[:3]:
            print(f"    e.g. {sample}", file=log)
    return 0
