"""File plumbing for the data stage: transparent decompression, input expansion, atomic writes, shards.

Compression is recognised by magic bytes (gzip ``1f 8b``, zstd ``28 b5 2f fd``), so a compressed file
with a plain name still reads; ``-`` is stdin. Every output goes through a temp file in the target
directory that is fsync'ed and renamed, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os
import sys
import tempfile
import zlib
from typing import IO, Any, Iterable, Iterator, Optional

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BUILTIN_PREFIX = "builtin:"
STDIN = "-"


class MissingDependencyError(ImportError, ValueError):
    """An optional extra is not installed; the message says what to install.

    Also a ValueError so that the CLI prints it as a clear error instead of a traceback.
    """


def require_pyarrow():
    """Import pyarrow (+ parquet) or raise MissingDependencyError naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"Parquet support needs pyarrow: pip install fastlm[parquet] ({e})") from e
    return pyarrow


def source_name(path: str) -> str:
    """The name used in error reports: the path, or "<stdin>" for ``-``."""
    return "<stdin>" if path == STDIN else path


def _raw_stdin() -> IO[bytes]:
    stream = sys.stdin
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer
    # sys.stdin replaced by a text-only stream (e.g. io.StringIO in tests): re-encode it.
    return io.BytesIO(stream.read().encode("utf-8"))


def open_binary(path: str) -> IO[bytes]:
    """Open a file (or stdin for ``-``) for reading bytes, decompressing gzip/zstd by magic bytes.

    >>> import os, tempfile, gzip
    >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")   # no .gz extension on purpose
    >>> with gzip.open(p, "wb") as f: _ = f.write(b"hello")
    >>> open_binary(p).read()
    b'hello'
    """
    raw: IO[bytes] = _raw_stdin() if path == STDIN else open(path, "rb")
    reader = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[arg-type]
    head = reader.peek(4)[:4]  # type: ignore[union-attr]
    if head[:2] == GZIP_MAGIC:
        return io.BufferedReader(_Decompressed(reader, path, "gzip"))
    if head == ZSTD_MAGIC:
        return io.BufferedReader(_Decompressed(reader, path, "zstd"))
    return reader


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of a gzip or zstd stream (several concatenated members/frames read as
    one, e.g. `cat a.zst b.zst`). Corrupt or truncated data raises ValueError naming the file, never
    a bare EOFError/zlib.error/ZstdError; a zstd stream that ends inside a frame is an error (the
    zstandard stream reader would silently return what it had)."""

    def __init__(self, reader: IO[bytes], path: str, kind: str):
        self._reader, self._name, self._kind = reader, source_name(path), kind
        self._close_reader = path != STDIN  # never close the process's stdin
        self._errors: tuple = (EOFError, gzip.BadGzipFile, zlib.error)
        if kind == "gzip":
            self._gz = gzip.GzipFile(fileobj=reader, mode="rb")
        else:
            import zstandard

            self._errors += (zstandard.ZstdError,)
            self._dctx = zstandard.ZstdDecompressor()
            self._frame: Any = None  # decompressobj of the frame in progress
            self._buf, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return self._gz.readinto(b) if self._kind == "gzip" else self._zstd_readinto(b)
        except self._errors as e:
            raise ValueError(f"{self._name}: corrupt or truncated {self._kind} data ({e})") from e

    def _zstd_readinto(self, b: Any) -> int:
        while self._pos >= len(self._buf):
            chunk = self._reader.read(1 << 16)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("the stream ends inside a zstd frame")
                return 0
            out = []
            while chunk:
                if self._frame is None or self._frame.eof:
                    self._frame = self._dctx.decompressobj()
                out.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
            self._buf, self._pos = b"".join(out), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            if self._kind == "gzip":
                self._gz.close()
            if self._close_reader:
                self._reader.close()
        super().close()


def open_text(path: str, *, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Open a plain, .gz or .zst file (or stdin for ``-``) as text; compression is detected by content.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> _ = open(p, "w").write("one\\ntwo\\n")
    >>> open_text(p).read().split()
    ['one', 'two']
    """
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors=errors, newline="")


def is_report_file(name: str) -> bool:
    """True for the reports fastlm's stages write beside their outputs (``report.json``,
    ``part-00000.report.json``): a folder of shards is read without them."""
    return name == "report.json" or name.endswith(".report.json")


def path_within(path: str, folder: str) -> bool:
    """True when real path ``path`` is ``folder`` or lies under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _outputs_below(named: str, outputs: frozenset[str]) -> frozenset[str]:
    """The outputs (real paths) that expanding an input must not reach: all but those that the
    folder the input names (``named``) is, or lies in, since an input named there is read."""
    real = os.path.realpath(named)
    return frozenset(o for o in outputs if not path_within(real, o))


def _is_output(real_path: str, outputs: frozenset[str]) -> bool:
    """True when ``real_path`` is one of ``outputs`` or lies in one of them."""
    return any(path_within(real_path, o) for o in outputs)


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern names before its first wildcard: ``in`` for ``in/**/*.jsonl``."""
    root = pattern
    while glob.has_magic(root):
        root = os.path.dirname(root)
    return root or os.curdir


