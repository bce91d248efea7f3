"""`fastlm data clean INPUT... -o OUT`: read -> normalize -> filter -> dedup -> write shards + report."""

from __future__ import annotations

import argparse
import os

from fastlm.cli.checks import check_output
from fastlm.cli.progress import DocProgress
from fastlm.config import apply_overrides, from_dict, load_config_file


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean",
        help="normalize, filter and deduplicate documents into JSONL/Parquet shards",
        description="Read -> normalize -> filter -> dedup -> write shards and report.json. "
        "Options come from --config (YAML/TOML, sections input/normalize/filters/dedup/output), "
        "then --set key=value, then the flags below.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs, '-' or builtin:NAME")
    p.add_argument("-o", "--out", required=True, help="output folder for shards and report.json")
    p.add_argument("--config", help="YAML or TOML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. dedup.threshold=0.7")
    p.add_argument("--text-field", help="JSON field holding the text (default: text)")
    p.add_argument("--text-mode", choices=("document", "paragraphs"), help="plain text: one document per file or per paragraph")
    p.add_argument("--format", dest="fmt", choices=("auto", "jsonl", "json", "text", "parquet"), help="input format")
    p.add_argument("--strict", action="store_true", default=None, help="stop at the first malformed record")
    p.add_argument("--html", action="store_true", default=None, help="strip HTML: tags, scripts/styles, entities")
    p.add_argument("--latex", choices=("keep-math", "drop-math"), help="strip LaTeX markup, keeping or dropping math")
    p.add_argument("--unicode-form", choices=("NFC", "NFKC", "none"), help="Unicode normalization (default NFC)")
    p.add_argument("--no-ftfy", action="store_true", help="skip mojibake repair")
    p.add_argument("--near", choices=("minhash", "simhash", "none"), help="near-duplicate method (default minhash)")
    p.add_argument("--threshold", type=float, help="MinHash Jaccard threshold (default 0.8)")
    p.add_argument("--no-exact", action="store_true", help="keep exact duplicates")
    p.add_argument("--no-quality", action="store_true", help="switch off the Gopher quality/repetition filters")
    p.add_argument("--c4", action="store_true", default=None, help="also apply the C4 filter")
    p.add_argument("--fineweb", action="store_true", default=None, help="also apply the FineWeb filter")
    p.add_argument("--lexicon", help="word-list file for the toxicity lexicon filter")
    p.add_argument("--classifier", help="classifier model from `fastlm data train-classifier`")
    p.add_argument("--classifier-label", help="label thresholded by --classifier (default toxic)")
    p.add_argument("--classifier-threshold", type=float, help="drop when P(label) >= this (default 0.5)")
    p.add_argument("--output-format", choices=("jsonl", "parquet"), help="shard format (default jsonl)")
    p.add_argument("--compression", choices=("gz", "zst"), help="compress JSONL shards")
    p.add_argument("--threads", type=int, help="native threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The CleanConfig of a command line: config file, then --set, then explicit flags."""
    from fastlm.data.normalize import NormalizeConfig
    from fastlm.data.pipeline import CleanConfig

    data = load_config_file(args.config) if args.config else {}
    data = apply_overrides(data, args.set)
    flags = {
        ("input", "text_field"): args.text_field,
        ("input", "text_mode"): args.text_mode,
        ("input", "format"): args.fmt,
        ("input", "strict"): args.strict,
        ("normalize", "html"): args.html,
        ("normalize", "latex"): True if args.latex else None,
        ("normalize", "latex_math"): args.latex.split("-")[0] if args.latex else None,
        ("normalize", "fix_mojibake"): False if args.no_ftfy else None,
        ("dedup", "near"): args.near,
        ("dedup", "threshold"): args.threshold,
        ("dedup", "exact"): False if args.no_exact else None,
        ("filters", "gopher_quality"): False if args.no_quality else None,
        ("filters", "gopher_repetition"): False if args.no_quality else None,
        ("filters", "c4"): args.c4,
        ("filters", "fineweb"): args.fineweb,
        ("filters", "lexicon"): args.lexicon,
        ("filters", "classifier"): args.classifier,
        ("filters", "classifier_label"): args.classifier_label,
        ("filters", "classifier_threshold"): args.classifier_threshold,
        ("output", "format"): args.output_format,
        ("output", "compression"): args.compression,
        ("num_threads",): args.threads,
    }
    for path, value in flags.items():
        if value is None:
            continue
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    if args.unicode_form:  # "none" must set None, which the loop above reads as "not given"
        data.setdefault("normalize", {})["unicode_form"] = None if args.unicode_form == "none" else args.unicode_form
    where = args.config or "config"
    normalize = data.pop("normalize", None)
    cfg = from_dict(CleanConfig, data, where=where)
    cfg.normalize = from_dict(NormalizeConfig, normalize or {}, where=f"{where}.normalize")
    return cfg


def run(args: argparse.Namespace) -> int:
    from fastlm.data.pipeline import clean

    cfg = config_from_args(args)
    check_output(args.out, "-o", folder=True)
    progress = DocProgress("clean", enabled=not args.quiet)
    try:
        report = clean(args.inputs, args.out, cfg, progress=progress.callback)
    finally:
        progress.close()
    if not args.quiet:
        report.print_table()
        print(f"wrote {len(report.outputs)} shard(s) and report.json to {os.path.abspath(args.out)}")
    return 0
