"""`fastlm data dedup`: exact + near-duplicate removal, in one shot or in stages over many shards.

One shot: ``fastlm data dedup INPUT... -o OUT`` reads the records (malformed ones counted with
file:line), removes exact and near duplicates of the raw text (no normalization or filters:
``fastlm data clean`` does those) with ``pipeline.deduplicate``, writes the kept records, all
fields intact and in input order, into shards and writes ``report.json``. Shards are written under
a staging folder in OUT and moved in only when the run completes; earlier shards are replaced.

Staged (MinHash only; SimHash staging is not implemented), for many shards or workers:
    --stage signatures SHARD_INPUT... -o sigs/part-K.npz --shard K   one input shard -> signatures
    --stage bands sigs/part-*.npz -o keys/                            band keys, one file per input
    --stage cluster keys/*.npz -o clusters.npz                        all shards' keys -> clusters
    --stage filter SHARD_INPUT... --clusters clusters.npz --shard K -o OUT
                                                                      the shard's kept records
Parameters travel in the files (a flag that the files already fix is refused), and files made
with different parameters are refused by fastlm.data.dedup_files. The staged result equals the
one-shot result with ``--verify signature``: the same kept records, removal counts and clusters.
The filter stage writes ``part-K-NNNNN.jsonl`` and ``part-K.report.json`` into OUT, so all
shards can share one OUT. A folder or glob input of the signatures and filter stages leaves out the
pipeline's outputs below it (dedup files, folders holding a filter report), as it leaves out -o.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable

from fastlm.cli.checks import check_output, check_range, check_threads
from fastlm.cli.progress import DocProgress

STAGES = ("signatures", "bands", "cluster", "filter")
MAX_NGRAM = 1024  # longer than a document's word count is one shingle, the whole document
MAX_SHARD = 99_999  # the filter stage names its output part-KKKKK: five digits keep the names in shard order
_FILTER_SHARD = re.compile(r"(part-\d{5,})-\d{5,}\.(?:jsonl|parquet)")  # the filter stage's shard names
# Flags with a default of None, the defaults used when they apply and were not given.
DEFAULTS = {"method": "minhash", "threshold": 0.8, "num_perm": 128, "ngram": 5, "seed": 1,
            "hash": "fast", "verify": "auto", "simhash_k": 3, "keep": "first", "text_field": "text",
            "fmt": "auto", "text_mode": "document", "output_format": "jsonl"}
_READ = {"text_field", "fmt", "text_mode", "strict"}
_MINHASH = {"threshold", "num_perm", "ngram", "seed", "hash", "bands", "rows", "verify"}
# Which optional flags each mode accepts (threads and quiet are always accepted).
ACCEPTS = {
    None: _READ | _MINHASH | {"method", "simhash_k", "no_exact", "keep", "output_format"},
    "signatures": _READ | {"method", "num_perm", "ngram", "seed", "hash", "shard"},
    "bands": {"threshold", "bands", "rows"},
    "cluster": {"threshold", "verify", "no_exact", "keep"},
    "filter": _READ | {"clusters", "shard", "output_format"},
}
FLAG_NAMES = {"fmt": "--format", "no_exact": "--no-exact"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dedup",
        help="remove exact and near-duplicate documents (one shot, or staged over shards)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, directories, globs, '-' or builtin:NAME (staged: the stage's input files)")
    p.add_argument("-o", "--out", required=True,
                   help="output folder (one shot, filter), file (signatures, cluster) or folder (bands)")
    p.add_argument("--stage", choices=STAGES, help="run one stage of the staged pipeline")
    p.add_argument("--shard", type=int, help=f"shard index K in [0, {MAX_SHARD}] (signatures and filter stages)")
    p.add_argument("--clusters", help="cluster file from --stage cluster (filter stage)")
    p.add_argument("--method", choices=("minhash", "simhash", "exact"), help="near-dup method (default minhash; exact: exact copies only)")
    p.add_argument("--threshold", type=float, help="MinHash Jaccard threshold in (0, 1] (default 0.8)")
    p.add_argument("--num-perm", type=int, help="MinHash permutations (default 128)")
    p.add_argument("--ngram", type=int,
                   help=f"word n-gram size in [1, {MAX_NGRAM}] (default 5; with --method simhash: 3)")
    p.add_argument("--seed", type=int, help="MinHash permutation seed (default 1)")
    p.add_argument("--hash", choices=("fast", "datasketch", "datasketch-legacy"),
                   help="MinHash hash (default fast; datasketch: its signatures bit for bit)")
    p.add_argument("--bands", type=int, help="LSH bands (with --rows; default: chosen for the threshold)")
    p.add_argument("--rows", type=int, help="LSH rows per band (with --bands)")
    p.add_argument("--verify", choices=("auto", "signature", "jaccard"), help="MinHash candidate check (default auto; staged: signature)")
    p.add_argument("--simhash-k", type=int, help="SimHash max Hamming distance (default 3)")
    p.add_argument("--no-exact", action="store_true", default=None, help="do not remove exact copies first")
    p.add_argument("--keep", choices=("first", "longest"), help="kept document of a cluster (default first)")
    p.add_argument("--text-field", help="JSON field holding the text (default: text)")
    p.add_argument("--format", dest="fmt", choices=("auto", "jsonl", "json", "text", "parquet"), help="input format")
    p.add_argument("--text-mode", choices=("document", "paragraphs"), help="plain text: one document per file or per paragraph")
    p.add_argument("--strict", action="store_true", default=None, help="stop at the first malformed record")
    p.add_argument("--output-format", choices=("jsonl", "parquet"), help="shard format (default jsonl)")
    p.add_argument("--threads", type=int, default=0, help="native threads (default 0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------ flags


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    return DEFAULTS.get(name) if value is None else value


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags the mode does not use and values out of range (ValueError -> exit 2)."""
    mode = args.stage
    given = {k for k in ACCEPTS[None] | {"shard", "clusters"} if getattr(args, k) is not None}
    where = f"--stage {mode}" if mode else "one-shot dedup (no --stage)"
    for name in sorted(given - ACCEPTS[mode]):
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        why = " (parameters come from the input files)" if mode in ("bands", "cluster", "filter") else ""
        raise ValueError(f"{flag} does not apply to {where}{why}")
    method = _opt(args, "method")
    if mode and method != "minhash":
        raise ValueError(f"--stage supports --method minhash only, not {method!r} (SimHash and exact-only "
                         "staging are not implemented; use one-shot dedup)")
    if method != "minhash":
        for name in sorted(given & _MINHASH - ({"ngram"} if method == "simhash" else set())):
            raise ValueError(f"--{name.replace('_', '-')} applies to --method minhash only, not {method!r}")
    if method != "simhash" and args.simhash_k is not None:
        raise ValueError("--simhash-k applies to --method simhash only")
    if method == "exact" and args.no_exact:
        raise ValueError("--method exact with --no-exact removes nothing")
    if mode in ("signatures", "filter") and args.shard is None:
        raise ValueError(f"--stage {mode} needs --shard K")
    if args.shard is not None:
        check_range(args.shard, "--shard", 0, MAX_SHARD)
    if mode == "filter" and not args.clusters:
        raise ValueError("--stage filter needs --clusters FILE (from --stage cluster)")
    if mode == "cluster" and args.verify not in (None, "signature"):
        raise ValueError("--stage cluster verifies by the signature estimate only (texts are not "
                         f"available there), not --verify {args.verify}")
    threshold = args.threshold
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
    num_perm = _opt(args, "num_perm")
    if not 1 <= num_perm <= 1 << 16:
        raise ValueError(f"--num-perm must be in [1, 65536], got {num_perm}")
    check_range(_opt(args, "ngram"), "--ngram", 1, MAX_NGRAM)
    if args.simhash_k is not None and not 0 <= args.simhash_k < 64:
        raise ValueError(f"--simhash-k must be in [0, 63], got {args.simhash_k}")
    if (args.bands is None) != (args.rows is None):
        raise ValueError("--bands and --rows go together")
    if args.bands is not None:
        if args.bands < 1 or args.rows < 1:
            raise ValueError(f"--bands and --rows must be >= 1, got {args.bands} and {args.rows}")
        if mode is None and args.bands * args.rows > num_perm:  # bands stage: checked against the files
            raise ValueError(f"--bands {args.bands} x --rows {args.rows} = {args.bands * args.rows} "
                             f"exceeds --num-perm {num_perm}")
    from fastlm.data.dedup import MAX_AUTO_BANDS_PERM

    if mode is None and method == "minhash" and args.bands is None and num_perm > MAX_AUTO_BANDS_PERM:
        raise ValueError(f"--num-perm {num_perm} needs --bands and --rows: the default banding is searched "
                         f"for --num-perm <= {MAX_AUTO_BANDS_PERM} only")
    if args.seed is not None and _opt(args, "hash") == "fast" and not 0 <= args.seed < 1 << 64:
        raise ValueError(f"--seed must be in [0, 2**64), got {args.seed}")
    check_threads(args.threads)
    check_output(args.out, "-o", folder=mode not in ("signatures", "cluster"))


