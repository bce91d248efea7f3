"""`fastlm data clean` as a library function: read -> normalize -> filter -> dedup -> write shards.

Two passes, so memory holds per-document hashes and signatures but never the corpus:
1. stream the inputs in batches: normalize, drop empty documents, run the instruction and document
   filters, and append each survivor to a staging JSONL file while computing its exact-dup hash
   and near-dup signature natively;
2. cluster duplicates over all signatures, then stream the staging file once more and write the
   kept records into shards.
Shards and the report are written under a staging folder and moved into the output folder only
when the run completes, so an interrupted run leaves no half-written shard and can be re-run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import numpy as np

from fastlm.data import chat
from fastlm.data.filter_base import DocFilter
from fastlm.data.records import MAX_THREADS, ErrorLog, Record
from fastlm.data.report import StageReport


@dataclasses.dataclass
class InputConfig:
    text_field: str = "text"  # JSON field holding the document; chat records need none
    text_mode: Literal["document", "paragraphs"] = "document"  # plain text: per file or per blank-line paragraph
    format: Literal["auto", "jsonl", "json", "text", "parquet"] = "auto"  # auto: by extension, else sniffed
    strict: bool = False  # stop at the first malformed record instead of counting and skipping it


@dataclasses.dataclass
class FilterConfig:
    drop_empty: bool = True  # documents empty after normalization carry nothing to train on
    gopher_quality: bool = True  # Rae et al. 2021 heuristics (word counts, symbols, stop words)
    gopher_repetition: bool = True  # Rae et al. 2021 repetition heuristics (dup lines, n-grams)
    c4: bool = False  # Raffel et al. 2020: strict on line punctuation, off by default for non-web text
    fineweb: bool = False  # Penedo et al. 2024: web-page heuristics, off by default for non-web text
    instruct: bool = True  # empty / prompt-repeating responses and duplicate prompts in chat records
    max_chars: Optional[int] = None  # instruction records longer than this are dropped (None: no limit)
    lexicon: Optional[str] = None  # word-list file: documents with a listed word are dropped
    classifier: Optional[str] = None  # a `fastlm data train-classifier` model file
    classifier_label: str = "toxic"  # the label whose probability is thresholded
    classifier_threshold: float = 0.5  # drop when P(label) >= threshold
    detoxify: Optional[str] = None  # detoxify model name ("original", ...), when installed locally
    detoxify_threshold: float = 0.5  # drop when the toxicity score >= threshold


@dataclasses.dataclass
class DedupConfig:
    exact: bool = True  # drop exact copies of the normalized text (128-bit hash)
    near: Literal["minhash", "simhash", "none"] = "minhash"  # near-duplicate method
    threshold: float = 0.8  # MinHash: Jaccard similarity of word n-gram sets
    num_perm: int = 128  # MinHash permutations (datasketch's default)
    ngram: int = 5  # word n-gram shingle size (text-dedup / datatrove use 5)
    seed: int = 1  # permutation seed
    hash: Literal["fast", "datasketch", "datasketch-legacy"] = "fast"  # datasketch modes: its exact signatures
    bands: Optional[tuple[int, int]] = None  # (bands, rows); None: banded for recall (dedup.recall_bands)
    simhash_k: int = 3  # SimHash: max Hamming distance of 64-bit fingerprints
    simhash_ngram: int = 3  # SimHash: word n-gram features (short n: weighted local edits)
    keep: Literal["first", "longest"] = "first"  # which document of a cluster is kept
    verify: Literal["auto", "signature", "jaccard"] = "auto"  # MinHash candidate check (see dedup.minhash_dedup)


@dataclasses.dataclass
class OutputConfig:
    format: Literal["jsonl", "parquet"] = "jsonl"  # shard file format
    compression: Optional[Literal["gz", "zst"]] = None  # JSONL shard compression
    max_records: Optional[int] = None  # records per shard (None: bounded by max_bytes only)
    max_bytes: int = 100_000_000  # uncompressed bytes per shard
    prefix: str = "shard"  # shard file names: <prefix>-00000.jsonl


STEPS = ("normalize", "filter", "dedup")


@dataclasses.dataclass
class CleanConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    normalize: Any = None  # NormalizeConfig (fastlm.data.normalize); None: its defaults
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    steps: tuple[str, ...] = ("normalize", "filter", "dedup")  # `fastlm data dedup` runs ("dedup",) alone
    batch_size: int = 2048  # documents per native call (amortizes the GIL release)
    num_threads: int = 0  # native threads; 0 = all cores


def build_doc_filters(config: FilterConfig, *, num_threads: int = 0) -> list[DocFilter]:
    """The document filters the config enables, in the order they run."""
    filters: list[DocFilter] = []
    if config.gopher_quality or config.gopher_repetition or config.c4 or config.fineweb:
        from fastlm.data import quality

        filters += quality.build_filters(
            gopher_quality=config.gopher_quality,
            gopher_repetition=config.gopher_repetition,
            c4=config.c4,
            fineweb=config.fineweb,
        )
    if config.lexicon:
        from fastlm.data.lexicon import LexiconFilter

        filters.append(LexiconFilter(config.lexicon, num_threads=num_threads))
    if config.classifier:
        from fastlm.data.classifier import ClassifierFilter

        filters.append(ClassifierFilter(config.classifier, label=config.classifier_label,
                                        threshold=config.classifier_threshold, num_threads=num_threads))
    if config.detoxify:
        from fastlm.data.classifier import DetoxifyFilter

        filters.append(DetoxifyFilter(model=config.detoxify, threshold=config.detoxify_threshold))
    return filters


def check_dedup_config(config: DedupConfig) -> None:
    """Raise ValueError for parameters the dedup step would refuse, before any input is read."""
    from fastlm.data import dedup as dd

    if config.near == "minhash":
        if not 0.0 < config.threshold <= 1.0:
            raise ValueError(f"dedup.threshold must be in (0, 1], got {config.threshold}")
        dd.MinHasher(num_perm=config.num_perm, ngram=config.ngram, seed=config.seed, hash=config.hash)
        if config.bands is not None:
            b, r = config.bands
            if b < 1 or r < 1 or b * r > config.num_perm:
                raise ValueError(f"dedup.bands={b} x rows={r} must be >= 1 and use at most num_perm={config.num_perm}")
        elif config.num_perm > dd.MAX_AUTO_BANDS_PERM:  # else refused by the dedup step, after the reading
            raise ValueError(f"dedup.num_perm={config.num_perm} needs dedup.bands: the default banding is searched "
                             f"for num_perm <= {dd.MAX_AUTO_BANDS_PERM} only")
    elif config.near == "simhash":
        if not 0 <= config.simhash_k < 64:
            raise ValueError(f"dedup.simhash_k must be in [0, 63], got {config.simhash_k}")
        if config.simhash_ngram < 1:
            raise ValueError(f"dedup.simhash_ngram must be >= 1, got {config.simhash_ngram}")


def deduplicate(
    texts: list[str], config: DedupConfig, *, num_threads: int = 0
) -> tuple[np.ndarray, Counter, list[list[int]]]:
    """(keep mask, removed counts {"exact_dup", "near_dup"}, clusters as index lists) for texts.

    Exact duplicates go first; near-duplicates are then searched among the exact survivors, so
    each removed document is counted once, under the first reason that applies.
    """
    from fastlm.data import dedup as dd

    n = len(texts)
    keep = np.ones(n, dtype=bool)
    removed: Counter = Counter()
    clusters: list[list[int]] = []
    if n == 0:
        return keep, removed, clusters
    if config.exact:
        r = dd.exact_dedup(texts, keep=config.keep, num_threads=num_threads)
        keep &= r.keep
        removed["exact_dup"] = int(n - r.keep.sum())
        clusters += r.clusters
    if config.near != "none":
        idx = np.flatnonzero(keep)
        sub = [texts[i] for i in idx]
        if config.near == "minhash":
            r = dd.minhash_dedup(
                sub, threshold=config.threshold, num_perm=config.num_perm, ngram=config.ngram,
                seed=config.seed, hash=config.hash, bands=config.bands, verify=config.verify,
                keep=config.keep, num_threads=num_threads,
            )
        else:
            r = dd.simhash_dedup(
                sub, k=config.simhash_k, ngram=config.simhash_ngram, keep=config.keep, num_threads=num_threads
            )
        keep[idx[~r.keep]] = False
        removed["near_dup"] = int((~r.keep).sum())
        clusters += [idx[c].tolist() for c in r.clusters]
    removed = Counter({k: v for k, v in removed.items() if v})
    return keep, removed, clusters


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for r in records:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Normalizer:
    """Applies fastlm.data.normalize to a batch of records, keeping each record's layout."""

    def __init__(self, config: Any, text_field: str, num_threads: int):
        from fastlm.data.normalize import NormalizeConfig, Normalizer

        self.norm = Normalizer(config if config is not None else NormalizeConfig(), num_threads=num_threads)
        self.text_field = text_field

    def __call__(self, batch: list[Record]) -> None:
        plain = [r for r in batch if isinstance(chat.get_field(r.data, self.text_field), str)]
        if plain:
            texts = self.norm.normalize_batch([chat.get_field(r.data, self.text_field) for r in plain])
            for r, t in zip(plain, texts):
                _set_field(r.data, self.text_field, t)
        for r in batch:
            if not isinstance(chat.get_field(r.data, self.text_field), str):
                r.data = chat.map_contents(r.data, self.norm.normalize)


