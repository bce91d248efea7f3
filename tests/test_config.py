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
        ({"inner": {"z": 1}}, "cfg.inner: unknown key(s) ['z']; known"),  # nothing near: no hint
        ({"inner": {"pairs": 1}}, "cfg.inner: unknown key(s) ['pairs'] (did you mean 'pair'?); known"),
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
        # PyYAML's own message spans four lines (problem, `in "<unicode string>"`, the line, a caret)
        ("bad.yaml", "a: [1,\n", "bad.yaml:2:1: invalid YAML: while parsing a flow node; expected the node content"),
        ("tab.yaml", "a: 1\nb:\n\t- x\n", "tab.yaml:3:1: invalid YAML: "),
        ("bad.toml", "a = \n", "bad.toml:1:5: invalid TOML: Invalid value"),
        ("list.yaml", "- 1\n- 2\n", "the top level must be a mapping"),
        ("c.ini", "a=1", "unknown config format '.ini'"),
        # PyYAML keeps the last value of a key given twice: `lr: 2e-3` silently won
        ("d.yaml", "optim:\n  lr: 1e-3\n  lr: 2e-3\n", "d.yaml:3:3: invalid YAML: duplicate key 'lr' (first given on line 2)"),
        ("top.yaml", "max_steps: 1\nout: x\nmax_steps: 2\n", "top.yaml:3:1: invalid YAML: duplicate key 'max_steps'"),
        ("flow.yaml", "a: {x: 1, x: 2}\n", "flow.yaml:1:11: invalid YAML: duplicate key 'x'"),
        ("d.toml", "[optim]\nlr = 1\nlr = 2\n", "d.toml:3:7: invalid TOML: duplicate key 'lr'"),
        ("t.toml", "[optim]\nlr = 1\n[optim]\n", "t.toml:3:7: invalid TOML: Cannot declare ('optim',) twice"),
    ],
)
def test_bad_files_are_one_line_naming_file_line_column(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config_file(str(p))
    assert "\n" not in str(e.value) and "<unicode string>" not in str(e.value)
    assert str(e.value).startswith(str(p) + ":") and message in str(e.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("base: &b\n  lr: 1\n  x: 2\nopt:\n  <<: *b\n  lr: 3\n")
    assert load_config_file(str(p)) == {"base": {"lr": 1, "x": 2}, "opt": {"lr": 3, "x": 2}}


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config_file(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
