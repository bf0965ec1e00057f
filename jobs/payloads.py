"""Typed job payloads: dataclasses of ids and JSON-safe scalars, validated field by field
at enqueue time so that a malformed payload fails in the caller, naming its field.

A domain app subclasses Payload next to its handler (see news/jobs.py)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from jobs.errors import PayloadError

class Payload:
    """Base for payload dataclasses: JSON-safe, validated field by field."""

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out

    @classmethod
    def from_json(cls, data: Any):
        if not isinstance(data, dict):
            raise PayloadError("payload", f"must be a JSON object, got {type(data).__name__}")
        hints = _hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PayloadError(unknown[0], "unknown field")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise PayloadError(f.name, "is required")
                continue
            values[f.name] = _coerce(f.name, data[f.name], hints[f.name])
        obj = cls(**values)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Per-type rules beyond the field types."""


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if hint is bool:
        if not isinstance(value, bool):
            raise PayloadError(name, f"must be true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PayloadError(name, f"must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PayloadError(name, f"must be an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise PayloadError(name, f"must be a string, got {value!r}")
        return value
    if hint is datetime:
        parsed = value if isinstance(value, datetime) else (
            parse_datetime(value) if isinstance(value, str) else None)
        if parsed is None:
            raise PayloadError(name, f"must be an ISO 8601 datetime, got {value!r}")
        if parsed.tzinfo is None:
            raise PayloadError(name, f"must include a time zone offset, got {value!r}")
        return parsed
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise PayloadError(name, f"must be a JSON object, got {value!r}")
        return value
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise PayloadError(name, f"must be a JSON array, got {value!r}")
        return value
    return value


def positive(name: str, value: int | None) -> None:
    """A rule for validate(): ids are positive integers."""
    if value is not None and value <= 0:
        raise PayloadError(name, f"must be a positive integer, got {value!r}")