def dedup_config(args: argparse.Namespace):
    """The pipeline.DedupConfig of a one-shot command line."""
    from fastlm.data.pipeline import DedupConfig

    method = _opt(args, "method")
    fields = {
        "exact": not args.no_exact,
        "near": "none" if method == "exact" else method,
        **{k: _opt(args, k) for k in ("threshold", "num_perm", "ngram", "seed", "hash", "verify", "simhash_k", "keep")},
    }
    if args.bands is not None:
        fields["bands"] = (args.bands, args.rows)
    if method == "simhash" and args.ngram is not None:
        fields["simhash_ngram"] = args.ngram
    return DedupConfig(**fields)


# ------------------------------------------------------------------------------ shared plumbing


def _read(inputs: list[str], args: argparse.Namespace, errors) -> Iterable:
    """The records of the inputs; the command's own output (-o) is never read back from a folder or
    glob, nor, in the staged pipeline, any stage's output (`_stage_outputs`)."""
    from fastlm.data.io import expand_inputs
    from fastlm.data.readers import read_records

    exclude = [args.out]
    if args.stage:
        exclude += _stage_outputs(expand_inputs(inputs, exclude=exclude))
    return read_records(inputs, text_field=_opt(args, "text_field"), text_mode=_opt(args, "text_mode"),
                        fmt=_opt(args, "fmt"), errors=errors, exclude=exclude)


