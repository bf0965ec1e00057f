"""Job types: name, queue, timeout, retries and a typed payload validated at enqueue time.

Adding a type takes five steps: a name constant and a payload class here, a creation
function in jobs/scheduler.py, a handler in jobs/handlers.py, and a JobType entry in
REGISTRY below.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from jobs.errors import PayloadError, UnknownJobType

NEWS_SCHEDULED_PUBLISHER = "news:scheduled_publisher"
NEWS_EXPIRATION = "news:expiration"
WECHAT_DRAFT_CREATION = "wechat:draft_creation"
WECHAT_PUBLISHING = "wechat:publishing"
NEWS_ANALYTICS = "news:analytics"
SYSTEM_PERIODIC = "system:periodic"
SYSTEM_NOOP = "system:noop"

QUEUES = ("critical", "news", "wechat", "analytics", "default")
MAX_PAYLOAD_BYTES = 16 * 1024


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


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise PayloadError(name, f"must be a positive integer, got {value!r}")


@dataclass
class NewsPublishPayload(Payload):
    news_id: int
    scheduled_at: datetime
    retry_count: int = 0

    def validate(self):
        _positive("news_id", self.news_id)


@dataclass
class NewsExpirationPayload(Payload):
    news_id: int
    expires_at: datetime

    def validate(self):
        _positive("news_id", self.news_id)


@dataclass
class WechatDraftPayload(Payload):
    news_id: int
    retry_count: int = 0

    def validate(self):
        _positive("news_id", self.news_id)


@dataclass
class WechatPublishPayload(Payload):
    news_id: int
    draft_id: str
    retry_count: int = 0

    def validate(self):
        _positive("news_id", self.news_id)
        if not self.draft_id or len(self.draft_id) > 128:
            raise PayloadError("draft_id", "must be a non-empty string of at most 128 characters")


@dataclass
class NewsAnalyticsPayload(Payload):
    """Drain the analytics buffer into counters. Empty: the buffer holds the events."""

    reason: str = "periodic"


@dataclass
class PeriodicPayload(Payload):
    """A slot of a django-q2 Schedule row, fired by the dispatcher."""

    schedule_id: int
    name: str
    func: str
    slot: datetime
    args: str = ""
    kwargs: str = ""


@dataclass
class NoopPayload(Payload):
    """For demos, benchmarks and tests: sleeps, or fails its first `fail_times` attempts;
    with a marker, appends "job_id:attempt" to the Redis list nextevent:noop:<marker>."""

    sleep: float = 0.0
    fail_times: int = 0
    permanent: bool = False
    marker: str = ""

    def validate(self):
        if not 0 <= self.sleep <= 600:
            raise PayloadError("sleep", f"must be a number of seconds from 0 to 600, got {self.sleep!r}")
        if self.fail_times < 0:
            raise PayloadError("fail_times", "must be >= 0")
        if len(self.marker) > 64:
            raise PayloadError("marker", "must be at most 64 characters")


@dataclass(frozen=True)
class JobType:
    name: str
    queue: str
    timeout: int  # seconds; a timeout is a failed attempt
    max_retries: int
    payload: type[Payload]
    handler: str  # dotted path, resolved lazily so that types.py imports no app code
    description: str = ""


REGISTRY: dict[str, JobType] = {
    jt.name: jt
    for jt in [
        JobType(NEWS_SCHEDULED_PUBLISHER, "news", 60, 3, NewsPublishPayload,
                "jobs.handlers.handle_news_scheduled_publisher", "publish a news item at its time"),
        JobType(NEWS_EXPIRATION, "news", 60, 3, NewsExpirationPayload,
                "jobs.handlers.handle_news_expiration", "archive a news item when it expires"),
        JobType(WECHAT_DRAFT_CREATION, "wechat", 300, 3, WechatDraftPayload,
                "jobs.handlers.handle_wechat_draft_creation", "create the WeChat draft of a news item"),
        JobType(WECHAT_PUBLISHING, "wechat", 300, 3, WechatPublishPayload,
                "jobs.handlers.handle_wechat_publishing", "publish a WeChat draft and follow it"),
        JobType(NEWS_ANALYTICS, "analytics", 300, 3, NewsAnalyticsPayload,
                "jobs.handlers.handle_news_analytics", "count buffered analytics events"),
        JobType(SYSTEM_PERIODIC, "critical", 600, 3, PeriodicPayload,
                "jobs.handlers.handle_system_periodic", "one slot of a periodic schedule"),
        JobType(SYSTEM_NOOP, "default", 60, 3, NoopPayload,
                "jobs.handlers.handle_system_noop", "demo / benchmark job"),
    ]
}


def get_job_type(name: str) -> JobType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownJobType(f"job_type: unknown job type {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def validate_payload(job_type: JobType, payload: Any) -> dict[str, Any]:
    """Validate and normalise a payload; returns its JSON form. Raises PayloadError."""
    if isinstance(payload, Payload):
        payload = payload.to_json()
    obj = job_type.payload.from_json(payload)
    data = obj.to_json()
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload", f"is {size} bytes; at most {MAX_PAYLOAD_BYTES} (payloads carry ids)")
    return data
