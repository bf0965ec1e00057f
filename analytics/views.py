"""POST /api/analytics/events: one event, or a batch of up to 1,000, into the buffer.

Called by the site's pages and apps, so no CSRF token and no session: the view only
appends validated events to the buffer; counting happens in the batch job. Only
`application/json` bodies are taken: a cross-site page can send text/plain or a form
without a CORS preflight, but not JSON.

Order of the checks, cheapest first: method, content type, size, the client's request
budget, JSON, every event, the news ids, then one all-or-nothing write that also checks the
client's events budget and the buffer's length."""

from __future__ import annotations

import json
import logging
import time

import redis
from django.conf import settings
from django.db import DatabaseError
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from analytics.buffer import BufferRefused, NotReplicated
from analytics.ingest import EventError, record_client_events
from analytics.ratelimit import check_request, client_address
from analytics.validation import refuse_json_constant

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 1000
# A flood must not become a log flood: each kind of refusal is logged at most once per this
# many seconds per process, with the number left out since.
LOG_EVERY_SECONDS = 10
_last_logged: dict[str, tuple[float, int]] = {}


def _log_throttled(kind: str, message: str, *args, exc_info: bool = False) -> None:
    now = time.monotonic()
    last, skipped = _last_logged.get(kind, (0.0, 0))
    if now - last < LOG_EVERY_SECONDS:
        _last_logged[kind] = (last, skipped + 1)
        return
    _last_logged[kind] = (now, 0)
    suffix = f" ({skipped} more like it in the last {now - last:.0f} s not logged)" if skipped else ""
    logger.warning(message + suffix, *args, exc_info=exc_info)


def _error(status: int, message: str, *, field: str | None = None, index: int | None = None,
           retry_after: int | None = None) -> JsonResponse:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    if index is not None:
        body["index"] = index
    response = JsonResponse(body, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


@csrf_exempt
@require_POST
def events(request):
    """Body: an event object, {"events": [...]} or a JSON array. 202 {"accepted": n,
    "dropped_unknown_news": k}, or 400 naming the bad field (and index), 413 over
    ANALYTICS_HTTP_MAX_BYTES, 415 if not application/json, 429 over the client's rate
    limit and 503 when the buffer is full or down (both with Retry-After)."""
    if request.content_type != "application/json":
        return _error(415, f"body: Content-Type must be application/json, got {request.content_type[:80]!r}",
                      field="body")
    charset = (request.content_params.get("charset") or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        return _error(415, f"body: JSON must be UTF-8, got charset {charset[:40]!r}", field="body")
    limit = settings.ANALYTICS_HTTP_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _error(413, f"body: at most {limit} bytes, got {declared}", field="body")
    client = client_address(request)
    try:
        check_request(client)
    except BufferRefused as exc:
        return _error(exc.status, str(exc), retry_after=exc.retry_after)
    except redis.RedisError:
        _log_throttled("redis", "analytics: buffer unavailable (rate limit check)", exc_info=True)
        return _error(503, "buffer unavailable, try again later", retry_after=settings.ANALYTICS_BUFFER_RETRY_AFTER)
    body = request.read(limit + 1)
    if len(body) > limit:
        return _error(413, f"body: at most {limit} bytes", field="body")
    data, problem = _parse(body)
    if problem:
        return _error(400, problem, field="body")
    single = isinstance(data, dict) and "events" not in data
    batch = [data] if single else (data["events"] if isinstance(data, dict) else data)
    if not isinstance(batch, list):
        return _error(400, "events: must be a JSON array of event objects", field="events")
    if isinstance(data, dict) and not single and len(data) > 1:
        extra = sorted(k for k in data if k != "events")[0]
        return _error(400, f"{extra[:80]}: unknown field next to events", field=extra[:80])
    if not batch:
        return _error(400, "events: must hold at least one event", field="events")
    try:
        accepted, dropped = record_client_events(batch, client=client, limit=MAX_EVENTS_PER_REQUEST)
    except EventError as exc:
        if exc.field == "events" and exc.index is None:
            return _error(400, f"events: at most {MAX_EVENTS_PER_REQUEST} per request, got {len(batch)}",
                          field="events")
        if single:
            return _error(400, f"{exc.field}: {exc.message}", field=exc.field)
        return _error(400, str(exc), field=exc.field, index=exc.index)
    except BufferRefused as exc:
        _log_throttled(type(exc).__name__, "analytics: %d event(s) from %s refused: %s", len(batch), client, exc)
        return _error(exc.status, str(exc), retry_after=exc.retry_after)
    except NotReplicated as exc:
        _log_throttled("not_replicated", "analytics: %s", exc)
        return _error(503, f"{exc}; retry", retry_after=settings.ANALYTICS_BUFFER_RETRY_AFTER)
    except (redis.RedisError, DatabaseError):
        _log_throttled("unavailable", "analytics: buffer or news lookup unavailable; %d event(s) refused", len(batch),
                       exc_info=True)
        return _error(503, "buffer unavailable, try again later", retry_after=settings.ANALYTICS_BUFFER_RETRY_AFTER)
    return JsonResponse({"accepted": accepted, "dropped_unknown_news": dropped}, status=202)


def _parse(body: bytes):
    """(data, None) or (None, the 400 message)."""
    try:
        # Strictly UTF-8: json.loads(bytes) would also guess UTF-16 or UTF-32.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"body: not UTF-8: {exc}"
    try:
        return json.loads(text, parse_constant=refuse_json_constant), None
    except RecursionError:
        # The C parser gives up past Python's recursion limit (about 1,000 levels).
        return None, "body: nested too deeply"
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers over 4,300 digits
        return None, f"body: not valid JSON: {str(exc)[:200]}"