def _set_field(data: dict[str, Any], field: str, value: str) -> None:
    if field in data or "." not in field:
        data[field] = value
        return
    node = data
    parts = field.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def clean(
    inputs: list[str],
    out_dir: str,
    config: Optional[CleanConfig] = None,
    *,
    progress: Optional[Callable[[int, int], None]] = None,
) -> StageReport:
    """Run read -> normalize -> filter -> dedup -> write over ``inputs``; return the report.

    ``progress(docs, bytes)`` is called after each batch. The shards, ``report.json`` and nothing
    else appear in ``out_dir`` (earlier shards of the same prefix there are replaced).

    >>> import tempfile
    >>> rep = clean(["builtin:pydoc"], tempfile.mkdtemp())
    >>> rep.documents_in == rep.kept + sum(rep.removed.values()) + sum(rep.malformed.values())
    True
    """
    from fastlm.data.instruct import InstructConfig, build_instruct_filters, check_instruct
    from fastlm.data.io import ShardWriter, json_line, publish_shards
    from fastlm.data.readers import read_records

    cfg = config or CleanConfig()
    t0 = time.perf_counter()
    report = StageReport(params=dataclasses.asdict(cfg))
    errors = ErrorLog(strict=cfg.input.strict)
    unknown = sorted(set(cfg.steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; steps are {list(STEPS)}")
    if not 0 <= cfg.num_threads <= MAX_THREADS:
        raise ValueError(f"num_threads must be >= 0 (0 = all cores) and <= {MAX_THREADS}, got {cfg.num_threads}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    normalizer = _Normalizer(cfg.normalize, cfg.input.text_field, cfg.num_threads) if "normalize" in cfg.steps else None
    filtering = "filter" in cfg.steps
    doc_filters = build_doc_filters(cfg.filters, num_threads=cfg.num_threads) if filtering else []
    instruct_filters = (
        build_instruct_filters(InstructConfig(max_chars=cfg.filters.max_chars))
        if filtering and cfg.filters.instruct
        else []
    )
    dedup_config = cfg.dedup if "dedup" in cfg.steps else DedupConfig(exact=False, near="none")
    check_dedup_config(dedup_config)
    kept_texts_all: list[str] = []  # survivors' texts, for dedup after the filters
    origins: list[str] = []  # survivors' "source:line", to name cluster members in the report

    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=out_dir)
    try:
        survivors = 0
        stage_path = os.path.join(staging, "survivors.jsonl")
        with open(stage_path, "w", encoding="utf-8") as stage:
            records = read_records(
                inputs,
                text_field=cfg.input.text_field,
                text_mode=cfg.input.text_mode,
                fmt=cfg.input.format,
                errors=errors,
                exclude=(out_dir,),  # -o inside an input folder: never read our own earlier shards
            )
            for batch in _batches(records, cfg.batch_size):
                report.documents_in += len(batch)
                report.bytes_in += sum(len(chat.record_text(r.data, cfg.input.text_field).encode("utf-8", "surrogatepass")) for r in batch)
                if normalizer is not None:
                    normalizer(batch)
                texts = [chat.record_text(r.data, cfg.input.text_field) for r in batch]
                reasons: list[Optional[str]] = [None] * len(batch)
                for i, (r, t) in enumerate(zip(batch, texts)):
                    if filtering and cfg.filters.drop_empty and not t.strip():
                        reasons[i] = "empty"
                    elif instruct_filters:
                        reasons[i] = check_instruct(r.data, instruct_filters)
                for f in doc_filters:
                    live = [i for i, why in enumerate(reasons) if why is None]
                    if not live:
                        break
                    for i, why in zip(live, f.check_batch([texts[i] for i in live])):
                        reasons[i] = why
                kept_texts = []
                for r, t, why in zip(batch, texts, reasons):
                    if why is not None:
                        report.removed[why] += 1
                        continue
                    stage.write(json_line(r.data) + "\n")
                    kept_texts.append(t)
                    origins.append(f"{r.source}:{r.line}")
                survivors += len(kept_texts)
                kept_texts_all.extend(kept_texts)
                if progress is not None:
                    progress(report.documents_in, report.bytes_in)

        keep, removed, clusters = deduplicate(kept_texts_all, dedup_config, num_threads=cfg.num_threads)
        del kept_texts_all
        report.removed.update(removed)
        report.clusters = len(clusters)
        largest = sorted(clusters, key=lambda c: (-len(c), c[0]))[:5]

        # Pass 2: the kept records, in input order, into shards under staging/out.
        shard_dir = os.path.join(staging, "out")
        samples: dict[int, str] = {}
        wanted = {members[0] for members in largest}
        with open(stage_path, encoding="utf-8") as stage, ShardWriter(
            shard_dir,
            prefix=cfg.output.prefix,
            fmt=cfg.output.format,
            max_records=cfg.output.max_records,
            max_bytes=cfg.output.max_bytes,
            compression=cfg.output.compression,
        ) as writer:
            for i, line in enumerate(stage):
                if i in wanted:
                    samples[i] = chat.record_text(json.loads(line), cfg.input.text_field)
                if keep[i]:
                    data = json.loads(line)
                    writer.write(data)
                    report.kept += 1
                    report.bytes_out += len(chat.record_text(data, cfg.input.text_field).encode("utf-8", "surrogatepass"))
        if survivors != len(keep):
            raise AssertionError(f"dedup saw {len(keep)} documents, the filters passed {survivors}")
        report.largest_clusters = [
            {"size": len(members), "members": [origins[i] for i in members[:10]], "sample": samples.get(members[0], "")[:300]}
            for members in largest
        ]

        report.malformed.update(errors.counts)
        report.documents_in += errors.total
        report.malformed_samples = [dataclasses.asdict(b) for b in errors.samples]
        report.seconds = time.perf_counter() - t0
        report.check()

        report.outputs = publish_shards(writer.paths, out_dir, cfg.output.prefix)
        report.write_json(os.path.join(out_dir, "report.json"))
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
