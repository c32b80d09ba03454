"""Backend options: one parser for every backend's frozen ``Options`` dataclass.

Each backend reads its own mapping ``Settings.options[backend]`` and declares the keys it
accepts as a frozen dataclass (field defaults; the unit or meaning in the field's
``metadata["help"]`` or a trailing comment). :func:`parse_options` checks that mapping
against the dataclass: unknown keys are refused listing the known ones (and the values
given), and a value of the wrong type raises one :class:`~autoprompt_seg.errors.ConfigError`
naming the key (``nnunet.threshold``), the value received and the type expected. Range checks stay in
the dataclass's ``__post_init__``. Field types understood: bool, int, float (numpy
scalars are taken as the int or float they hold), str, Path, ``X | None`` and other unions,
tuples (fixed length or ``tuple[X, ...]``), ``Mapping[str, X]`` (a TOML table) and Any.

:func:`parse_text` turns the text of a command-line ``--set backend.key=value`` into the
field's type (float, int, bool, str, paths, tuples from comma lists).

This module imports nothing of the package but ``errors``, so any layer may use it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from .errors import ConfigError

T = TypeVar("T")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _members(tp: Any) -> tuple[Any, ...] | None:
    """The members of a union type, or None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def describe(tp: Any) -> str:
    """A reader's name for the type ``tp`` (used in error messages and listings)."""
    members = _members(tp)
    if members is not None:
        return " or ".join(describe(m) for m in members)
    if tp is type(None):
        return "none"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = describe(args[0])
            return f"a list of ({inner})" if " or " in inner else f"a list of {inner}"
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if _is_mapping(tp):
        key, value = typing.get_args(tp) or (Any, Any)
        return f"a table ({describe(key)} -> {describe(value)})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Mapping)


class _Mismatch(Exception):
    pass


def _check(value: Any, tp: Any, int_default: bool = False) -> Any:
    """``value`` as type ``tp``, or :class:`_Mismatch` (no text parsing here)."""
    members = _members(tp)
    if members is not None:
        for m in members:
            try:
                return _check(value, m, int_default)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and \
                math.isfinite(value):
            return int(value) if isinstance(value, numbers.Integral) and int_default \
                else float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value).expanduser()
        raise _Mismatch
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_check(v, a) for v, a in zip(value, args))
    if _is_mapping(tp):
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_check(k, key_tp): _check(v, value_tp) for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _field(cls: type, backend: str, key: str) -> tuple[dataclasses.Field[Any], Any]:
    fs = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fs:
        raise ConfigError(f"Option {backend!r}: unknown key {key!r}; known: "
                          f"{', '.join(sorted(fs))}")
    return fs[key], _hints(cls)[key]


def _int_default(f: dataclasses.Field[Any]) -> bool:
    return isinstance(f.default, int) and not isinstance(f.default, bool)


def parse_options(cls: type[T], raw: Mapping[str, Any] | None, backend: str) -> T:
    """``cls(**raw)`` after checking every key and value (module docstring).

    ``raw`` None or empty gives the defaults. An int for a float field is taken as a float
    (kept an int when the field's default is one, e.g. a count typed as a number)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Option {backend!r} must be a mapping of option keys; got {raw!r}")
    fs = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fs))
    if unknown:
        raise ConfigError(f"Option {backend!r}: unknown key(s) "
                          f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(fs))}; "
                          f"got {({k: raw[k] for k in unknown})!r}")
    hints = _hints(cls)
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        tp = hints[key]
        try:
            kw[key] = _check(value, tp, _int_default(fs[key]))
        except _Mismatch:
            raise ConfigError(f"Option '{backend}.{key}' must be {describe(tp)}; "
                              f"got {value!r}") from None
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Option {backend!r}: {e}") from e


def _from_text(text: str, tp: Any, int_default: bool = False) -> Any:
    members = _members(tp)
    if members is not None:
        if type(None) in members and text.strip().lower() in ("none", "null", ""):
            return None
        for m in members:
            if m is type(None):
                continue
            try:
                return _from_text(text, m, int_default)
            except _Mismatch:
                continue
        raise _Mismatch
    s = text.strip()
    if tp is bool:
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise _Mismatch
    if tp is int:
        try:
            return int(s)
        except ValueError:
            raise _Mismatch from None
    if tp is float:
        try:
            return int(s)  # as TOML would read it; the parser makes it a float if needed
        except ValueError:
            pass
        try:
            return float(s)
        except ValueError:
            raise _Mismatch from None
    if tp in (str, Path, Any):
        return text
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        parts = [p for p in s.split(",")] if s else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_text(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise _Mismatch
        return tuple(_from_text(p, a) for p, a in zip(parts, args))
    raise _Mismatch


def parse_text(cls: type, backend: str, key: str, text: str) -> Any:
    """The value of ``--set backend.key=text`` as the field's type (checked again by
    :func:`parse_options` when the backend reads it)."""
    f, tp = _field(cls, backend, key)
    try:
        value = _from_text(text, tp, _int_default(f))
        return _check(value, tp, _int_default(f))
    except _Mismatch:
        raise ConfigError(f"Option '{backend}.{key}' must be {describe(tp)}; "
                          f"got {text!r}") from None


def split_assignment(text: str) -> tuple[str, str, str]:
    """``"backend.key=value"`` -> (backend, key, value)."""
    name, sep, value = text.partition("=")
    backend, dot, key = name.strip().partition(".")
    if not sep or not dot or not backend or not key:
        raise ConfigError(f"--set wants BACKEND.KEY=VALUE (e.g. candidates.min_thickness_mm=4); "
                          f"got {text!r}")
    return backend, key.strip(), value


#: the unit a key's suffix names, shown when a field has no ``metadata["help"]``
_UNITS = (("_mm2", "mm²"), ("_mm", "mm"), ("_hu", "HU"), ("_ml", "ml"),
          ("_frac", "fraction (0-1)"), ("_ratio", "ratio"), ("_mb", "MiB"))


def unit_of(key: str) -> str:
    for suffix, unit in _UNITS:
        if key.endswith(suffix):
            return unit
    return ""


def describe_options(cls: type) -> list[dict[str, Any]]:
    """One row per option: key, type, default, help (the field's ``metadata["help"]``, else
    the unit its name's suffix says: ``_mm``, ``_hu``, ``_ml``, ``_frac``...)."""
    hints = _hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if isinstance(default, Path):
            default = str(default)
        elif isinstance(default, tuple):
            default = list(default)
        rows.append({"key": f.name, "type": describe(hints[f.name]), "default": default,
                     "help": str(f.metadata.get("help", "")) or unit_of(f.name)})
    return rows
