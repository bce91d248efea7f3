"""Typed configs from YAML/TOML files and `key=value` overrides, validated against dataclasses.

Unknown keys and wrong types are refused with a message naming the file and the dotted key,
so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match its dataclass."""


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "c.yaml"); _ = open(p, "w").write("a: 1\\n")
    >>> load_config_file(p)
    {'a': 1}
    """
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    if ext == ".toml":
        try:
            import tomllib  # Python 3.11+
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            text = raw.decode("utf-8-sig")  # a leading BOM (Windows editors write one) is not TOML
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte {e.start})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(_toml_error(path, e, text)) from None
    elif ext in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.load(raw.decode("utf-8"), Loader=_unique_key_loader())
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: invalid YAML: not UTF-8 (byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(path, e)) from None
    else:
        raise ConfigError(f"{path}: unknown config format {ext!r} (use .yaml, .yml or .toml)")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _yaml_error(path: str, e: Exception) -> str:
    """``path:line:column: invalid YAML: reason`` on one line (PyYAML's own text spans several)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    reason = "; ".join(_one_line(t) for t in (context, problem) if t) or _one_line(str(e).split("\n")[0])
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return f"{where}: invalid YAML: {reason}"


def _toml_error(path: str, e: Exception, text: str) -> str:
    """``path:line:column: invalid TOML: reason`` on one line; a key given twice is named."""
    import re

    msg = _one_line(str(e))
    lines = text.splitlines()
    where = path
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        where, line = f"{path}:{m.group(1)}:{m.group(2)}", int(m.group(1))
        msg = msg[:m.start()]
    elif msg.endswith("(at end of document)"):
        line = len(lines)
        where, msg = f"{path}:{line}", msg[: -len("(at end of document)")].rstrip()
    else:
        line = 0
    if msg == "Cannot overwrite a value" and 0 < line <= len(lines) and "=" in lines[line - 1]:
        key = lines[line - 1].split("=", 1)[0].strip()
        msg = f"duplicate key {key!r} (or a key that overwrites a value)"
    return f"{where}: invalid TOML: {msg}"


_LOADER = None


def _unique_key_loader():
    """A yaml SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:  # before `<<` merges, whose keys may be overridden
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # the base class refuses unhashable keys with its own message
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"duplicate key {key!r} (first given on line {seen[key].line + 1})",
                            key_node.start_mark)
                    seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    _LOADER = UniqueKeyLoader
    return _LOADER


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return value converted to tp where lossless (int -> float, list -> tuple), else raise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from a (nested) dict, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        near = [m for u in unknown for m in difflib.get_close_matches(str(u), names, n=1)]
        hint = f" (did you mean {', '.join(repr(m) for m in near)}?)" if near else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; known: {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value read as YAML: numbers, true/false, lists) into (["a","b"], value)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of data with each ``a.b=value`` set (nested dicts created as needed)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
        node[path[-1]] = value
    return out