def _walk(directory: str, outputs: frozenset[str] = frozenset()) -> list[str]:
    """All non-hidden data files under a directory, recursively, in sorted order (stage reports
    skipped), leaving out the ``outputs`` below it (real paths; see ``expand_inputs``)."""
    outputs = _outputs_below(directory, outputs)
    out = []
    for root, dirs, files in os.walk(directory):  # symlinked folders are not walked into
        real_root = os.path.realpath(root)
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and not _is_output(os.path.join(real_root, d), outputs))
        out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and not is_report_file(f)
                   and not _is_output(os.path.join(real_root, f), outputs))
    return sorted(out)


def _glob(pattern: str, outputs: frozenset[str] = frozenset()) -> list[str]:
    """The files a glob pattern matches (``**`` recursive; a matched directory is walked), leaving
    out the ``outputs`` below its fixed leading folder, exactly as a walk of that folder would."""
    outputs = _outputs_below(_glob_root(pattern), outputs)
    files = []
    for m in sorted(glob.glob(pattern, recursive=True)):
        if outputs and _is_output(os.path.realpath(m), outputs):
            continue
        files.extend(_walk(m, outputs) if os.path.isdir(m) else [m])
    return files


def expand_inputs(inputs: Iterable[str] | str, *, exclude: Iterable[str] = ()) -> list[str]:
    """Expand files, directories (recursive, sorted; hidden files and stage reports skipped), globs,
    ``-`` and ``builtin:NAME``.

    Each file is listed once, in the order and spelling first given (two paths to the same file,
    symlinks included, are one file). An input that matches nothing raises
    FileNotFoundError naming it. ``exclude`` holds the command's own outputs (folders or files),
    so that a re-run with ``-o`` inside an input never reads its earlier outputs: a directory walk
    or a glob leaves out the outputs below the folder its input names (the directory itself, or
    the glob's fixed leading folder: ``in`` for ``in/**/*.jsonl``). An input that names an output
    or lies inside one (``out``, ``out/*.jsonl`` with ``-o out``) is read, as is a file named as such.

    >>> expand_inputs(["builtin:pydoc", "-"])
    ['builtin:pydoc', '-']
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    out: list[str] = []
    seen: set[str] = set()
    outputs = frozenset(os.path.realpath(d) for d in exclude)

    def add(path: str) -> None:
        # one file named in two spellings (a.jsonl, ./a.jsonl, its folder, a symlink) is read once
        key = path if path == STDIN or path.startswith(BUILTIN_PREFIX) else os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)

    for item in inputs:
        if item == STDIN:
            add(item)
        elif item.startswith(BUILTIN_PREFIX):
            from fastlm.data.builtin import builtin_names

            name = item[len(BUILTIN_PREFIX) :]
            if name not in builtin_names():
                known = ", ".join(BUILTIN_PREFIX + n for n in builtin_names())
                raise FileNotFoundError(f"unknown built-in corpus {item!r} (known: {known})")
            add(item)
        elif os.path.isdir(item):
            files = _walk(item, outputs)
            if not files:
                raise FileNotFoundError(f"input directory {item!r} contains no (non-hidden) files")
            for f in files:
                add(f)
        elif os.path.exists(item):
            add(item)
        else:
            files = _glob(item, outputs)
            if not files:
                raise FileNotFoundError(f"input {item!r} matches no file or directory")
            for f in files:
                add(f)
    return out


def refuse_input_as_output(output: str, inputs: Iterable[str] | str, *, flag: str = "-o") -> None:
    """Raise ValueError when the output file ``output`` is one of the files that ``inputs`` name:
    replacing it would lose the input's records that do not reach the output (malformed, not
    converted). Inputs are expanded as the command reads them (``exclude=(output,)``)."""
    if output == STDIN or not os.path.isfile(output):
        return
    for path in expand_inputs(inputs, exclude=(output,)):
        if path != STDIN and not path.startswith(BUILTIN_PREFIX) and os.path.samefile(path, output):
            raise ValueError(f"{flag} {output!r} is also an input ({path!r}): writing it would replace that "
                             "input; choose another output file")


def json_line(record: dict[str, Any]) -> str:
    """A record as one line of strict JSON (no newline; UTF-8 text unescaped), as every data-stage
    JSONL output writes it. NaN and infinities are refused with a ValueError instead of written as
    ``NaN``/``Infinity``, which no strict JSON reader (orjson, jq, JavaScript) accepts; the readers
    never produce them (``fastlm.data.readers``)."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"a record cannot be written as strict JSON: {e}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, encoding: Optional[str] = "utf-8") -> Iterator[IO[Any]]:
    """Write a file all-or-nothing: a temp file in the same directory, fsync'ed, then os.replace'd.

    On an exception the temp file is removed and ``path`` is left as it was.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_write(p) as f: _ = f.write("done")
    >>> open(p).read()
    'done'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        if mode == "wb":
            f: IO[Any] = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish_shards(paths: list[str], out_dir: str, prefix: str) -> list[str]:
    """Move finished shards (written in a staging folder of ``out_dir``) into ``out_dir``.

    Earlier ``<prefix>-*`` files there are removed first, so a re-run never mixes old and new
    shards; each move is an ``os.replace`` within one file system. Returns the final paths.
    """
    for old in glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-*")):
        os.unlink(old)
    final = []
    for path in paths:
        final.append(os.path.join(out_dir, os.path.basename(path)))
        os.replace(path, final[-1])
    return final


_COMPRESSIONS = {None: "", "gz": ".gz", "gzip": ".gz", "zst": ".zst", "zstd": ".zst"}


class ShardWriter:
    """Write records (dicts) into numbered shard files, each written atomically.

    A shard holds at most ``max_records`` records and at most ``max_bytes`` bytes of JSON lines
    (uncompressed; a single larger record gets a shard of its own); the shard in progress is held in memory (default cap 100 MB). JSONL shards may be gzip/zstd compressed; Parquet shards
    (``fmt="parquet"``, needs pyarrow) use ``compression`` as the Parquet codec. An exception inside
    the ``with`` block discards the shard in progress; finished shards stay complete.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with ShardWriter(d, max_records=2) as w:
    ...     for i in range(3): w.write({"text": str(i)})
    >>> [os.path.basename(p) for p in w.paths]
    ['shard-00000.jsonl', 'shard-00001.jsonl']
    """

    def __init__(
        self,
        out_dir: str,
        *,
        prefix: str = "shard",
        fmt: str = "jsonl",
        max_records: Optional[int] = None,
        max_bytes: Optional[int] = 100_000_000,
        compression: Optional[str] = None,
    ):
        if fmt not in ("jsonl", "parquet"):
            raise ValueError(f"shard format must be 'jsonl' or 'parquet', got {fmt!r}")
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of None, 'gz', 'zst', got {compression!r}")
        for name, value in (("max_records", max_records), ("max_bytes", max_bytes)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if fmt == "parquet":
            require_pyarrow()
        self.out_dir, self.prefix, self.fmt = out_dir, prefix, fmt
        self.max_records, self.max_bytes, self.compression = max_records, max_bytes, compression
        self.paths: list[str] = []  # finished shards, in order
        self.records_written = 0
        self._rows: list[str] = []  # JSON lines of the shard in progress
        self._rows_bytes = 0
        os.makedirs(out_dir, exist_ok=True)

    def _shard_path(self) -> str:
        if self.fmt == "parquet":
            name = f"{self.prefix}-{len(self.paths):05d}.parquet"
        else:
            name = f"{self.prefix}-{len(self.paths):05d}.jsonl{_COMPRESSIONS[self.compression]}"
        return os.path.join(self.out_dir, name)

    def write(self, record: dict[str, Any]) -> None:
        """Add one record; closes the current shard when it is full."""
        line = json_line(record)
        size = len(line.encode("utf-8")) + 1
        if self.max_bytes is not None and self._rows and self._rows_bytes + size > self.max_bytes:
            self.flush_shard()  # a shard exceeds max_bytes only when one record alone does
        self._rows.append(line)
        self._rows_bytes += size
        self.records_written += 1
        if self.max_records is not None and len(self._rows) >= self.max_records:
            self.flush_shard()

    def flush_shard(self) -> None:
        """Write the shard in progress (if any) to its final name."""
        if not self._rows:
            return
        path = self._shard_path()
        if self.fmt == "parquet":
            self._write_parquet(path)
        else:
            data = ("\n".join(self._rows) + "\n").encode("utf-8")
            if self.compression in ("gz", "gzip"):
                data = gzip.compress(data, mtime=0)
            elif self.compression in ("zst", "zstd"):
                import zstandard

                data = zstandard.ZstdCompressor(write_checksum=True).compress(data)  # a flipped bit is an error on read
            with atomic_write(path, "wb") as f:
                f.write(data)
        self.paths.append(path)
        self._rows, self._rows_bytes = [], 0

    def _write_parquet(self, path: str) -> None:
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist([json.loads(r) for r in self._rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"records cannot be stored as one Parquet table (mixed field types?): {e}") from e
        codec = {None: "snappy", "gz": "gzip", "gzip": "gzip", "zst": "zstd", "zstd": "zstd"}[self.compression]
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f, compression=codec)

    def close(self) -> list[str]:
        """Write the last shard and return the list of shard files."""
        self.flush_shard()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._rows, self._rows_bytes = [], 0  # discard the partial shard
