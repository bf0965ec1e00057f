"""Buffer entries the batch cannot count go here (QuarantinedEvent), never back into the
next batch: one bad entry must not stop analytics for good.

Which failures are the entry's: an error the database raises about the data (a check
constraint such as MariaDB's JSON_VALID, a value out of range, a string it cannot store),
or a Python error while turning the entry into rows. Failures of the environment (the
connection lost, a lock wait, a table missing, the disk full) are not: they stop the run,
and the entries stay pending for the next one, as before.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from django.db import DatabaseError, InterfaceError

# MariaDB/MySQL error codes that say nothing about the rows being written.
ENVIRONMENT_DB_ERRORS = {
    1021, 1037, 1038, 1040, 1044, 1045, 1046, 1049, 1053, 1054, 1114, 1142, 1146, 1205, 1213, 1290, 1317,
    1792, 1927, 2002, 2003, 2005, 2006, 2013, 2026, 2055, 3024, 4031,
}
MAX_STORED_CHARS = 64 * 1024
MAX_ERROR_CHARS = 2000


def is_entry_error(exc: BaseException) -> bool:
    """True when splitting the chunk can isolate the cause (see the module docstring)."""
    if isinstance(exc, InterfaceError):
        return False
    if isinstance(exc, DatabaseError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        return code not in ENVIRONMENT_DB_ERRORS
    return isinstance(exc, (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeError))


def describe_fields(fields: dict | None) -> str:
    """The entry as ASCII JSON, whatever bytes it holds (so the row can always be
    written), cut at MAX_STORED_CHARS."""
    if not fields:
        return "{}"
    readable = {_text(k): _text(v) for k, v in fields.items()}
    text = json.dumps(readable, ensure_ascii=True, sort_keys=True)
    if len(text) > MAX_STORED_CHARS:
        text = text[:MAX_STORED_CHARS] + f"... (cut; {len(text)} characters in all)"
    return text


def describe_error(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text.encode("ascii", "backslashreplace").decode()[:MAX_ERROR_CHARS]


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def quarantine_rows(entries, *, stage: str, consumer: str, errors: dict[str, str] | None = None) -> int:
    """Insert one QuarantinedEvent per entry (its `error`, or errors[entry_id]); an entry
    already quarantined is left as it is. Call inside the chunk's transaction."""
    from analytics.models import QuarantinedEvent

    rows = [QuarantinedEvent(stream_id=e.entry_id, fields=describe_fields(e.fields),
                             error=describe_error((errors or {}).get(e.entry_id) or e.error or "unknown"),
                             stage=stage, occurred_at=datetime.fromtimestamp(e.ms / 1000, tz=timezone.utc), consumer=consumer[:191])
            for e in entries]
    QuarantinedEvent.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
