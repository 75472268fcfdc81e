"""Shared helpers of the dashboard views: page-or-fragment rendering and role checks."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_POST

from fleet.audit import client_ip
from fleet.roles import has_role

__all__ = ["client_ip", "is_htmx", "page_or_fragment", "require_role", "forbidden"]


def is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true" and not request.headers.get("HX-Boosted")


def page_or_fragment(request, page: str, fragment: str, context: dict, status: int = 200):
    """One view, two answers: the whole page, or (for htmx) only the fragment it swaps in."""
    return render(request, fragment if is_htmx(request) else page, context, status=status)


def forbidden(request, role: str):
    return render(request, "fleet/forbidden.html", {"needed": role}, status=403)


def require_role(role: str, *, post_only: bool = True):
    """Login required, then the role checked on the server (templates hide the buttons too, but
    that is a courtesy, not the check). Actions are POST only, so CSRF always applies."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not has_role(request.user, role):
                return forbidden(request, role)
            return view(request, *args, **kwargs)

        wrapped = login_required(wrapper)
        return require_POST(wrapped) if post_only else wrapped

    return decorator

