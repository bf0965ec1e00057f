"""Exceptions a handler raises to tell the engine what to do with a failed attempt.

Anything else a handler raises is transient: retried with backoff until max retries."""

from __future__ import annotations

from datetime import datetime


class JobError(Exception):
    pass


class PermanentError(JobError):
    """Retrying cannot help (bad payload, missing row, content WeChat refuses): dead at once."""


class PayloadError(PermanentError, ValueError):
    """A payload does not match its job type's schema; names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")


class UnknownJobType(PermanentError, ValueError):
    pass


class WorkerLost(JobError):
    """Recorded (never raised) for an attempt whose worker died: its lease ran out."""


class Snooze(JobError):
    """Wait until `until` and run again without spending a retry (e.g. a daily quota)."""

    def __init__(self, until: datetime, reason: str):
        self.until = until
        self.reason = reason
        super().__init__(f"snoozed until {until.isoformat()}: {reason}")
