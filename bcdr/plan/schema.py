"""Validate plain values (from :mod:`bcdr.plan.source`) against the model's dataclasses and
build the frozen objects. Every problem is collected with its position; nothing raises."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal

from bcdr.plan.source import Path_, Source
from bcdr.plan.types import NAME_RE, type_name

SECRET_KEYS = {
    "password": "password_env",
    "passphrase": "password_env",
    "account_key": "account_key_env",
    "key": "account_key_env",
    "connection_string": "connection_string_env",
    "sas": "sas_env",
    "sas_token": "sas_env",
    "secret": "an *_env field",
    "token": "an *_env field",
}
SECRET_VALUE = re.compile(
    r"AccountKey=|SharedAccessSignature=|[?&]sig=[A-Za-z0-9%+/=]{8,}|"
    r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==(?![A-Za-z0-9+/=])"
)
_MISSING = object()


def fields_of(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def build(src: Source, cls: type, raw: object, path: Path_ = ()) -> Any:
    """``cls`` built from ``raw``, or ``None`` when it has problems (recorded in ``src``)."""
    return _value(src, cls, raw, path, {})


def _value(src: Source, hint: Any, raw: object, path: Path_, rules: dict[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(src, hint, raw, path, rules)
    if origin is Literal:
        return _literal(src, args, raw, path)
    if origin is tuple:
        return _list(src, args[0], raw, path, rules)
    if origin is dict:
        return _mapping(src, args[1], raw, path, rules)
    if hasattr(hint, "parse"):
        try:
            return hint.parse(raw)
        except ValueError as exc:
            message, *rest = exc.args
            src.problem(path, str(message), rest[0] if rest else None)
            return None
    if dataclasses.is_dataclass(hint):
        return _object(src, typing.cast(type, hint), raw, path)
    return _scalar(src, hint, raw, path, rules)


def _union(src: Source, hint: Any, raw: object, path: Path_, rules: dict[str, Any]) -> Any:
    """``X | None``, or a literal or a mapping (credential: default | {...}), chosen by the
    value's shape."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if raw is None:
        return None
    if len(options) == 1:
        return _value(src, options[0], raw, path, rules)
    for option in options:
        if option is str and isinstance(raw, str):  # a name, or a mapping (copy_to)
            return _value(src, option, raw, path, rules)
        if typing.get_origin(option) is Literal and not isinstance(raw, dict):
            return _value(src, option, raw, path, rules)
        if dataclasses.is_dataclass(option) and isinstance(raw, dict):
            return _value(src, option, raw, path, rules)
    src.problem(path, f"expected {_describe(hint)}, got {type_name(raw)}")
    return None


def _literal(src: Source, args: tuple[Any, ...], raw: object, path: Path_) -> Any:
    if raw in args and type(raw) is type(args[0]):
        return raw
    allowed = ", ".join(str(a) for a in args)
    suggestion = did_you_mean(str(raw), [str(a) for a in args]) if isinstance(raw, str) else None
    if isinstance(raw, str) and raw.upper() in args:
        return raw.upper()
    src.problem(path, f"must be one of: {allowed}", suggestion)
    return None


def _scalar(src: Source, hint: Any, raw: object, path: Path_, rules: dict[str, Any]) -> Any:
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        src.problem(path, f"expected true or false, got {type_name(raw)}")
        return None
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            src.problem(path, f"expected a whole number, got {type_name(raw)}")
            return None
        lo, hi = rules.get("min"), rules.get("max")
        if (lo is not None and raw < lo) or (hi is not None and raw > hi):
            src.problem(path, f"must be between {lo} and {hi if hi is not None else 'any'}")
            return None
        return raw
    if hint is str:
        if not isinstance(raw, str):
            src.problem(
                path,
                f"expected a string, got {type_name(raw)}",
                "quote the value" if isinstance(raw, (bool, int, float)) else None,
            )
            return None
        if not raw.strip():
            src.problem(path, "must not be empty")
            return None
        if SECRET_VALUE.search(raw):
            src.problem(
                path,
                "this looks like a secret (an account key, SAS or connection "
                "string); a plan never holds secrets",
                "put it in an environment variable and name that variable "
                "(for example `credential: {sas_env: NAME}`)",
            )
            return None
        return raw
    raise TypeError(f"unsupported plan field type {hint!r}")  # a bug in model.py


def _list(src: Source, item: Any, raw: object, path: Path_, rules: dict[str, Any]) -> Any:
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        raw = [raw]  # `paths: /data` means one path
    if not isinstance(raw, list):
        src.problem(path, f"expected a list, got {type_name(raw)}")
        return None
    if len(raw) < rules.get("min_items", 0):
        src.problem(path, f"needs at least {rules['min_items']} item(s)")
        return None
    out = [_value(src, item, v, (*path, i), {}) for i, v in enumerate(raw)]
    return None if any(v is None for v in out) else tuple(out)


def _mapping(src: Source, item: Any, raw: object, path: Path_, rules: dict[str, Any]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        src.problem(path, f"expected a mapping of names to entries, got {type_name(raw)}")
        return None
    if len(raw) < rules.get("min_items", 0):
        src.problem(path, f"needs at least {rules['min_items']} entry")
        return None
    out: dict[str, Any] = {}
    ok = True
    for name, value in raw.items():
        if not NAME_RE.fullmatch(name):
            src.problem(
                (*path, name),
                f"{name!r} is not a valid name",
                "use lowercase letters, digits, '-' and '_' (up to 63)",
                key=True,
            )
            ok = False
            continue
        built = _value(src, item, value, (*path, name), {})
        ok = ok and built is not None
        out[name] = built
    return out if ok else None


def _object(src: Source, cls: type, raw: object, path: Path_) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        src.problem(path, f"expected a mapping, got {type_name(raw)}")
        return None
    fields = fields_of(cls)
    known = {f.name for f, _ in fields}
    kwargs: dict[str, Any] = {}
    ok = True
    for key in raw:
        if key not in known:
            ok = False
            if key.lower() in SECRET_KEYS:
                src.problem(
                    (*path, key),
                    "a plan never holds secrets",
                    f"put it in an environment variable and use "
                    f"{SECRET_KEYS[key.lower()]} to name it",
                    key=True,
                )
            else:
                src.problem(
                    (*path, key),
                    "unknown field",
                    did_you_mean(key, known) or f"known fields: {', '.join(sorted(known))}",
                    key=True,
                )
    for f, hint in fields:
        value = raw.get(f.name, _MISSING)
        if value is _MISSING or (value is None and not is_required(f)):
            if is_required(f):
                src.problem(
                    path, f"missing required field {f.name!r}", str(f.metadata["doc"]), key=True
                )
                ok = False
            continue
        built = _value(src, hint, value, (*path, f.name), dict(f.metadata))
        if built is None:
            ok = False
        else:
            kwargs[f.name] = built
    return cls(**kwargs) if ok else None


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return f"names to {_describe(args[1])}"
    if hasattr(hint, "DOC"):
        return str(hint.DOC)
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({typing.cast(type, hint).__name__})"
    return {str: "a string", int: "a whole number", bool: "true or false"}.get(hint, str(hint))