def _stage_outputs(files: list[str]) -> list[str]:
    """The staged pipeline's outputs among the files an input expands to: dedup files (signatures,
    band keys, clusters) and the folders holding a filter stage's shards (with its part-K.report.json).

    The signatures and filter stages leave them out as they leave out their own -o: when a folder or
    glob reaches them, e.g. ``in/`` with ``-o in/sigs/part-0.npz`` and filter's ``-o in/out``, so a
    re-run never reads the last run's outputs as documents; an input that names one is read."""
    from fastlm.data.dedup_files import is_dedup_file

    found: set[str] = set()
    for f in files:
        m = _FILTER_SHARD.fullmatch(os.path.basename(f))
        if m and _is_filter_report(os.path.join(os.path.dirname(f), m.group(1) + ".report.json")):
            found.add(os.path.dirname(f) or os.curdir)
        elif os.path.isfile(f) and is_dedup_file(f):
            found.add(f)
    return sorted(found)


def _is_filter_report(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            params = json.load(f).get("params")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(params, dict) and "clusters" in params and "shard" in params


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _finish(report, errors, t0: float) -> None:
    report.malformed.update(errors.counts)
    report.documents_in += errors.total
    report.malformed_samples = [dataclasses.asdict(b) for b in errors.samples]
    report.seconds = time.perf_counter() - t0
    report.check()


def _largest(clusters: list[list[int]], where: Callable[[int], str], sample: dict[int, str]) -> list[dict]:
    """Report entries of the 5 largest clusters: size, members (as file:line), kept doc's sample."""
    return [{"size": len(c), "members": [where(i) for i in c[:10]], "sample": sample.get(c[0], "")[:300]}
            for c in sorted(clusters, key=lambda c: (-len(c), c[0]))[:5]]


# ------------------------------------------------------------------------------ one shot


def dedup_one_shot(inputs: list[str], out_dir: str, args: argparse.Namespace):
    """Read -> exact + near dedup -> shards + report.json in out_dir; returns the StageReport.

    This is `fastlm data clean` with only its dedup step (no normalization, no filters).
    """
    from fastlm.data.pipeline import CleanConfig, InputConfig, OutputConfig, clean

    cfg = CleanConfig(
        input=InputConfig(text_field=_opt(args, "text_field"), text_mode=_opt(args, "text_mode"),
                          format=_opt(args, "fmt"), strict=bool(args.strict)),
        dedup=dedup_config(args),
        output=OutputConfig(format=_opt(args, "output_format")),
        steps=("dedup",),
        num_threads=args.threads,
    )
    progress = DocProgress("dedup", enabled=not args.quiet)
    try:
        return clean(inputs, out_dir, cfg, progress=progress.callback)
    finally:
        progress.close()


# ------------------------------------------------------------------------------ stages


def stage_signatures(inputs: list[str], out: str, args: argparse.Namespace) -> str:
    """Stage 1: one input shard's MinHash signatures (and exact hashes) into `out`."""
    from fastlm.data.dedup import MinHasher
    from fastlm.data.dedup_files import write_signatures
    from fastlm.data.io import refuse_input_as_output
    from fastlm.data.readers import record_text
    from fastlm.data.records import ErrorLog

    refuse_input_as_output(out, inputs)
    mh = MinHasher(num_perm=_opt(args, "num_perm"), ngram=_opt(args, "ngram"), seed=_opt(args, "seed"),
                   hash=_opt(args, "hash"))
    errors = ErrorLog(strict=bool(args.strict))
    texts = [record_text(r.data, _opt(args, "text_field")) for r in _read(inputs, args, errors)]
    if os.path.dirname(os.path.abspath(out)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_signatures(out, texts, minhasher=mh, shard=args.shard, num_threads=args.threads)
    return (f"shard {args.shard}: {len(texts):,} documents ({errors.total:,} malformed skipped) "
            f"-> {out}")


def stage_bands(inputs: list[str], out: str, args: argparse.Namespace) -> str:
    """Stage 2: band keys of each signature file, into folder `out` under the same file names."""
    from fastlm.data.dedup_files import write_band_keys
    from fastlm.data.io import expand_inputs

    files = expand_inputs(inputs, exclude=(out,))
    names = [os.path.basename(f) for f in files]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"signature files with the same name would overwrite each other's keys: {dups[0]}")
    for f in files:
        keys = os.path.join(out, os.path.basename(f))
        if os.path.isfile(keys) and os.path.samefile(keys, f):
            raise ValueError(f"-o {out!r} holds the signature file {f!r}: its band keys would replace it; "
                             "choose another output folder")
    os.makedirs(out, exist_ok=True)
    bands = (args.bands, args.rows) if args.bands is not None else None
    threshold = _opt(args, "threshold")
    for f in files:
        h = write_band_keys(os.path.join(out, os.path.basename(f)), f, threshold=threshold, bands=bands,
                            num_threads=args.threads)
    return f"{len(files)} band-key file(s), {h['bands']} bands x {h['rows']} rows -> {out}"


def stage_cluster(inputs: list[str], out: str, args: argparse.Namespace) -> str:
    """Stage 3: merge every shard's band keys into one cluster file."""
    from fastlm.data.dedup_files import cluster_files
    from fastlm.data.io import expand_inputs, refuse_input_as_output

    refuse_input_as_output(out, inputs)
    if os.path.dirname(os.path.abspath(out)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    r = cluster_files(out, expand_inputs(inputs, exclude=(out,)), threshold=args.threshold, exact=not args.no_exact,
                      keep=_opt(args, "keep"), num_threads=args.threads)
    exact = r.stats["exact_removed"]
    return (f"{len(r.cluster):,} documents: {exact:,} exact_dup, {r.counts['removed'] - exact:,} near_dup "
            f"removed; {r.stats['exact_clusters'] + r.counts['clusters']:,} clusters -> {out}")


def stage_filter(inputs: list[str], out_dir: str, args: argparse.Namespace):
    """Stage 4: the kept records of shard K into out_dir (part-K-*.jsonl + part-K.report.json)."""
    import numpy as np

    from fastlm.data.dedup import exact_hashes
    from fastlm.data.dedup_files import read_header, shard_result
    from fastlm.data.io import ShardWriter, publish_shards
    from fastlm.data.readers import record_text
    from fastlm.data.records import ErrorLog
    from fastlm.data.report import StageReport

    t0 = time.perf_counter()
    res = shard_result(args.clusters, args.shard)
    header = read_header(args.clusters)
    text_field = _opt(args, "text_field")
    prefix = f"part-{args.shard:05d}"
    params = {k: header.get(k) for k in ("method", "num_perm", "ngram", "seed", "hash", "bands", "rows",
                                         "threshold", "exact", "keep")}
    report = StageReport(params={"dedup": params, "clusters": args.clusters, "shard": args.shard,
                                 "inputs": list(inputs)})
    errors = ErrorLog(strict=bool(args.strict))
    m = len(res.keep)
    firsts = {c[0] - res.offset for c in res.clusters}
    shown = {g - res.offset for c in sorted(res.clusters, key=lambda c: (-len(c), c[0]))[:5] for g in c[:10]}
    sample: dict[int, str] = {}  # local index -> text, for the clusters' first members
    where: dict[int, str] = {}  # local index -> file:line, for the members the report shows
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=out_dir)
    progress = DocProgress(f"filter {args.shard}", enabled=not args.quiet)

    def check_same(batch: list[str], start: int) -> None:  # the documents stage 1 hashed, in order
        if start + len(batch) > m:
            raise ValueError(f"the inputs hold more documents than shard {args.shard} of {args.clusters} "
                             f"({m}): not the inputs of its signature stage (or other reading flags)")
        if res.hashes is not None and len(batch):
            bad = np.flatnonzero((exact_hashes(batch, num_threads=args.threads) != res.hashes[start:start + len(batch)]).any(1))
            if len(bad):
                raise ValueError(f"document {start + int(bad[0])} of the inputs differs from shard {args.shard}'s "
                                 f"document in {args.clusters}: not the inputs of its signature stage")

    try:
        with ShardWriter(os.path.join(staging, "out"), prefix=prefix, fmt=_opt(args, "output_format")) as writer:
            i, batch, pending = 0, [], []
            for r in _read(inputs, args, errors):
                text = record_text(r.data, text_field)
                report.bytes_in += _utf8_len(text)
                if i in firsts:
                    sample[i] = text
                if i in shown:
                    where[i] = f"{r.source}:{r.line}"
                batch.append(text)
                pending.append(r.data)
                i += 1
                if i % 1024 == 0:
                    progress(i, report.bytes_in)
                if len(batch) == 4096:
                    check_same(batch, i - len(batch))
                    for j, data in enumerate(pending, i - len(batch)):
                        _write_kept(writer, report, res, j, data, text_field)
                    batch, pending = [], []
            check_same(batch, i - len(batch))
            for j, data in enumerate(pending, i - len(batch)):
                _write_kept(writer, report, res, j, data, text_field)
            if i != m:
                raise ValueError(f"the inputs hold {i} documents, shard {args.shard} of {args.clusters} has {m}: "
                                 "not the inputs of its signature stage (or other reading flags)")
        report.documents_in = m
        report.removed.update({k: int(v.sum()) for k, v in (("exact_dup", res.exact_dup),
                                                            ("near_dup", res.near_dup)) if v.any()})
        report.clusters = len(res.clusters)

        def member(g: int) -> str:
            local = g - res.offset
            return where[local] if local in where else _elsewhere(header, g)

        report.largest_clusters = _largest(res.clusters, member, {k + res.offset: v for k, v in sample.items()})
        _finish(report, errors, t0)
        report.outputs = publish_shards(writer.paths, out_dir, prefix)
        report.write_json(os.path.join(out_dir, f"{prefix}.report.json"))
        return report
    finally:
        progress.close()
        shutil.rmtree(staging, ignore_errors=True)


def _write_kept(writer, report, res, i: int, data: dict, text_field: str) -> None:
    from fastlm.data.readers import record_text

    if res.keep[i]:
        writer.write(data)
        report.kept += 1
        report.bytes_out += _utf8_len(record_text(data, text_field))


def _elsewhere(header: dict, g: int) -> str:
    """A member in another shard: "shard K #i" (i: its index among shard K's documents)."""
    import bisect

    k = bisect.bisect_right(header["offsets"], g) - 1
    return f"shard {header['shards'][k]} #{g - header['offsets'][k]}"


# ------------------------------------------------------------------------------ entry


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.stage in (None, "filter"):
        if args.stage is None:
            report = dedup_one_shot(args.inputs, args.out, args)
        else:
            report = stage_filter(args.inputs, args.out, args)
        if not args.quiet:
            report.print_table()
            print(f"wrote {len(report.outputs)} shard(s) and the report to {os.path.abspath(args.out)}")
        return 0
    stage = {"signatures": stage_signatures, "bands": stage_bands, "cluster": stage_cluster}[args.stage]
    line = stage(args.inputs, args.out, args)
    if not args.quiet:
        print(line)
    return 0
