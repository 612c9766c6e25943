"""A small validator for the subset of JSON Schema that agentforge's reply schemas use.

Supported keywords: ``type`` (a name or a list of names), ``enum``, ``const``, ``properties``,
``required``, ``additionalProperties`` (bool or a schema), ``items``, ``minItems``,
``maxItems``, ``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``anyOf``; the
annotations ``title``, ``description``, ``default`` are ignored. Any other keyword is a
:class:`SchemaError` (a bug in the schema, not in the reply), so the subset stays explicit.

Errors come back as short lines with a JSON path (``$.regions[0].template: 'rows' is not
one of 'row', 'matmul', 'single'``), written to be sent back to the model.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_KEYWORDS = {"type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems",
             "maxItems", "minimum", "maximum", "minLength", "maxLength", "anyOf", "title", "description", "default"}


class SchemaError(Exception):
    """The schema uses a keyword this validator does not implement."""


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def validate(value: Any, schema: dict, max_errors: int = 8) -> list[str]:
    """Problems of ``value`` against ``schema`` (empty list: valid), at most ``max_errors``."""
    errors: list[str] = []
    _check(value, schema, "$", errors)
    return errors[:max_errors]


def _check(v: Any, s: dict, path: str, errors: list[str]) -> None:
    unknown = set(s) - _KEYWORDS
    if unknown:
        raise SchemaError(f"unsupported JSON Schema keyword(s) {sorted(unknown)} at {path}")
    if "anyOf" in s:
        branches = []
        for sub in s["anyOf"]:
            e: list[str] = []
            _check(v, sub, path, e)
            if not e:
                break
            branches.append(e)
        else:
            # report a branch of the value's own type (the fewest errors), else the type mismatch
            typed = [b for b in branches if not (len(b) == 1 and b[0].startswith(f"{path}: expected "))]
            best = min(typed or branches, key=len) if branches else []
            errors.extend(best or [f"{path}: matches none of the allowed forms"])
            return
    if "type" in s:
        names = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_TYPES[n](v) for n in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {_kind(v)} {_short(v)}")
            return
    if "const" in s and v != s["const"]:
        errors.append(f"{path}: must be {_short(s['const'])}, got {_short(v)}")
    if "enum" in s and v not in s["enum"]:
        errors.append(f"{path}: {_short(v)} is not one of {', '.join(_short(x) for x in s['enum'])}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errors.append(f"{path}: {v} is less than the minimum {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            errors.append(f"{path}: {v} is more than the maximum {s['maximum']}")
    if isinstance(v, str):
        if "minLength" in s and len(v) < s["minLength"]:
            errors.append(f"{path}: string shorter than {s['minLength']} characters")
        if "maxLength" in s and len(v) > s["maxLength"]:
            errors.append(f"{path}: string longer than {s['maxLength']} characters")
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            errors.append(f"{path}: needs at least {s['minItems']} item(s), got {len(v)}")
        if "maxItems" in s and len(v) > s["maxItems"]:
            errors.append(f"{path}: allows at most {s['maxItems']} item(s), got {len(v)}")
        if "items" in s:
            for i, item in enumerate(v):
                _check(item, s["items"], f"{path}[{i}]", errors)
    if isinstance(v, dict):
        props = s.get("properties", {})
        missing = [name for name in s.get("required", []) if name not in v]
        if missing:
            errors.append(f"{path}: missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)}")
        extra = s.get("additionalProperties", True)
        for name, item in v.items():
            if name in props:
                _check(item, props[name], f"{path}.{name}", errors)
            elif extra is False:
                allowed = ", ".join(repr(p) for p in props) or "none"
                errors.append(f"{path}: unexpected key {name!r} (allowed: {allowed})")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{name}", errors)


def _kind(v: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](v):
            return name
    return type(v).__name__


__all__ = ["validate", "SchemaError"]
