"""Per-client limits for the public analytics endpoint, counted in the buffer's Redis.

Fixed windows of ANALYTICS_RATE_WINDOW_SECONDS starting at a client's first request:
ANALYTICS_RATE_REQUESTS requests (any request, valid or not, is counted before its body is
parsed) and ANALYTICS_RATE_EVENTS events (counted by the append script, analytics/buffer.py,
only for events actually written). 0 turns a limit off.

The client is REMOTE_ADDR, or the configured ANALYTICS_CLIENT_IP_HEADER when the site sits
behind a proxy that sets it: a header a client could set itself is trusted only when the
operator says a proxy overwrites it.
"""

from __future__ import annotations

import ipaddress
import math

from django.conf import settings

from analytics.buffer import RateLimited, buffer_redis
from jobs import limits

KEY_PREFIX = "nextevent:analytics:rate"


def client_address(request) -> str:
    """The address limits are counted by. IPv6 clients are grouped by /64: one host
    usually holds a whole /64 and could otherwise rotate through it."""
    remote = request.META.get("REMOTE_ADDR", "")
    header = settings.ANALYTICS_CLIENT_IP_HEADER
    # X-Forwarded-For style lists: the last address is the one our own proxy appended;
    # addresses before it were written by the client and prove nothing. Anything that is
    # not an address falls back to REMOTE_ADDR (never a key the client can vary at will).
    forwarded = request.META.get(header, "").rsplit(",", 1)[-1].strip() if header else ""
    address = _parse_ip(forwarded) or _parse_ip(remote)
    if address is None:
        return "unknown"
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]")) if text else None
    except ValueError:
        return None


def events_key(client: str) -> str:
    return f"{KEY_PREFIX}:events:{client}"


def check_request(client: str) -> None:
    """Count one request for the client; RateLimited once it is over the limit."""
    limit = settings.ANALYTICS_RATE_REQUESTS
    if not limit:
        return
    window = settings.ANALYTICS_RATE_WINDOW_SECONDS
    # The project's one home for counters (jobs/limits.py), on the buffer's own Redis.
    count, ttl_ms = limits.fixed_window_hit(buffer_redis(), f"{KEY_PREFIX}:requests:{client}", window)
    if count > limit:
        raise RateLimited(f"at most {limit} requests per {window:g} s from one client",
                          math.ceil(ttl_ms / 1000) if ttl_ms > 0 else math.ceil(window))
