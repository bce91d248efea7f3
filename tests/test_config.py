"""Typed config loading: YAML/TOML files, overrides, and clear errors for wrong keys and types."""

import dataclasses
from typing import Literal, Optional

import pytest

from fastlm.config import ConfigError, apply_overrides, from_dict, load_config_file


@dataclasses.dataclass
class Inner:
    x: int = 1
    y: float = 2.0
    name: Optional[str] = None
    pair: tuple[int, int] = (1, 2)


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    flag: bool = False


def test_nested_values_and_conversions():
    cfg = from_dict(Outer, {"inner": {"x": 3, "y": 1, "pair": [4, 5]}, "mode": "b", "flag": True})
    assert cfg == Outer(Inner(x=3, y=1.0, pair=(4, 5)), "b", True)
    assert isinstance(cfg.inner.y, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"z": 1}}, "cfg.inner: unknown key(s) ['z']"),
        ({"inner": {"x": "3"}}, "cfg.inner.x: expected int, got str"),
        ({"inner": {"x": True}}, "cfg.inner.x: expected an integer"),
        ({"flag": 1}, "cfg.flag: expected true/false"),
        ({"mode": "c"}, "cfg.mode: must be one of ['a', 'b']"),
        ({"inner": {"pair": [1]}}, "cfg.inner.pair: expected 2 items"),
        ({"inner": 5}, "cfg.inner: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, where="cfg")
    assert message in str(e.value)


def test_files_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("inner:\n  x: 7\nmode: b\n")
    t = tmp_path / "c.toml"
    t.write_text('mode = "b"\n[inner]\nx = 7\n')
    assert load_config_file(str(y)) == load_config_file(str(t)) == {"inner": {"x": 7}, "mode": "b"}
    data = apply_overrides(load_config_file(str(y)), ["inner.y=0.5", "inner.name=abc", "flag=true"])
    assert from_dict(Outer, data) == Outer(Inner(x=7, y=0.5, name="abc"), "b", True)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config_file(str(tmp_path / "empty.yaml")) == {}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.yaml", "a: [1,\n", "bad.yaml: invalid YAML"),
        ("bad.toml", "a = \n", "bad.toml: invalid TOML"),
        ("list.yaml", "- 1\n- 2\n", "the top level must be a mapping"),
        ("c.ini", "a=1", "unknown config format '.ini'"),
    ],
)
def test_bad_files(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config_file(str(p))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config_file(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
