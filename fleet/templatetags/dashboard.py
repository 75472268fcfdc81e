"""Small template helpers for the dashboard: times shown relative with the absolute time on hover,
sizes, percentages, query strings that keep the current filters."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.timesince import timesince, timeuntil

register = template.Library()


@register.filter
def when(value: datetime | None, empty: str = "never"):
    """<time> with "3 minutes ago" (or "in 2 days") as text and the absolute UTC time as title."""
    if not value:
        return format_html('<span class="muted">{}</span>', empty)
    now = timezone.now()
    if value <= now:
        delta = timesince(value, now, depth=1)
        text = "just now" if delta.startswith("0\xa0minutes") else f"{delta} ago"
    else:
        text = f"in {timeuntil(value, now, depth=1)}"
    absolute = timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")
    return format_html('<time datetime="{}" title="{}">{}</time>', value.isoformat(), absolute, text)


@register.filter
def size(value):
    """Bytes as 1.2 MB; a dash when unknown."""
    if value in (None, ""):
        return "—"
    return filesizeformat(value)


@register.filter
def pct(value, digits: int = 0):
    if value in (None, ""):
        return "—"
    try:
        return f"{float(value):.{int(digits)}f} %"
    except (TypeError, ValueError):
        return "—"


@register.filter
def ms(value):
    if value in (None, ""):
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


@register.filter
def num(value, digits: int = 4):
    if value in (None, ""):
        return "—"
    try:
        return f"{float(value):.{int(digits)}f}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def get(mapping, key):
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.simple_tag(takes_context=True)
def query(context, **changes) -> str:
    """The current query string with some parameters replaced (None removes one); page resets
    unless given, so a new filter or sort starts at page 1."""
    request = context["request"]
    params = request.GET.copy()
    if "page" not in changes:
        params.pop("page", None)
    for key, value in changes.items():
        params.pop(key, None)
        if value not in (None, ""):
            params[key] = value
    return "?" + params.urlencode() if params else "?"


@register.simple_tag
def qs(**params) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


@register.simple_tag(takes_context=True)
def sort_link(context, key: str, label: str):
    """A column header that sorts by ``key``, toggling the direction when already sorted by it."""
    current = context.get("sort") or ""
    if current == key:
        target, arrow = f"-{key}", " ▲"
    elif current == f"-{key}":
        target, arrow = key, " ▼"
    else:
        target, arrow = key, ""
    href = query(context, sort=target)
    return format_html(
        '<a class="sort" href="{}" hx-get="{}" hx-target="#device-table" hx-swap="outerHTML" '
        'hx-push-url="true">{}{}</a>', href, href, label, arrow)
