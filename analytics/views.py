"""POST /api/analytics/events: one event, or a batch of up to 1,000, into the buffer.

Called by the site's pages and apps, so no CSRF token and no session: the view only
appends validated events to the buffer; counting happens in the batch job."""

from __future__ import annotations

import json
import logging

import redis
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from analytics.ingest import EventError, NotReplicated, record_events

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 1000


def _error(status: int, message: str, *, field: str | None = None, index: int | None = None) -> JsonResponse:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    if index is not None:
        body["index"] = index
    return JsonResponse(body, status=status)


@csrf_exempt
@require_POST
def events(request):
    """Body: an event object, {"events": [...]} or a JSON array. 202 {"accepted": n}, or 400
    naming the bad field (and index), 413 over ANALYTICS_HTTP_MAX_BYTES, 503 if Redis is down."""
    limit = settings.ANALYTICS_HTTP_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _error(413, f"body: at most {limit} bytes, got {declared}", field="body")
    body = request.read(limit + 1)
    if len(body) > limit:
        return _error(413, f"body: at most {limit} bytes", field="body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body: not valid JSON: {exc}", field="body")
    single = isinstance(data, dict) and "events" not in data
    batch = [data] if single else (data["events"] if isinstance(data, dict) else data)
    if not isinstance(batch, list):
        return _error(400, "events: must be a JSON array of event objects", field="events")
    if isinstance(data, dict) and not single and len(data) > 1:
        extra = sorted(k for k in data if k != "events")[0]
        return _error(400, f"{extra}: unknown field next to events", field=extra)
    if not batch:
        return _error(400, "events: must hold at least one event", field="events")
    if len(batch) > MAX_EVENTS_PER_REQUEST:
        return _error(400, f"events: at most {MAX_EVENTS_PER_REQUEST} per request, got {len(batch)}",
                      field="events")
    try:
        accepted = record_events(batch)
    except EventError as exc:
        if single:
            return _error(400, f"{exc.field}: {exc.message}", field=exc.field)
        return _error(400, str(exc), field=exc.field, index=exc.index)
    except NotReplicated as exc:
        logger.warning("analytics: %s", exc)
        return _error(503, f"{exc}; retry")
    except redis.RedisError:
        logger.exception("analytics: buffer unavailable; %d event(s) refused", len(batch))
        return _error(503, "buffer unavailable, try again later")
    return JsonResponse({"accepted": accepted}, status=202)
