"""Server-rendered SVG charts for the jobs dashboard: no JavaScript, no CDN, nothing to
ship but markup. Every text that ends up in the SVG is escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence

from django.utils.html import escape
from django.utils.translation import gettext
from django.utils.safestring import SafeString, mark_safe

from jobs.monitoring import Bucket

COMPLETED_COLOR = "#3a8f5c"
FAILED_COLOR = "#c8423b"


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 x 10^k that is >= value (an axis top that reads well)."""
    if value <= 1:
        return 1
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return int(step * exp)
    return int(10 * exp)


def _n(value: float) -> str:
    return f"{value:.1f}"


def stacked_bars(buckets: Sequence[Bucket], *, title: str, width: int = 720, height: int = 220,
                 label_every: int = 1) -> SafeString:
    """Completed (bottom) and failed (top) jobs per bucket; hovering a bar shows its numbers."""
    left, right, top_pad, bottom = 44, 8, 26, 30
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = nice_ceiling(max((b.processed for b in buckets), default=0))
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.72, 1.0)
    total_completed = sum(b.completed for b in buckets)
    total_failed = sum(b.failed for b in buckets)
    completed, failed = gettext("completed"), gettext("failed")

    def numbers(label: str, done: int, fail: int) -> str:
        return gettext("%(label)s: %(completed)d completed, %(failed)d failed") % {
            "label": label, "completed": done, "failed": fail}
    parts = [
        f'<svg class="jobs-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
        f'data-completed="{total_completed}" data-failed="{total_failed}">',
        f"<title>{escape(numbers(title, total_completed, total_failed))}</title>",
        f'<text x="{left}" y="16" class="chart-title" font-size="13" font-weight="bold" fill="currentColor">'
        f"{escape(title)}</text>",
        f'<g transform="translate({width - right - 170},6)" font-size="11" fill="currentColor">'
        f'<rect width="10" height="10" fill="{COMPLETED_COLOR}"/><text x="14" y="9">{escape(completed)}</text>'
        f'<rect x="86" width="10" height="10" fill="{FAILED_COLOR}"/><text x="100" y="9">{escape(failed)}</text></g>',
    ]
    for fraction in (0, 0.5, 1):
        y = top_pad + plot_h * (1 - fraction)
        value = top * fraction
        label = f"{value:g}" if value != int(value) else str(int(value))
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{_n(y)}" y2="{_n(y)}" stroke="#8888" '
                     f'stroke-width="{1 if fraction == 0 else 0.5}"/>')
        parts.append(f'<text x="{left - 6}" y="{_n(y + 4)}" text-anchor="end" font-size="11" '
                     f'fill="currentColor">{label}</text>')
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        h_done = plot_h * b.completed / top
        h_fail = plot_h * b.failed / top
        base = top_pad + plot_h
        parts.append(f'<g class="bar" data-label="{escape(b.label)}" data-completed="{b.completed}" '
                     f'data-failed="{b.failed}"><title>{escape(numbers(b.label, b.completed, b.failed))}</title>')
        # A full-height transparent rect makes empty hours hoverable too.
        parts.append(f'<rect x="{_n(x)}" y="{top_pad}" width="{_n(bar_w)}" height="{plot_h}" fill="transparent"/>')
        if b.completed:
            parts.append(f'<rect class="completed" x="{_n(x)}" y="{_n(base - h_done)}" width="{_n(bar_w)}" '
                         f'height="{_n(h_done)}" fill="{COMPLETED_COLOR}"/>')
        if b.failed:
            parts.append(f'<rect class="failed" x="{_n(x)}" y="{_n(base - h_done - h_fail)}" '
                         f'width="{_n(bar_w)}" height="{_n(h_fail)}" fill="{FAILED_COLOR}"/>')
        parts.append("</g>")
        if i % label_every == 0 or i == len(buckets) - 1:
            parts.append(f'<text x="{_n(x + bar_w / 2)}" y="{height - 10}" text-anchor="middle" font-size="11" '
                         f'fill="currentColor">{escape(b.label)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))
