"""``--set section.field=value``: overriding nested config dataclasses from a command line.

Both CLIs (``python -m smdlab`` and ``python -m smdlab.images``) take their configuration as a
dataclass whose sections are dataclasses too (a training config, a model spec, ...).  This module
parses ``path=value`` assignments against those fields: the path names a field through the
sections (``zoo.train.lr``), the value is read as the field's annotated type, and the new config is
built with :func:`dataclasses.replace` (so each dataclass's own validation runs).  Unknown fields
and unreadable values are :class:`ConfigError` naming the field and the expected type.

Value syntax: numbers as Python reads them (finite only); booleans ``true/false/yes/no/1/0``;
``none`` for optional fields; tuples as comma-separated items (``1,2,2``; an empty tuple is ``''``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable


class ConfigError(ValueError):
    """A ``--set`` assignment names no field, or its value does not fit the field's type."""


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:   # unresolvable annotations: fall back to the raw strings
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional(tp):
    """(inner type, True) for ``X | None``, else (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp, default=None) -> str:
    """A short readable name of a field type (for help and error messages)."""
    inner, opt = _optional(tp)
    if typing.get_origin(inner) is tuple or inner is tuple:
        args = typing.get_args(inner)
        item = args[0] if args else (type(default[0]) if default else str)
        name = f"comma-separated {getattr(item, '__name__', str(item))}s"
    else:
        name = getattr(inner, "__name__", str(inner))
    return name + (" or none" if opt else "")


def _scalar(text: str, tp, path: str):
    s = text.strip()
    if tp is bool:
        low = s.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{path}: expected a boolean (true/false); got {text!r}")
    if tp is int:
        try:
            return int(s, 0) if s.lower().startswith(("0x", "0o", "0b")) else int(s)
        except ValueError:
            raise ConfigError(f"{path}: expected an integer; got {text!r}") from None
    if tp is float:
        try:
            v = float(s)
        except ValueError:
            raise ConfigError(f"{path}: expected a number; got {text!r}") from None
        if not math.isfinite(v):
            raise ConfigError(f"{path}: expected a finite number; got {text!r}")
        return v
    if tp is str:
        return s
    # untyped items (a bare ``tuple`` field): int, then float, then string
    for conv in (int, float):
        try:
            v = conv(s)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{path}: expected a finite number; got {text!r}")
            return v
        except ValueError:
            pass
    return s


def parse_value(text: str, tp, path: str, default=None):
    """``text`` read as type ``tp`` (see the module docstring); ``path`` names the field."""
    inner, opt = _optional(tp)
    if opt and text.strip().lower() in ("none", "null"):
        return None
    if typing.get_origin(inner) is tuple or inner is tuple:
        args = typing.get_args(inner)
        if args and not (len(args) == 2 and args[1] is Ellipsis) and len(set(args)) != 1:
            raise ConfigError(f"{path}: cannot parse a mixed tuple type {inner}")
        item = args[0] if args else (type(default[0]) if default else None)
        parts = [p for p in text.split(",") if p.strip()]
        values = tuple(_scalar(p, item, path) for p in parts)
        if args and len(args) > 1 and args[1] is not Ellipsis and len(values) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} comma-separated values; got {text!r}")
        return values
    if inner in (bool, int, float, str):
        return _scalar(text, inner, path)
    if isinstance(inner, type) and isinstance(default, inner):
        return _scalar(text, inner, path)
    # an unannotated/any field: guess from the default's type, else keep the string
    if default is not None and type(default) in (bool, int, float, str):
        return _scalar(text, type(default), path)
    return _scalar(text, None, path) if inner in (typing.Any, object) else text.strip()


def fields_of(cls_or_obj, prefix: str = "") -> list[tuple[str, str, object]]:
    """(path, type name, default) of every leaf field, recursing into dataclass sections."""
    obj = cls_or_obj if not isinstance(cls_or_obj, type) else None
    cls = type(obj) if obj is not None else cls_or_obj
    hints = _hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if obj is not None:
            value = getattr(obj, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        tp = hints.get(f.name, f.type)
        path = prefix + f.name
        if dataclasses.is_dataclass(value) or _is_dataclass_type(tp):
            rows += fields_of(value if dataclasses.is_dataclass(value) else tp, path + ".")
        else:
            rows.append((path, type_name(tp, value), value))
    return rows


def describe_fields(cfg, title: str = "fields (--set PATH=VALUE)") -> str:
    """The help text listing every settable field of ``cfg`` with its type and current value."""
    rows = fields_of(cfg)
    width = max((len(p) for p, _, _ in rows), default=0)
    lines = [f"{title}:"]
    for path, tname, value in rows:
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"  {path:<{width}}  {tname} (= {shown})")
    return "\n".join(lines)


def _assign(obj, parts: list[str], text: str, full: str, where: str = ""):
    cls = type(obj)
    names = [f.name for f in dataclasses.fields(cls)]
    name = parts[0]
    if name not in names:
        scope = f"section {where!r}" if where else "the config"
        raise ConfigError(f"unknown field {full!r}: {scope} has no field {name!r}; choose from "
                          f"{', '.join(names)}")
    current = getattr(obj, name)
    tp = _hints(cls).get(name)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown field {full!r}: {name!r} is a {type_name(tp, current)}, "
                              "not a section")
        value = _assign(current, parts[1:], text, full, f"{where}.{name}".lstrip("."))
    else:
        if dataclasses.is_dataclass(current):
            sub = ", ".join(f.name for f in dataclasses.fields(current))
            raise ConfigError(f"{full!r} is a section; set one of its fields ({sub})")
        value = parse_value(text, tp, full, current)
    try:
        return dataclasses.replace(obj, **{name: value})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{full}={text}: {e}") from e


def apply_overrides(cfg, assignments: Iterable[str]):
    """``cfg`` with every ``path=value`` assignment applied, in order (a new object; ``cfg`` is
    unchanged).  Raises :class:`ConfigError` for a malformed assignment, an unknown field or a
    value that does not fit the field."""
    for a in assignments or ():
        if "=" not in a:
            raise ConfigError(f"--set expects PATH=VALUE (e.g. zoo.train.lr=1e-3); got {a!r}")
        path, text = a.split("=", 1)
        path = path.strip()
        if not path or any(not p for p in path.split(".")):
            raise ConfigError(f"--set: malformed field path {path!r}")
        cfg = _assign(cfg, path.split("."), text, path)
    return cfg


def add_set_argument(parser) -> None:
    """Add ``--set PATH=VALUE`` (repeatable) to an argparse parser."""
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a config field, e.g. --set zoo.train.lr=1e-3 (repeatable; "
                             "--help lists the fields)")


def has_field(cfg, path: str) -> bool:
    """Whether ``path`` (``a.b.c``) names a field of the dataclass ``cfg``."""
    obj = cfg
    for part in path.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, part)
    return True
