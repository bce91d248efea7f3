"""Read records from text, JSONL, JSON, Parquet and built-in corpora, counting every malformed one.

Formats (``fmt="auto"`` picks by extension after stripping .gz/.zst/.zstd; unknown extensions and
stdin are sniffed: a first non-blank byte ``{`` means JSONL, ``[`` a JSON array, else text):

- text (.txt, .md, anything else): one document per file (``text_mode="document"``, line 1) or one
  per blank-line-separated paragraph (``text_mode="paragraphs"``, line = the paragraph's first line;
  line endings become ``\\n``). Invalid UTF-8 makes the unit that holds it (the file, or the
  paragraph) malformed: it is reported at the line of the first bad byte and skipped, exactly like
  a bad JSONL line; the rest of the file is still read. Records are ``{text_field: text}``.
- JSONL (.jsonl, .ndjson): one object per line; blank lines are skipped; line numbers are 1-based;
  a UTF-8 BOM is ignored at the start of any line (files that each began with one, concatenated).
  Each line is decoded on its own, so invalid UTF-8 costs that line only.
- JSON (.json): an array of objects (line = 1-based index), or a single object (line 1); a .json
  file holding several objects line by line is read as JSONL; an empty one holds no records.
  A string with a lone surrogate escape (``"\\ud800"``, JSONL or JSON) is not valid Unicode and
  cannot be written back as UTF-8: its record is malformed (``invalid_utf8``); one nested deeper
  than MAX_DEPTH (256) levels is ``bad_json``, and so is one holding ``NaN``, ``Infinity`` or
  ``-Infinity`` (Python's json accepts them; they are not JSON, and strict readers such as orjson,
  jq or JavaScript refuse them) or a number beyond the float range (``1e400``, read as infinity).
- Parquet (.parquet, .pq; needs pyarrow): one record per row, line = 1-based row index. Values JSON
  cannot hold become strings (dates/times ISO 8601, decimals, bytes as UTF-8 or else base64;
  durations: seconds), so every field survives a JSONL output; float NaN and infinities (which
  JSON has no value for) become null. An unreadable file is a ValueError naming it.
- gzip/zstd input that is corrupt or truncated is a ValueError naming the file (fastlm.data.io).
- ``builtin:NAME``: see ``fastlm.data.builtin``.

A record is valid when ``text_field`` (a plain key, or a dotted path like ``meta.body`` when there
is no such key) is a string, or when the record is a parseable chat/instruction record
(``fastlm.data.chat``), whose text field, absent or not a string, is then never read. Malformed
records go to ``errors.add(source, line, reason, detail)`` with reasons ``invalid_utf8``,
``bad_json``, ``not_object``, ``missing_field``, ``wrong_type`` or a chat parse reason
(``unknown_role``, ``empty_conversation``, ...), and reading continues (``ErrorLog(strict=True)``
raises DataError with file:line instead).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import math
import os
import re
from typing import IO, Any, Iterable, Iterator, Optional

from fastlm.data import chat
from fastlm.data.io import (
    BUILTIN_PREFIX,
    STDIN,
    expand_inputs,
    open_binary,
    require_pyarrow,
    source_name,
)
from fastlm.data.records import DataError, ErrorLog, Record

FORMATS = ("auto", "jsonl", "json", "text", "parquet")
TEXT_MODES = ("document", "paragraphs")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_TEXT_EXTENSIONS = {".txt", ".text", ".md", ".rst"}
_BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 256  # deeper JSON (json's own limit depends on the stack) is bad_json, so every later step can write it
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \uD800-\uDFFF: pairs, or lone surrogates


def format_from_name(path: str) -> Optional[str]:
    """The format implied by a file name (compression suffix ignored), or None when unknown.

    >>> format_from_name("data/part-0.jsonl.zst")
    'jsonl'
    """
    name = path.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    ext = os.path.splitext(name)[1]
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    return "text" if ext in _TEXT_EXTENSIONS else None


def _sniff(stream: IO[bytes]) -> str:
    head = stream.peek(4096)[:4096] if hasattr(stream, "peek") else b""  # type: ignore[attr-defined]
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(_BOM).lstrip()
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"["):
        return "json"
    return "text"


def _utf8_error(data: bytes, e: UnicodeDecodeError, first_line: int) -> tuple[int, str]:
    """Line number and message for the first bad byte of ``data`` (which starts at ``first_line``)."""
    line = first_line + data.count(b"\n", 0, e.start)
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return line, f"invalid UTF-8 byte 0x{data[e.start]:02x} at column {col}"


class _NonStandard:
    """Left by ``_Decoder`` in parsed JSON where strict JSON has no value; ``detail`` says why."""

    __slots__ = ("detail",)

    def __init__(self, detail: str):
        self.detail = detail


class _BadJSON(ValueError):
    """Text the readers do not take as JSON: ``detail`` for the report, ``line`` within the text,
    ``extra_data``: a whole value followed by more (JSON Lines read as one document)."""

    def __init__(self, detail: str, line: int = 1, *, extra_data: bool = False):
        super().__init__(detail)
        self.detail, self.line, self.extra_data = detail, line, extra_data


class _Decoder:
    """json.loads for the records of one input, leaving a ``_NonStandard`` marker where strict JSON
    has no value: NaN, Infinity and -Infinity (Python's json accepts them) and numbers beyond the
    float range (it reads them as infinity). Written back, they would be ``NaN``/``Infinity``, which
    strict readers (orjson, jq, JavaScript) refuse. One decoder is built per input, not per line."""

    def __init__(self) -> None:
        self._json = json.JSONDecoder(parse_constant=self._constant, parse_float=self._float)
        self._marked = 0

    def loads(self, text: str) -> tuple[Any, bool]:
        """The parsed ``text`` and whether it holds a ``_NonStandard`` marker; ``_BadJSON`` when it
        is not JSON, nests past what the parser can follow, or holds an integer past Python's digit
        limit (``sys.get_int_max_str_digits``)."""
        before = self._marked
        try:
            data = self._json.decode(text)
        except json.JSONDecodeError as e:
            raise _BadJSON(_json_error(e), e.lineno, extra_data=e.msg == "Extra data") from None
        except RecursionError:
            raise _BadJSON(f"nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as e:  # the digit limit
            raise _BadJSON(str(e)) from None
        return data, self._marked != before

    def _mark(self, detail: str) -> _NonStandard:
        self._marked += 1
        return _NonStandard(detail)

    def _constant(self, name: str) -> _NonStandard:
        return self._mark(f"{name} is not valid JSON (a non-standard constant)")

    def _float(self, text: str) -> Any:
        value = float(text)
        if math.isfinite(value):
            return value
        return self._mark(f"number {text if len(text) <= 40 else text[:37] + '...'} is beyond the float range")


def _json_error(e: json.JSONDecodeError) -> str:
    """"Expecting value at column 3" (json's messages like "Invalid control character at" lose their "at")."""
    msg = e.msg[: -len(" at")] if e.msg.endswith(" at") else e.msg
    return f"{msg} at column {e.colno}"


def _may_be_too_deep(text: str) -> bool:
    """False when JSON ``text`` cannot nest deeper than MAX_DEPTH (too few brackets): skips the walk."""
    return text.count("[") + text.count("{") > MAX_DEPTH


def _too_deep(data: Any) -> Optional[str]:
    """bad_json detail when parsed JSON ``data`` nests deeper than MAX_DEPTH, else None."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def _scalars(data: Any) -> Iterator[Any]:
    """Every key and every non-container value of parsed JSON ``data``, in order (it recurses: only
    for data no deeper than MAX_DEPTH)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from _scalars(value)
    elif isinstance(data, list):
        for value in data:
            yield from _scalars(value)
    else:
        yield data


def _lone_surrogate(data: Any) -> Optional[str]:
    """The first lone surrogate (from a JSON escape like ``\\ud800``) in any key or string of ``data``
    as "U+D800", or None: such a string is not valid Unicode and cannot be written as UTF-8."""
    for s in _scalars(data):
        if isinstance(s, str):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"U+{ord(s[e.start]):04X}"
    return None


def _structure_error(data: Any, deep: bool, nonstandard: bool, surrogates: bool) -> Optional[tuple[str, str]]:
    """(reason, detail) when parsed JSON ``data`` nests deeper than MAX_DEPTH (``deep``: its text has
    enough brackets to), holds a ``_NonStandard`` marker (``nonstandard``: ``_Decoder`` left some in
    the text it came from) or a lone surrogate (``surrogates``: its text has a ``\\uD8..`` escape)."""
    too_deep = _too_deep(data) if deep else None
    if too_deep:
        return "bad_json", too_deep
    if nonstandard:
        marker = next((s for s in _scalars(data) if isinstance(s, _NonStandard)), None)
        if marker is not None:
            return "bad_json", marker.detail
    bad = _lone_surrogate(data) if surrogates else None
    return ("invalid_utf8", f"lone surrogate {bad} (a JSON \\u escape) is not valid Unicode") if bad else None


def _check(data: Any, text_field: str) -> Optional[tuple[str, str]]:
    """(reason, detail) when a parsed object is not a valid record, else None."""
    if not isinstance(data, dict):
        return "not_object", f"expected a JSON object, got {type(data).__name__}"
    value = chat.get_field(data, text_field)
    if isinstance(value, str):
        return None
    if chat.detect_format(data) is None:
        if value is not None or text_field in data:  # present but not a string (null too)
            what = "null" if value is None else type(value).__name__
            return "wrong_type", f"field {text_field!r} is {what}, expected a string"
        return "missing_field", f"no {text_field!r} field (and not a chat/instruction record)"
    # a chat record: only its turns are read (`record_text` renders them when the text field is no string)
    try:
        chat.parse(data)
    except chat.ConversionError as e:
        return e.reason, e.detail
    return None


def _emit(data: Any, source: str, line: int, text_field: Optional[str], errors: ErrorLog) -> Optional[Record]:
    """The record of a parsed object, or None (counted in ``errors``) when it is not one: without a
    ``text_field`` (None) any JSON object is a record."""
    if text_field is None:
        problem = (None if isinstance(data, dict) else
                   ("not_object", f"expected a JSON object, got {type(data).__name__}"))
    else:
        problem = _check(data, text_field)
    if problem is not None:
        errors.add(source, line, *problem)
        return None
    return Record(data, source, line)


def _read_jsonl(stream: IO[bytes], source: str, text_field: str, errors: ErrorLog) -> Iterator[Record]:
    decoder = _Decoder()
    for lineno, raw in enumerate(stream, 1):
        if raw.startswith(_BOM):  # line 1's, or one where BOM-prefixed files were concatenated
            raw = raw[len(_BOM) :]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            errors.add(source, lineno, "invalid_utf8", _utf8_error(raw, e, lineno)[1])
            continue
        try:
            data, nonstandard = decoder.loads(text)
        except _BadJSON as e:
            errors.add(source, lineno, "bad_json", e.detail)
            continue
        bad = _structure_error(data, _may_be_too_deep(text), nonstandard, _SURROGATE_ESCAPE.search(text) is not None)
        if bad:
            errors.add(source, lineno, *bad)
            continue
        record = _emit(data, source, lineno, text_field, errors)
        if record is not None:
            yield record


def _read_json(stream: IO[bytes], source: str, text_field: str, errors: ErrorLog) -> Iterator[Record]:
    raw = stream.read()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, detail = _utf8_error(raw, e, 1)
        errors.add(source, line, "invalid_utf8", detail)
        return
    if not text.strip():  # an empty .json holds no records, like an empty .jsonl
        return
    try:
        data, nonstandard = _Decoder().loads(text)
    except _BadJSON as e:
        if e.extra_data and text.lstrip().startswith("{"):  # JSON Lines in a .json file
            yield from _read_jsonl(io.BytesIO(raw), source, text_field, errors)
        else:
            errors.add(source, e.line, "bad_json", e.detail)
        return
    if isinstance(data, dict):
        items: list[Any] = [data]
    elif isinstance(data, list):
        items = data
    else:
        errors.add(source, 1, "not_object", f"expected a JSON array or object, got {type(data).__name__}")
        return
    deep, surrogates = _may_be_too_deep(text), _SURROGATE_ESCAPE.search(text) is not None
    for index, item in enumerate(items, 1):
        bad = _structure_error(item, deep, nonstandard, surrogates)
        if bad:
            errors.add(source, index, *bad)
            continue
        record = _emit(item, source, index, text_field, errors)
        if record is not None:
            yield record


def _needs_json_conversion(pa: Any, t: Any) -> bool:
    """True when Arrow type ``t`` gives Python values that JSON cannot hold (dates, decimals, bytes,
    and floats: NaN, infinities)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _needs_json_conversion(pa, t.value_type)
    if pa.types.is_struct(t):
        return any(_needs_json_conversion(pa, t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _needs_json_conversion(pa, t.key_type) or _needs_json_conversion(pa, t.item_type)
    if pa.types.is_dictionary(t):
        return _needs_json_conversion(pa, t.value_type)
    return not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                or pa.types.is_boolean(t) or pa.types.is_null(t))


def _jsonable(value: Any) -> Any:
    """A Parquet value as JSON can hold it, so that every field is kept in JSONL outputs: dates and
    times -> ISO 8601 strings, durations -> seconds, decimals -> strings, bytes -> the UTF-8 string
    (base64 when not UTF-8), float NaN and infinities -> None (JSON null; JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    return value


def _read_parquet(stream: IO[bytes], source: str, text_field: str, errors: ErrorLog) -> Iterator[Record]:
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    if not (isinstance(stream, io.BufferedReader) and stream.seekable()) or source == "<stdin>":
        stream = io.BytesIO(stream.read())  # compressed or piped: Parquet needs random access
    row = 0
    try:  # an empty, truncated or corrupt file fails here or at a later batch: name it
        pf = pq.ParquetFile(stream)
        convert = any(_needs_json_conversion(pa, t) for t in pf.schema_arrow.types)
        batches = pf.iter_batches(batch_size=4096)
        batch = next(batches, None)
    except pa.ArrowException as e:
        raise ValueError(f"{source}: not a readable Parquet file ({e})") from e
    while batch is not None:
        for data in batch.to_pylist():
            if convert:
                data = _jsonable(data)
            row += 1
            record = _emit(data, source, row, text_field, errors)
            if record is not None:
                yield record
        try:
            batch = next(batches, None)
        except pa.ArrowException as e:
            raise ValueError(f"{source}: not a readable Parquet file ({e})") from e


def _text_record(data: bytes, first: int, source: str, text_field: str, errors: ErrorLog) -> Optional[Record]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, detail = _utf8_error(data, e, first)
        errors.add(source, line, "invalid_utf8", detail)
        return None
    return Record({text_field: text}, source, first)


def _blank(line: bytes) -> bool:
    """True when a text line holds only whitespace, Unicode's included (a no-break space, U+2028)."""
    return not line.strip() or (not line.isascii() and not line.decode("utf-8", "replace").strip())


def _read_text(
    stream: IO[bytes], source: str, text_field: str, text_mode: str, errors: ErrorLog
) -> Iterator[Record]:
    if text_mode == "document":
        data = stream.read()
        if data.startswith(_BOM):
            data = data[len(_BOM) :]
        record = _text_record(data, 1, source, text_field, errors)
        if record is not None:
            yield record
        return
    para: list[bytes] = []
    first = 0
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        # \n, \r\n and a lone \r (old Mac files) end a line; a lone \r's lines share the \n line's number
        for body in raw.rstrip(b"\r\n").split(b"\r"):
            if not _blank(body):
                if not para:
                    first = lineno
                para.append(body)
            elif para:
                record = _text_record(b"\n".join(para), first, source, text_field, errors)
                if record is not None:
                    yield record
                para = []
    if para:
        record = _text_record(b"\n".join(para), first, source, text_field, errors)
        if record is not None:
            yield record


def read_records(
    inputs: Iterable[str] | str,
    *,
    text_field: Optional[str] = "text",
    text_mode: str = "document",
    fmt: str = "auto",
    errors: Optional[ErrorLog] = None,
    formats: Optional[dict[str, str]] = None,
    exclude: Iterable[str] = (),
) -> Iterator[Record]:
    """Yield the valid records of every input (files, dirs, globs, ``-``, ``builtin:NAME``), in order.

    Malformed records are passed to ``errors`` (an ErrorLog; default: a strict one, so that nothing
    is ever dropped uncounted) with their file and line. ``formats``, when given, is filled with
    ``{source: format}`` as each input is opened (for reports). ``exclude``: folders not read when a
    directory or glob input reaches them (``expand_inputs``). ``text_field=None``: every JSON object
    is a record, with no text field asked for (preference pairs, prompts with their own fields); the
    inputs must then be JSON, JSONL or Parquet (a text file or a built-in corpus is a DataError).

    >>> log = ErrorLog()
    >>> recs = list(read_records("builtin:pydoc", errors=log))
    >>> recs[0].source, recs[0].data["id"], log.total
    ('builtin:pydoc', 'pydoc/assert', 0)
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {', '.join(TEXT_MODES)}, got {text_mode!r}")
    if errors is None:
        errors = ErrorLog(strict=True)
    for path in expand_inputs(inputs, exclude=exclude):
        if path.startswith(BUILTIN_PREFIX):
            from fastlm.data.builtin import iter_builtin

            if text_field is None:
                raise DataError(path, 1, "a built-in corpus holds text, not the JSON objects asked for")

            if formats is not None:
                formats[path] = "builtin"
            yield from iter_builtin(path[len(BUILTIN_PREFIX) :], text_field=text_field, text_mode=text_mode)
            continue
        source = source_name(path)
        stream = open_binary(path)
        try:
            kind = fmt
            if kind == "auto":
                kind = (format_from_name(path) if path != STDIN else None) or _sniff(stream)
            if formats is not None:
                formats[source] = kind
            if kind == "jsonl":
                yield from _read_jsonl(stream, source, text_field, errors)
            elif kind == "json":
                yield from _read_json(stream, source, text_field, errors)
            elif kind == "parquet":
                yield from _read_parquet(stream, source, text_field, errors)
            elif text_field is None:
                raise DataError(source, 1, f"expected JSON, JSONL or Parquet records, got a {kind} file")
            else:
                yield from _read_text(stream, source, text_field, text_mode, errors)
        finally:
            if path != STDIN:  # never close the process's stdin
                stream.close()


def record_text(record: Record | dict[str, Any], text_field: str = "text") -> str:
    """The text of a record for filtering and dedup (its text field, or its rendered conversation).

    >>> record_text(Record({"messages": [{"role": "user", "content": "hi"}]}, "x", 1))
    'hi'
    """
    data = record.data if isinstance(record, Record) else record
    return chat.record_text(data, text_field)
