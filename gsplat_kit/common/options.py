"""Repeated `KEY=VALUE` command-line options, checked against the fields they override when they are
parsed (not when a value is first used, possibly hours later)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing

from gsplat_kit.common.errors import UserError


def parse_key_values(items, flag: str) -> dict:
    """["a=1", "b=x"] -> {"a": 1, "b": "x"}: values are JSON where they parse as JSON, else strings."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"{flag} expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k:
            raise UserError(f"{flag} {it!r}: empty KEY")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _coerce(value, typ, where: str):
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: {value!r} has the wrong type")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(typ)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        inner = args[0] if args else typing.Any
        return origin(_coerce(v, inner, where) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    if typ is dict or typing.get_origin(typ) is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected an object, got {value!r}")
        return value
    return value


def coerce_fields(cls, values: dict, where: str) -> dict:
    """Checks `values` against dataclass `cls`: unknown keys and values of the wrong type are UserErrors
    naming `where` and the field; ints are accepted for float fields. Returns the converted values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}; known: {sorted(fields)}")
    return {k: _coerce(v, hints[k], f"{where} {k}") for k, v in values.items()}


def coerce_field(cls, key: str, value, name: str):
    """One field of dataclass `cls`, converted like `coerce_fields` does; errors name `name` (e.g. the flag
    that set the value, "--steps") instead of the field."""
    hints = typing.get_type_hints(cls)
    if key not in {f.name for f in dataclasses.fields(cls)}:
        raise UserError(f"{name}: unknown field {key!r} of {cls.__name__}")
    return _coerce(value, hints[key], name)


def check_range(name: str, value, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                allow: tuple = ()):
    """Raises a UserError naming `name` unless lo <= value <= hi (strict where *_open), or value in allow."""
    if value in allow:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        raise UserError(f"{name} must be {' and '.join(s for s in (lo_s, hi_s) if s)}{extra}, got {value}")
    return value


def ranged(conv, **limits):
    """An argparse `type=`: `conv(text)` (int or float) checked by `check_range(**limits)`, so a bad value
    is refused while the command line is parsed, in argparse's one line that names the option."""
    def parse(text: str):
        try:
            value = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if conv is int else 'a number'}") from None
        try:
            return check_range("value", value, **limits)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = getattr(conv, "__name__", "value")  # argparse's fallback message names the type
    return parse
