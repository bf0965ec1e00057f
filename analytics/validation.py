"""What an analytics event may hold: everything MariaDB would refuse when the batch writes
it is refused here first, naming the field, so that no accepted event can fail a chunk.

Two entry points share the same rules:
- validate_event(): an event from the Python API or the HTTP endpoint (Python values);
- entry_fields(): a stream entry as the batch reads it (bytes), whoever wrote it (an
  older version, a hand-written XADD): it is checked again before it reaches SQL.

What MariaDB refuses (measured on 10.11, `analytics_rawevent.metadata` has a JSON_VALID
check and user_id is varchar(64) utf8mb4): JSON nested 32 levels or more (error 4025),
NaN/Infinity (not JSON), escaped lone surrogates such as "\\ud800" (4025), strings that are
not UTF-8 (1366), user ids over 64 characters (1406). It accepts integers beyond 64 bits
and 1e400, but Python reads those back as huge ints or inf, which the admin and any export
then trip over: refused too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# The one place to add an event type: its name -> the News running-total field it adds to
# (None: daily counters only).
EVENT_TYPES: dict[str, str | None] = {"view": "view_count", "share": "share_count", "like": "like_count"}

EVENT_FIELDS = ("news_id", "event_type", "user_id", "metadata")
STREAM_FIELDS = (b"n", b"t", b"u", b"m")
MAX_NEWS_ID = 2**63 - 1
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
MAX_USER_ID_CHARS = 64
MAX_METADATA_BYTES = 4096
# Containers, the metadata object itself being level 1. MariaDB refuses depth 32 (31
# nested objects around a scalar); 8 is far more than any real "ref/campaign/ab" needs and
# leaves the margin for whatever wraps it.
MAX_METADATA_DEPTH = 8
# The batch's own check of what it reads (entry_fields) is only what MariaDB refuses (31
# nested containers pass its JSON_VALID, 32 do not; 30 keeps a level of margin), not
# ingest's policy: entries an older version accepted (deeper metadata, integers beyond 64
# bits) are still counted after an upgrade instead of quarantined.
MAX_STORED_METADATA_DEPTH = 30
# Each JSON value takes at least one byte, so a walk never needs to visit more values than
# this; it also bounds Python structures that share a list many times over.
MAX_METADATA_VALUES = MAX_METADATA_BYTES
MAX_PATH_CHARS = 80

_NEWS_ID_BYTES = re.compile(rb"[1-9][0-9]{0,18}")


class EventError(ValueError):
    """An event is invalid. `field` names it; `index` is its place in a batch (else None)."""

    def __init__(self, field: str, message: str, index: int | None = None):
        self.field = field
        self.index = index
        self.message = message
        where = field if index is None else f"events[{index}].{field}"
        super().__init__(f"{where}: {message}")


def validate_event(news_id: Any, event_type: Any, user_id: Any = None, metadata: Any = None,
                   *, index: int | None = None) -> dict[bytes, bytes | str | int]:
    """The stream entry's fields for a valid event: n (news id), t (type), u (user, if
    any), m (metadata as compact JSON, if any). Raises EventError naming the field."""
    if isinstance(news_id, bool) or not isinstance(news_id, int) or not 0 < news_id <= MAX_NEWS_ID:
        raise EventError("news_id", f"must be a positive integer of at most 64 bits, got {_short(news_id)}", index)
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise EventError("event_type", f"must be one of {', '.join(EVENT_TYPES)}, got {_short(event_type)}", index)
    fields: dict[bytes, bytes | str | int] = {b"n": news_id, b"t": event_type}
    if user_id is not None:
        if isinstance(user_id, bool) or not isinstance(user_id, (int, str)):
            raise EventError("user_id", f"must be a string or an integer, got {_short(user_id)}", index)
        if isinstance(user_id, int) and not MIN_INT <= user_id <= MAX_INT:
            # str() of a 5,000-digit int raises ValueError; a 64-bit range says it plainly.
            raise EventError("user_id", "an integer user id must fit in 64 bits", index)
        fields[b"u"] = check_user_id(str(user_id), index)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise EventError("metadata", f"must be a JSON object, got {type(metadata).__name__}", index)
        check_json_value(metadata, "metadata", index)
        try:
            # allow_nan=False: NaN is not JSON (check_json_value refused it already).
            text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:  # pragma: no cover - check_json_value refuses these first
            raise EventError("metadata", f"must be JSON-serialisable: {exc}", index) from None
        data = _utf8(text, "metadata", index)
        if len(data) > MAX_METADATA_BYTES:
            raise EventError("metadata", f"is {len(data)} bytes as JSON; at most {MAX_METADATA_BYTES}", index)
        if metadata:
            fields[b"m"] = data
    return fields


def check_user_id(user: str, index: int | None = None) -> bytes:
    if not user or len(user) > MAX_USER_ID_CHARS:
        raise EventError("user_id", f"must be 1 to {MAX_USER_ID_CHARS} characters, got {_short(user)}", index)
    if user != user.strip():
        # MariaDB compares strings ignoring trailing spaces: "ann " would be "ann".
        raise EventError("user_id", f"must not start or end with whitespace, got {user!r}", index)
    return _utf8(user, "user_id", index)


def check_json_value(value: Any, field: str, index: int | None = None, *, max_depth: int | None = None,
                     numbers: bool = True) -> None:
    """Walk a JSON value without recursion (a body nested 100,000 deep must not raise
    RecursionError): depth (MAX_METADATA_DEPTH unless max_depth), keys, strings and, with
    `numbers`, the 64-bit and finite ranges. The error names the path inside it."""
    max_depth = max_depth or MAX_METADATA_DEPTH
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    visited = 0
    while stack:
        item, path, depth = stack.pop()
        visited += 1
        if visited > MAX_METADATA_VALUES:
            raise EventError(field, f"has more than {MAX_METADATA_VALUES} values; at most {MAX_METADATA_BYTES} "
                                    "bytes as JSON", index)
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise EventError(field, f"nested deeper than {max_depth} levels{_at(path)}", index)
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise EventError(field, f"keys must be strings, got {_short(key)}{_at(path)}", index)
                    _check_text(key, field, index, path, "key")
                    stack.append((child, f"{path}.{key}" if len(path) < MAX_PATH_CHARS else path, depth + 1))
            else:
                for i, child in enumerate(item):
                    stack.append((child, f"{path}[{i}]" if len(path) < MAX_PATH_CHARS else path, depth + 1))
        elif isinstance(item, str):
            _check_text(item, field, index, path, "string")
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if numbers and not MIN_INT <= item <= MAX_INT:
                raise EventError(field, f"integer out of the 64-bit range{_at(path)}", index)
        elif isinstance(item, float):
            if numbers and not math.isfinite(item):
                raise EventError(field, f"number must be finite (no NaN or Infinity){_at(path)}", index)
        else:
            raise EventError(field, f"{type(item).__name__} is not a JSON value{_at(path)}", index)


def _check_text(text: str, field: str, index: int | None, path: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise EventError(field, f"{what} is not valid Unicode (a lone surrogate){_at(path)}", index) from None


def _at(path: str) -> str:
    return f" (at {path[:MAX_PATH_CHARS]})" if path else ""


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 80 else text[:77] + "..."


def _utf8(text: str, field: str, index: int | None) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise EventError(field, "must be valid UTF-8 text (it has a lone surrogate)", index) from None


def fields_of(event: Any, index: int | None) -> dict:
    """A batch element (a dict with news_id, event_type and optional user_id, metadata)."""
    if not isinstance(event, dict):
        raise EventError("event", f"must be a JSON object, got {type(event).__name__}", index)
    for name in event:
        if name not in EVENT_FIELDS:
            raise EventError(_short(name) if not isinstance(name, str) else name[:MAX_PATH_CHARS],
                             f"unknown field; known: {', '.join(EVENT_FIELDS)}", index)
    for name in ("news_id", "event_type"):
        if name not in event:
            raise EventError(name, "is required", index)
    return validate_event(event["news_id"], event["event_type"], event.get("user_id"), event.get("metadata"),
                          index=index)


# ---------------------------------------------------------------- stream entries


def refuse_json_constant(name: str):
    """json.loads(parse_constant=...): Python accepts NaN and Infinity, JSON does not."""
    raise ValueError(f"{name} is not valid JSON")


def entry_fields(fields: dict) -> tuple[int, str, bytes, bytes | None]:
    """(news_id, event_type, user_id, metadata) of a stream entry, checked for everything
    the database would refuse (see MAX_STORED_METADATA_DEPTH). Raises EventError naming
    the stream field."""
    if not fields:
        raise EventError("entry", "has no fields (deleted from the stream while pending)")
    for name in fields:
        if name not in STREAM_FIELDS:
            raise EventError("entry", f"unknown field {_short(name)}; known: n, t, u, m")
    raw_news, raw_type = fields.get(b"n"), fields.get(b"t")
    if raw_news is None or not _NEWS_ID_BYTES.fullmatch(raw_news) or int(raw_news) > MAX_NEWS_ID:
        raise EventError("n", f"news id must be a positive 64-bit integer, got {_short(raw_news)}")
    if raw_type is None or raw_type.decode("latin-1") not in EVENT_TYPES:
        raise EventError("t", f"event type must be one of {', '.join(EVENT_TYPES)}, got {_short(raw_type)}")
    user = fields.get(b"u") or b""
    if user:
        try:
            text = user.decode()
        except UnicodeDecodeError:
            raise EventError("u", "user id is not UTF-8") from None
        check_user_id(text)
    metadata = fields.get(b"m") or None
    if metadata is not None:
        if len(metadata) > MAX_METADATA_BYTES:
            raise EventError("m", f"metadata is {len(metadata)} bytes; at most {MAX_METADATA_BYTES}")
        try:
            # Decoded first: json.loads(bytes) would also take UTF-16, which MariaDB would not.
            value = json.loads(metadata.decode(), parse_constant=refuse_json_constant)
        except RecursionError:
            raise EventError("m", f"metadata nested deeper than {MAX_STORED_METADATA_DEPTH} levels") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError("m", f"metadata is not JSON text in UTF-8: {str(exc)[:120]}") from None
        if not isinstance(value, dict):
            raise EventError("m", f"metadata must be a JSON object, got {type(value).__name__}")
        check_json_value(value, "m", max_depth=MAX_STORED_METADATA_DEPTH, numbers=False)
    return int(raw_news), raw_type.decode(), user, metadata
