"""The alert webhook: the one outside service Operations talks to (Slack-style incoming
webhooks, PagerDuty/Alertmanager relays, a chat bot...). POSTs one JSON object per alert.

The URL usually carries a secret (a token in the path or query), so it is never logged:
log lines name only its scheme and host (redact_url), and request exceptions, whose text
embeds the URL, are logged by type only."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import requests

logger = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}/…"


def post_alert(url: str, payload: dict, *, timeout: float) -> bool:
    """One attempt, bounded by `timeout` (connect and read). True if the receiver answered
    2xx. Never raises: a broken webhook must not break the health check that calls it."""
    try:
        response = requests.post(url, json=payload, timeout=(timeout, timeout), allow_redirects=False,
                                 headers={"User-Agent": "nextevent-alerts/1"})
    except requests.RequestException as exc:
        logger.error("alert webhook %s failed: %s", redact_url(url), type(exc).__name__)
        return False
    except Exception as exc:  # e.g. a malformed URL; the text may hold the URL
        logger.error("alert webhook %s failed: %s", redact_url(url), type(exc).__name__)
        return False
    if not 200 <= response.status_code < 300:
        logger.error("alert webhook %s answered HTTP %s", redact_url(url), response.status_code)
        return False
    return True
